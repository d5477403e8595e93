"""Throw-away TLS credentials for the benchmark: one self-signed ECDSA P-256 certificate.

Both programs under test serve the same certificate and key, so the signature cost of a
handshake is identical for them.  The load generators do not verify the chain (that is
client-side work and would only slow the generator down), but TLS 1.3 still makes them
check the CertificateVerify signature, so every handshake is a real one.

The certificate is made with ``cryptography`` when it is installed and with the ``openssl``
command line otherwise.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Credentials:
    """Where the certificate and its private key were written (both PEM)."""

    cert: Path
    key: Path


def make_credentials(directory: Path) -> Credentials:
    """Write ``server.pem`` and ``server.key`` into ``directory`` and return their paths."""
    cert, key = directory / "server.pem", directory / "server.key"
    try:
        _make_with_cryptography(cert, key)
    except ImportError:
        _make_with_openssl(cert, key)
    key.chmod(0o600)
    return Credentials(cert=cert, key=key)


def _make_with_cryptography(cert_path: Path, key_path: Path) -> None:
    from cryptography import x509  # optional: openssl is the fallback
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _make_with_openssl(cert_path: Path, key_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("neither the cryptography package nor the openssl command is available")
    subprocess.run(
        [
            openssl,
            *("req", "-x509", "-nodes", "-days", "2", "-newkey", "ec"),
            *("-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-keyout", str(key_path), "-out", str(cert_path), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
