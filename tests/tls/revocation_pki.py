"""Certificates, CRLs and OCSP index files for the revocation tests.

A small real PKI made with cryptography: a root CA, an intermediate CA under it, leaf
certificates under the intermediate (good and revoked, server and client), an OCSP
signing certificate delegated by the intermediate, and CRLs built with
``CertificateRevocationListBuilder``.  Everything is written as PEM files so the tunnel
process, ``openssl ocsp`` and ``openssl s_server``/``s_client`` read the very same bytes.

Keys are P-256: cheap to make, so a test that needs a certificate with its own AIA URL
(the responder's port is only known at run time) simply issues one.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

UTC = datetime.UTC
DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate, its key, and the files they were written to."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path  # the certificate alone (PEM)
    bundle_path: Path  # key + certificate + the issuing chain up to (not including) the root

    @property
    def serial(self) -> int:
        return self.cert.serial_number


@dataclass
class CA:
    """A certificate authority that can issue certificates and CRLs."""

    issued: Issued
    directory: Path
    chain: list[x509.Certificate] = field(default_factory=list)  # its own issuers, no root

    @property
    def cert(self) -> x509.Certificate:
        return self.issued.cert

    @property
    def key(self) -> ec.EllipticCurvePrivateKey:
        return self.issued.key


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tlstunnel revocation tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
           chain: list[x509.Certificate]) -> Issued:  # fmt: skip
    cert_path = directory / f"{stem}.crt"
    cert_path.write_bytes(_pem(cert))
    bundle_path = directory / f"{stem}.pem"
    bundle_path.write_bytes(_key_pem(key) + _pem(cert) + b"".join(_pem(c) for c in chain))
    bundle_path.chmod(0o600)
    return Issued(cert, key, cert_path, bundle_path)


def make_root(directory: Path, common_name: str = "Revocation Test Root") -> CA:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + 365 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    stem = common_name.lower().replace(" ", "-")
    return CA(_write(directory, stem, cert, key, []), directory)


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def issue(
    ca: CA,
    common_name: str,
    *,
    stem: str | None = None,
    is_ca: bool = False,
    ocsp_url: str | None = None,
    ocsp_signing: bool = False,
    expired: bool = False,
) -> Issued:
    """Issue a certificate from ``ca``: a TLS leaf for ``common_name`` (usable as server
    and client; 127.0.0.1 and localhost are always in it), a CA, or an OCSP signer."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - (30 * DAY if expired else DAY))
        .not_valid_after(now - DAY if expired else now + 90 * DAY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if is_ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        ).add_extension(_ca_usage(), critical=True)
    else:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        ).add_extension(_leaf_usage(), critical=True)
        if ocsp_signing:
            usages = [ExtendedKeyUsageOID.OCSP_SIGNING]
        else:
            usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(common_name),
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if ocsp_url is not None:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
                    )
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca.key, hashes.SHA256())
    chain = [ca.cert, *ca.chain] if ca.chain or ca.cert.subject != ca.cert.issuer else []
    return _write(ca.directory, stem or common_name.split(".", maxsplit=1)[0], cert, key, chain)


def make_intermediate(root: CA, common_name: str = "Revocation Test Intermediate") -> CA:
    issued = issue(root, common_name, stem=common_name.lower().replace(" ", "-"), is_ca=True)
    return CA(issued, root.directory)


def crl(
    ca: CA,
    revoked: list[int],
    *,
    next_update: datetime.datetime | None = None,
    last_update: datetime.datetime | None = None,
) -> bytes:
    """A PEM CRL from ``ca`` listing the ``revoked`` serial numbers."""
    now = datetime.datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(last_update or now - DAY)
        .next_update(next_update or now + 7 * DAY)
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - DAY)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def rehash(directory: Path) -> None:
    """Name every certificate and CRL in ``directory`` by its hash (``HASH.0``/``HASH.r0``)."""
    subprocess.run(["openssl", "rehash", str(directory)], check=True, capture_output=True)


def index_line(cert: x509.Certificate, revoked: bool = False) -> str:
    """One line of an ``openssl ca``/``openssl ocsp`` index.txt for ``cert``."""
    expiry = cert.not_valid_after_utc.strftime("%y%m%d%H%M%SZ")
    when = ""
    status = "V"
    if revoked:
        status = "R"
        stamp = (datetime.datetime.now(UTC) - DAY).strftime("%y%m%d%H%M%SZ")
        when = f"{stamp},keyCompromise"
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    subject = f"/CN={common_name!s}"
    return f"{status}\t{expiry}\t{when}\t{cert.serial_number:X}\tunknown\t{subject}\n"


@dataclass(frozen=True)
class RevocationPKI:
    """The files every revocation test starts from."""

    directory: Path
    root: CA
    intermediate: CA
    server: Issued  # good, under the intermediate; its bundle carries the intermediate
    revoked_server: Issued
    client: Issued
    revoked_client: Issued
    responder: Issued  # OCSP signer delegated by the intermediate
    ca_file: Path  # the root alone (the intermediate comes from the peer)
    ca_bundle: Path  # root + intermediate (what Python 3.11 needs to find the issuer)
    crls: Path  # root CRL (empty) + intermediate CRL (revoked_server, revoked_client)
    crls_revoking_intermediate: Path
    crls_expired: Path  # the root's CRL is past its nextUpdate
    crl_dir: Path  # the CRLs of ``crls`` in a hashed directory (HASH.r0)

    def issue(self, name: str, *, ocsp_url: str | None = None) -> Issued:
        return issue(self.intermediate, name, ocsp_url=ocsp_url)


def make_revocation_pki(directory: Path) -> RevocationPKI:
    root = make_root(directory)
    intermediate = make_intermediate(root)
    server = issue(intermediate, "server.example", stem="server")
    revoked_server = issue(intermediate, "revoked-server.example", stem="revoked-server")
    client = issue(intermediate, "client.example", stem="client")
    revoked_client = issue(intermediate, "revoked-client.example", stem="revoked-client")
    responder = issue(intermediate, "OCSP Responder", stem="responder", ocsp_signing=True)
    revoked = [revoked_server.serial, revoked_client.serial]
    root_crl = crl(root, [])
    intermediate_crl = crl(intermediate, revoked)
    now = datetime.datetime.now(UTC)
    expired_root_crl = crl(root, [], last_update=now - 3 * DAY, next_update=now - DAY)
    crl_dir = directory / "crls"
    crl_dir.mkdir()
    (crl_dir / "root.crl.pem").write_bytes(root_crl)
    (crl_dir / "intermediate.crl.pem").write_bytes(intermediate_crl)
    rehash(crl_dir)

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    return RevocationPKI(
        directory=directory,
        root=root,
        intermediate=intermediate,
        server=server,
        revoked_server=revoked_server,
        client=client,
        revoked_client=revoked_client,
        responder=responder,
        ca_file=root.issued.cert_path,
        ca_bundle=write("ca-bundle.pem", _pem(root.cert) + _pem(intermediate.cert)),
        crls=write("crls.pem", root_crl + intermediate_crl),
        crls_revoking_intermediate=write(
            "crls-revoking-intermediate.pem",
            crl(root, [intermediate.issued.serial]) + intermediate_crl,
        ),
        crls_expired=write("crls-expired.pem", expired_root_crl + intermediate_crl),
        crl_dir=crl_dir,
    )
