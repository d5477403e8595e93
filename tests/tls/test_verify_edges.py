"""Certificate verification at its edges, over real (in-memory) handshakes.

Expired and not-yet-valid certificates, a certificate used for the wrong purpose
(extended key usage), a chain whose intermediate is missing or is not a CA, and what
``verifyPeer`` alone accepts that ``verifyChain`` does not.  Each case is checked in
both directions where it matters (our client judging a server, our server judging a
client) and for the readable reason the log would carry.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tlstunnel.tls import build_service_tls
from tlstunnel.tls.errors import describe_tls_error

from .conftest import ServiceFactory
from .helpers import handshake

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def issue(
    name: str,
    issuer: Issued | None,
    *,
    ca: bool = False,
    ca_flag: bool | None = None,
    not_before: datetime.datetime = NOW - DAY,
    not_after: datetime.datetime = NOW + 30 * DAY,
    usages: list[x509.ObjectIdentifier] | None = None,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.BasicConstraints(ca=ca if ca_flag is None else ca_flag, path_length=None),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca or ca_flag:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        )
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                usages or [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def pem(*certs: Issued) -> bytes:
    return b"".join(c.cert.public_bytes(serialization.Encoding.PEM) for c in certs)


def write_identity(path: Path, leaf: Issued, *chain: Issued) -> Path:
    key = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(key + pem(leaf, *chain))
    return path


@pytest.fixture(scope="module")
def root() -> Issued:
    return issue("Edge Root", None, ca=True)


@pytest.fixture(scope="module")
def intermediate(root: Issued) -> Issued:
    return issue("Edge Intermediate", root, ca=True)


@pytest.fixture
def root_file(tmp_path: Path, root: Issued) -> Path:
    path = tmp_path / "root.pem"
    path.write_bytes(pem(root))
    return path


def client_judging(service: ServiceFactory, ca_file: Path, **extra: object) -> object:
    return build_service_tls(service(client=True, verify_chain=True, ca_file=ca_file, **extra))


def server_with(service: ServiceFactory, identity: Path) -> object:
    return build_service_tls(service(cert=identity))


@pytest.mark.parametrize(
    ("window", "words"),
    [
        pytest.param((NOW - 30 * DAY, NOW - DAY), "expired", id="expired"),
        pytest.param((NOW + DAY, NOW + 30 * DAY), "not yet valid", id="not-yet-valid"),
    ],
)
def test_a_server_certificate_outside_its_validity_is_refused(  # noqa: PLR0917 -- fixtures
    service: ServiceFactory,
    tmp_path: Path,
    root: Issued,
    root_file: Path,
    window: tuple[datetime.datetime, datetime.datetime],
    words: str,
) -> None:
    leaf = issue("server.test", root, not_before=window[0], not_after=window[1])
    server = server_with(service, write_identity(tmp_path / "leaf.pem", leaf))
    outcome = handshake(server, client_judging(service, root_file))  # type: ignore[arg-type]
    assert outcome.client_error is not None
    assert words in describe_tls_error(outcome.client_error, server_side=False)


def test_an_expired_client_certificate_is_refused_by_our_server(
    service: ServiceFactory, tmp_path: Path, root: Issued, root_file: Path
) -> None:
    server_leaf = issue("server.test", root)
    client_leaf = issue("client.test", root, not_before=NOW - 9 * DAY, not_after=NOW - DAY)
    server = build_service_tls(
        service(
            cert=write_identity(tmp_path / "server.pem", server_leaf),
            verify_chain=True,
            require_cert=True,
            ca_file=root_file,
        )
    )
    client = build_service_tls(
        service(client=True, cert=write_identity(tmp_path / "client.pem", client_leaf))
    )
    outcome = handshake(server, client)
    assert outcome.server_error is not None
    assert "expired" in describe_tls_error(outcome.server_error, server_side=True)


def test_a_client_only_certificate_cannot_serve(
    service: ServiceFactory, tmp_path: Path, root: Issued, root_file: Path
) -> None:
    """Extended key usage clientAuth only: OpenSSL's purpose check refuses it as a server."""
    leaf = issue("server.test", root, usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    server = server_with(service, write_identity(tmp_path / "leaf.pem", leaf))
    outcome = handshake(server, client_judging(service, root_file))  # type: ignore[arg-type]
    assert outcome.client_error is not None
    assert "purpose" in describe_tls_error(outcome.client_error, server_side=False)


def test_a_server_only_certificate_cannot_authenticate_a_client(
    service: ServiceFactory, tmp_path: Path, root: Issued, root_file: Path
) -> None:
    server_leaf = issue("server.test", root)
    client_leaf = issue("client.test", root, usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    server = build_service_tls(
        service(
            cert=write_identity(tmp_path / "server.pem", server_leaf),
            verify_chain=True,
            require_cert=True,
            ca_file=root_file,
        )
    )
    client = build_service_tls(
        service(client=True, cert=write_identity(tmp_path / "client.pem", client_leaf))
    )
    outcome = handshake(server, client)
    assert outcome.server_error is not None
    assert "purpose" in describe_tls_error(outcome.server_error, server_side=True)


def test_a_missing_intermediate_fails_unless_the_trust_store_has_it(
    service: ServiceFactory, tmp_path: Path, root: Issued, intermediate: Issued, root_file: Path
) -> None:
    leaf = issue("server.test", intermediate)
    lonely = server_with(service, write_identity(tmp_path / "lonely.pem", leaf))  # no chain
    outcome = handshake(lonely, client_judging(service, root_file))  # type: ignore[arg-type]
    assert outcome.client_error is not None
    assert "issuer" in describe_tls_error(outcome.client_error, server_side=False)
    both = tmp_path / "root-and-intermediate.pem"
    both.write_bytes(pem(root, intermediate))
    assert handshake(lonely, client_judging(service, both)).ok  # type: ignore[arg-type]
    sent = server_with(service, write_identity(tmp_path / "chain.pem", leaf, intermediate))
    assert handshake(sent, client_judging(service, root_file)).ok  # type: ignore[arg-type]


def test_an_intermediate_that_is_not_a_ca_breaks_the_chain(
    service: ServiceFactory, tmp_path: Path, root: Issued, root_file: Path
) -> None:
    fake = issue("Not A CA", root, ca_flag=False)
    leaf = issue("server.test", fake)
    server = server_with(service, write_identity(tmp_path / "leaf.pem", leaf, fake))
    outcome = handshake(server, client_judging(service, root_file))  # type: ignore[arg-type]
    assert outcome.client_error is not None
    assert "CA" in describe_tls_error(outcome.client_error, server_side=False)


def test_only_the_pinned_verify_peer_accepts_a_leaf_of_an_unknown_issuer(
    service: ServiceFactory, tmp_path: Path, intermediate: Issued
) -> None:
    """The leaf's issuer is nowhere in the trust store; pinning the leaf itself is enough
    for verifyPeer, never for verifyChain."""
    leaf = issue("server.test", intermediate)
    server = server_with(service, write_identity(tmp_path / "leaf.pem", leaf))
    pin = tmp_path / "pin.pem"
    pin.write_bytes(pem(leaf))
    chain_only = client_judging(service, pin)
    assert handshake(server, chain_only).client_error is not None  # type: ignore[arg-type]
    pinned = build_service_tls(service(client=True, verify_peer=True, ca_file=pin))
    outcome = handshake(server, pinned)  # type: ignore[arg-type]
    assert outcome.ok
    assert pinned.check_peer(outcome.client) is None
