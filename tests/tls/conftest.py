"""Certificates for the TLS tests, made once per session with trustme and cryptography.

``pki`` is a directory of PEM/PKCS#12 files named for what they are; ``service`` builds
a ``ServiceConfig`` with test defaults, as the config package would hand it over.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from tlstunnel.config.model import Location, ServiceConfig

UTC = datetime.UTC


@dataclasses.dataclass(frozen=True)
class PKI:
    """Paths of every certificate file the tests use."""

    ca: Path  # trusted root (PEM certificate)
    other_ca: Path  # a root nobody trusts
    server: Path  # key + chain from ca: localhost, 127.0.0.1, ::1, server.example.com
    server_cert: Path  # chain only
    server_key: Path  # key only
    client: Path  # key + chain from ca: client.example.com, client@example.com
    other_server: Path  # key + chain from other_ca
    other_client: Path  # key + chain from other_ca
    intermediate_leaf: Path  # key + leaf + intermediate (issued by ca's child)
    intermediate_leaf_cert: Path  # the leaf certificate alone
    expired: Path  # key + chain from ca, expired in 2020
    self_signed: Path  # key + self-signed certificate (DNS pinned.example)
    self_signed_cert: Path
    other_self_signed: Path
    other_self_signed_cert: Path
    weak_rsa: Path  # key + self-signed certificate with a 1024-bit RSA key
    server_p12: Path  # server key + chain, PKCS#12 without password
    server_p12_unnamed: Path  # the same bytes, named .bin
    locked_p12: Path  # PKCS#12 with a password
    encrypted_key: Path  # server key encrypted with a pass phrase
    not_a_cert: Path  # some text


def _self_signed(directory: Path, name: str, key: Any, dns: str) -> tuple[Path, Path]:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)])
    now = datetime.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    both = directory / f"{name}.pem"
    both.write_bytes(key_pem + cert_pem)
    cert_only = directory / f"{name}-cert.pem"
    cert_only.write_bytes(cert_pem)
    return both, cert_only


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    other_ca = trustme.CA()

    def write(name: str, data: bytes) -> Path:
        path = d / name
        path.write_bytes(data)
        return path

    server = ca.issue_cert("localhost", "127.0.0.1", "::1", "server.example.com")
    client = ca.issue_cert("client.example.com", "client@example.com")
    child = ca.create_child_ca()
    via_child = child.issue_cert("chained.example.com")
    expired = ca.issue_cert(
        "localhost",
        not_before=datetime.datetime(2019, 1, 1, tzinfo=UTC),
        not_after=datetime.datetime(2020, 1, 1, tzinfo=UTC),
    )
    self_signed, self_signed_cert = _self_signed(
        d, "self-signed", ec.generate_private_key(ec.SECP256R1()), "pinned.example"
    )
    other_self_signed, other_self_signed_cert = _self_signed(
        d, "other-self-signed", ec.generate_private_key(ec.SECP256R1()), "pinned.example"
    )
    weak_rsa, _ = _self_signed(d, "weak-rsa", rsa.generate_private_key(65537, 1024), "weak.example")

    server_key = serialization.load_pem_private_key(server.private_key_pem.bytes(), None)
    chain = [x509.load_pem_x509_certificate(b.bytes()) for b in server.cert_chain_pems]
    assert isinstance(server_key, ec.EllipticCurvePrivateKey)
    p12 = pkcs12.serialize_key_and_certificates(
        b"server", server_key, chain[0], chain[1:] or None, serialization.NoEncryption()
    )
    locked = pkcs12.serialize_key_and_certificates(
        b"server",
        server_key,
        chain[0],
        None,
        serialization.BestAvailableEncryption(b"secret"),
    )
    encrypted_key = server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    return PKI(
        ca=write("ca.pem", ca.cert_pem.bytes()),
        other_ca=write("other-ca.pem", other_ca.cert_pem.bytes()),
        server=write("server.pem", server.private_key_and_cert_chain_pem.bytes()),
        server_cert=write("server-cert.pem", b"".join(b.bytes() for b in server.cert_chain_pems)),
        server_key=write("server-key.pem", server.private_key_pem.bytes()),
        client=write("client.pem", client.private_key_and_cert_chain_pem.bytes()),
        other_server=write(
            "other-server.pem",
            other_ca.issue_cert("localhost").private_key_and_cert_chain_pem.bytes(),
        ),
        other_client=write(
            "other-client.pem",
            other_ca.issue_cert("client.example.com").private_key_and_cert_chain_pem.bytes(),
        ),
        intermediate_leaf=write("chained.pem", via_child.private_key_and_cert_chain_pem.bytes()),
        intermediate_leaf_cert=write("chained-leaf.pem", via_child.cert_chain_pems[0].bytes()),
        expired=write("expired.pem", expired.private_key_and_cert_chain_pem.bytes()),
        self_signed=self_signed,
        self_signed_cert=self_signed_cert,
        other_self_signed=other_self_signed,
        other_self_signed_cert=other_self_signed_cert,
        weak_rsa=weak_rsa,
        server_p12=write("server.p12", p12),
        server_p12_unnamed=write("server-p12.bin", p12),
        locked_p12=write("locked.p12", locked),
        encrypted_key=write("encrypted-key.pem", encrypted_key),
        not_a_cert=write("notes.txt", b"this is not a certificate\n"),
    )


ServiceFactory = Callable[..., ServiceConfig]


@pytest.fixture
def service() -> ServiceFactory:
    """``service(client=True, cert=...)``: a ServiceConfig with the given fields."""

    def make(**fields: Any) -> ServiceConfig:
        for key in ("cert", "key", "ca_file", "ca_path"):
            if isinstance(fields.get(key), Path):
                fields[key] = str(fields[key])
        return ServiceConfig(name="test", location=Location("test.conf", 1), **fields)

    return make
