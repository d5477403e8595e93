"""verifyChain, verifyPeer, requireCert and checkHost/IP/Email over real handshakes."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from tlstunnel.tls import TLSSetupError, build_service_tls
from tlstunnel.tls.errors import describe_tls_error

from .conftest import PKI, ServiceFactory
from .helpers import handshake

# --- verifyChain ----------------------------------------------------------------------------


def test_verify_chain_accepts_a_ca_signed_server(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.server))
    client = build_service_tls(service(client=True, verify_chain=True, ca_file=pki.ca))
    outcome = handshake(server, client)
    assert outcome.ok
    assert client.check_peer(outcome.client) is None


def test_verify_chain_accepts_a_chain_through_an_intermediate(
    pki: PKI, service: ServiceFactory
) -> None:
    server = build_service_tls(service(cert=pki.intermediate_leaf))
    client = build_service_tls(service(client=True, verify_chain=True, ca_file=pki.ca))
    assert handshake(server, client).ok


def test_verify_chain_refuses_an_unknown_ca(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.other_server))
    client = build_service_tls(service(client=True, verify_chain=True, ca_file=pki.ca))
    outcome = handshake(server, client)
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)


def test_without_verification_a_client_accepts_anything(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.other_self_signed))
    client = build_service_tls(service(client=True))
    outcome = handshake(server, client)
    assert outcome.ok
    assert client.check_peer(outcome.client) is None


def test_server_verifies_client_certificates(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(
        service(cert=pki.server, verify_chain=True, require_cert=True, ca_file=pki.ca)
    )
    assert server.context.verify_mode == ssl.CERT_REQUIRED
    good = build_service_tls(service(client=True, cert=pki.client))
    outcome = handshake(server, good)
    assert outcome.ok
    assert server.check_peer(outcome.server) is None
    stranger = build_service_tls(service(client=True, cert=pki.other_client))
    assert isinstance(handshake(server, stranger).server_error, ssl.SSLCertVerificationError)


def test_require_cert_refuses_a_client_without_certificate(
    pki: PKI, service: ServiceFactory
) -> None:
    server = build_service_tls(
        service(cert=pki.server, verify_chain=True, require_cert=True, ca_file=pki.ca)
    )
    outcome = handshake(server, build_service_tls(service(client=True)))
    assert outcome.server_error is not None
    assert outcome.server_error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def test_require_cert_off_lets_a_client_without_certificate_in(
    pki: PKI, service: ServiceFactory
) -> None:
    server = build_service_tls(
        service(cert=pki.server, verify_chain=True, require_cert=False, ca_file=pki.ca)
    )
    assert server.context.verify_mode == ssl.CERT_OPTIONAL
    outcome = handshake(server, build_service_tls(service(client=True)))
    assert outcome.ok
    assert server.check_peer(outcome.server) is None
    # ...while a certificate that is presented is still verified.
    stranger = build_service_tls(service(client=True, cert=pki.other_client))
    assert handshake(server, stranger).server_error is not None


def test_verification_needs_trusted_certificates(service: ServiceFactory, pki: PKI) -> None:
    with pytest.raises(TLSSetupError, match='"CAfile" or "CApath" has to be configured'):
        build_service_tls(service(client=True, verify_chain=True))


def test_missing_cafile(service: ServiceFactory, tmp_path: Path) -> None:
    with pytest.raises(TLSSetupError, match=r"CAfile = .*: no such file"):
        build_service_tls(service(client=True, verify_chain=True, ca_file=tmp_path / "no.pem"))


def test_cafile_without_certificates(service: ServiceFactory, pki: PKI) -> None:
    with pytest.raises(TLSSetupError, match="no PEM certificates could be loaded"):
        build_service_tls(service(client=True, verify_chain=True, ca_file=pki.not_a_cert))


def test_capath_must_be_a_directory(service: ServiceFactory, pki: PKI) -> None:
    with pytest.raises(TLSSetupError, match="not a directory"):
        build_service_tls(service(client=True, verify_chain=True, ca_path=pki.ca))


# --- verifyPeer (pinning) ---------------------------------------------------------------------


def test_verify_peer_accepts_a_pinned_self_signed_server(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.self_signed))
    client = build_service_tls(service(client=True, verify_peer=True, ca_file=pki.self_signed_cert))
    outcome = handshake(server, client)
    assert outcome.ok
    assert client.check_peer(outcome.client) is None


def test_verify_peer_refuses_another_self_signed_server(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.other_self_signed))
    client = build_service_tls(service(client=True, verify_peer=True, ca_file=pki.self_signed_cert))
    outcome = handshake(server, client)
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)


def test_verify_peer_refuses_a_valid_but_unpinned_certificate(
    pki: PKI, service: ServiceFactory, tmp_path: Path
) -> None:
    # CAfile trusts the CA (so OpenSSL accepts the chain) but pins only another leaf.
    cafile = tmp_path / "pins.pem"
    cafile.write_bytes(pki.ca.read_bytes() + pki.self_signed_cert.read_bytes())
    server = build_service_tls(service(cert=pki.server))
    client = build_service_tls(service(client=True, verify_peer=True, ca_file=cafile))
    outcome = handshake(server, client)
    assert outcome.ok
    reason = client.check_peer(outcome.client)
    assert reason is not None and "not one of the certificates in CAfile/CApath" in reason


def test_verify_peer_accepts_a_pinned_leaf_whose_issuer_is_unknown(
    pki: PKI, service: ServiceFactory
) -> None:
    server = build_service_tls(service(cert=pki.intermediate_leaf))  # sends leaf + intermediate
    client = build_service_tls(
        service(client=True, verify_peer=True, ca_file=pki.intermediate_leaf_cert)
    )
    outcome = handshake(server, client)
    assert outcome.ok
    assert client.check_peer(outcome.client) is None


def test_verify_peer_with_verify_chain_wants_the_root_too(
    pki: PKI, service: ServiceFactory, tmp_path: Path
) -> None:
    server = build_service_tls(service(cert=pki.server))
    leaf_only = build_service_tls(
        service(client=True, verify_peer=True, verify_chain=True, ca_file=pki.server_cert)
    )
    assert isinstance(handshake(server, leaf_only).client_error, ssl.SSLCertVerificationError)
    both = tmp_path / "root-and-leaf.pem"
    both.write_bytes(pki.ca.read_bytes() + pki.server_cert.read_bytes())
    client = build_service_tls(
        service(client=True, verify_peer=True, verify_chain=True, ca_file=both)
    )
    outcome = handshake(server, client)
    assert outcome.ok
    assert client.check_peer(outcome.client) is None


def test_verify_peer_on_a_server_pins_client_certificates(
    pki: PKI, service: ServiceFactory
) -> None:
    server = build_service_tls(
        service(cert=pki.server, verify_peer=True, require_cert=True, ca_file=pki.self_signed_cert)
    )
    pinned = build_service_tls(service(client=True, cert=pki.self_signed))
    outcome = handshake(server, pinned)
    assert outcome.ok
    assert server.check_peer(outcome.server) is None
    other = build_service_tls(service(client=True, cert=pki.other_self_signed))
    assert handshake(server, other).server_error is not None


def test_verify_peer_with_an_unhashed_capath(
    pki: PKI, service: ServiceFactory, tmp_path: Path
) -> None:
    directory = tmp_path / "certs"
    directory.mkdir()
    shutil.copy(pki.self_signed_cert, directory / "peer.pem")
    (directory / "README").write_text("not a certificate\n")
    server = build_service_tls(service(cert=pki.self_signed))
    client = build_service_tls(service(client=True, verify_peer=True, ca_path=directory))
    outcome = handshake(server, client)
    assert outcome.ok
    assert client.check_peer(outcome.client) is None


def test_verify_peer_needs_something_to_pin(service: ServiceFactory, tmp_path: Path) -> None:
    with pytest.raises(TLSSetupError, match="no certificate to pin"):
        build_service_tls(service(client=True, verify_peer=True, ca_path=tmp_path))


# --- checkHost / checkIP / checkEmail -----------------------------------------------------------


@pytest.mark.parametrize(
    ("checks", "accepted"),
    [
        ({"check_host": ("server.example.com",)}, True),
        ({"check_host": ("SERVER.Example.COM.",)}, True),
        ({"check_host": ("other.example.com", "localhost")}, True),
        ({"check_host": ("other.example.com",)}, False),
        ({"check_ip": ("127.0.0.1",)}, True),
        ({"check_ip": ("0:0::1",)}, True),
        ({"check_ip": ("10.0.0.1",)}, False),
        ({"check_host": ("localhost",), "check_ip": ("10.0.0.1",)}, False),
        ({"check_host": ("localhost",), "check_ip": ("::1",)}, True),
        ({"check_email": ("nobody@example.com",)}, False),
    ],
)
def test_subject_checks_on_the_server_certificate(
    pki: PKI, service: ServiceFactory, checks: dict[str, tuple[str, ...]], accepted: bool
) -> None:
    server = build_service_tls(service(cert=pki.server))
    client = build_service_tls(service(client=True, verify_chain=True, ca_file=pki.ca, **checks))
    outcome = handshake(server, client)
    if not outcome.ok:
        # OpenSSL refused it during the handshake (subject_params.py), as stunnel does.
        assert not accepted
        error = outcome.client_error
        assert isinstance(error, ssl.SSLCertVerificationError)
        said = describe_tls_error(error, server_side=False)
        assert said.startswith("the peer's certificate does not match"), said
        return
    reason = client.check_peer(outcome.client)
    assert (reason is None) == accepted, reason
    if not accepted:
        assert reason is not None and reason.startswith("the peer's certificate does not match")


def test_check_email_on_a_client_certificate(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(
        service(
            cert=pki.server,
            verify_chain=True,
            require_cert=True,
            ca_file=pki.ca,
            check_email=("client@EXAMPLE.com",),
        )
    )
    outcome = handshake(server, build_service_tls(service(client=True, cert=pki.client)))
    assert outcome.ok
    assert server.check_peer(outcome.server) is None


def test_checks_work_with_verify_peer_alone(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.self_signed))
    client = build_service_tls(
        service(
            client=True,
            verify_peer=True,
            ca_file=pki.self_signed_cert,
            check_host=("pinned.example",),
        )
    )
    outcome = handshake(server, client)
    assert client.check_peer(outcome.client) is None


def test_checks_need_verification(service: ServiceFactory) -> None:
    with pytest.raises(TLSSetupError, match='need "verifyChain" or "verifyPeer"'):
        build_service_tls(service(client=True, check_host=("example.com",)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("check_ip", "not-an-ip", "checkIP = not-an-ip"),
        ("check_host", "bad..name", "checkHost = bad..name"),
        ("check_email", "no-at-sign", "checkEmail = no-at-sign"),
    ],
)
def test_bad_check_values_are_refused(
    pki: PKI, service: ServiceFactory, field: str, value: str, message: str
) -> None:
    with pytest.raises(TLSSetupError, match=message):
        build_service_tls(
            service(client=True, verify_chain=True, ca_file=pki.ca, **{field: (value,)})
        )
