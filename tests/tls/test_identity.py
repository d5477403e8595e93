"""Our own certificate and key: PEM, PKCS#12, and what is said when they are wrong."""

from __future__ import annotations

import os
import ssl
import stat
import sys
import tempfile
from pathlib import Path

import pytest

from tlstunnel.tls import TLSSetupError, build_service_tls

from .conftest import PKI, ServiceFactory
from .helpers import handshake


def _leaf_der(path: Path) -> bytes:
    pem = path.read_text()
    start = pem.index("-----BEGIN CERTIFICATE-----")
    end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(pem[start:end])


def test_separate_key_file(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.server_cert, key=pki.server_key))
    client = build_service_tls(service(client=True, verify_chain=True, ca_file=pki.ca))
    outcome = handshake(server, client)
    assert outcome.ok
    assert outcome.client.getpeercert(binary_form=True) == _leaf_der(pki.server_cert)


def test_key_equal_to_cert_means_same_file(pki: PKI, service: ServiceFactory) -> None:
    build_service_tls(service(cert=pki.server, key=pki.server))


@pytest.mark.parametrize("attr", ["server_p12", "server_p12_unnamed"])
def test_pkcs12_bundle(pki: PKI, service: ServiceFactory, attr: str) -> None:
    server = build_service_tls(service(cert=getattr(pki, attr)))
    client = build_service_tls(service(client=True, verify_chain=True, ca_file=pki.ca))
    outcome = handshake(server, client)
    assert outcome.ok
    assert outcome.client.getpeercert(binary_form=True) == _leaf_der(pki.server_cert)


def test_pkcs12_goes_through_a_private_file_that_is_removed(
    pki: PKI, service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen: list[tuple[int, int]] = []
    original = ssl.SSLContext.load_cert_chain

    def spy(self: ssl.SSLContext, certfile: str, *args: object, **kwargs: object) -> None:
        path = Path(certfile)
        seen.append((stat.S_IMODE(path.stat().st_mode), stat.S_IMODE(path.parent.stat().st_mode)))
        original(self, certfile, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", spy)
    build_service_tls(service(cert=pki.server_p12))
    assert seen == [(0o600, 0o700)]
    assert list(tmp_path.iterdir()) == []


def test_pkcs12_without_cryptography(
    pki: PKI, service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.serialization", None)
    with pytest.raises(TLSSetupError, match="pip install cryptography"):
        build_service_tls(service(cert=pki.server_p12))


def test_password_protected_pkcs12_is_refused(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="password"):
        build_service_tls(service(cert=pki.locked_p12))


def test_server_needs_a_certificate(service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="server mode needs a certificate"):
        build_service_tls(service())


def test_client_certificate_is_optional(service: ServiceFactory) -> None:
    assert build_service_tls(service(client=True)).context is not None


def test_missing_certificate_file(pki: PKI, service: ServiceFactory, tmp_path: Path) -> None:
    with pytest.raises(TLSSetupError, match="cannot read it"):
        build_service_tls(service(cert=tmp_path / "missing.pem"))


def test_file_that_is_no_certificate(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="neither PEM nor"):
        build_service_tls(service(cert=pki.not_a_cert))


def test_pem_without_private_key(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="holds no private key"):
        build_service_tls(service(cert=pki.server_cert))


def test_key_file_without_key(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="no PEM private key"):
        build_service_tls(service(cert=pki.server_cert, key=pki.ca))


def test_key_that_does_not_match_the_certificate(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="does not match the certificate") as info:
        build_service_tls(service(cert=pki.server_cert, key=pki.other_client))
    assert str(pki.other_client) in info.value.message


def test_encrypted_key_is_refused_without_prompting(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="is encrypted"):
        build_service_tls(service(cert=pki.server_cert, key=pki.encrypted_key))


def test_key_without_certificate(pki: PKI, service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match="without cert"):
        build_service_tls(service(client=True, key=pki.server_key))


def test_temporary_directory_left_clean_after_a_failure(
    pki: PKI, service: ServiceFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(TLSSetupError):
        build_service_tls(service(cert=pki.server_p12, security_level=5))
    assert os.listdir(tmp_path) == []
