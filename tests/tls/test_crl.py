"""CRLfile and CRLpath: revoked peers are refused during the handshake, in both modes.

Real tunnels (the tlstunnel process), real peers (Python ssl, openssl s_client and
s_server), CRLs made with cryptography's CertificateRevocationListBuilder and a CRLpath
named by ``openssl rehash``.  Every refusal checks the log line and that the backend
never saw a byte (or a connection).
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TunnelFactory
from tests.support.backends import EchoServer
from tests.support.tunnel import TunnelProcess
from tlstunnel.config import ConfigError, load_text
from tlstunnel.tls import TLSSetupError, build_service_tls

from .revocation_peers import RecordingTLSServer, plain_talk, talk
from .revocation_pki import RevocationPKI, make_revocation_pki


@pytest.fixture(scope="module")
def rpki(tmp_path_factory: pytest.TempPathFactory) -> RevocationPKI:
    return make_revocation_pki(tmp_path_factory.mktemp("revocation"))


def server_tunnel(
    tunnel: TunnelFactory, rpki: RevocationPKI, backend_port: int, trust: str
) -> TunnelProcess:
    return tunnel(
        f"[crl]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{backend_port}\n"
        f"cert = {rpki.server.bundle_path}\nCAfile = {rpki.ca_file}\nverifyChain = yes\n{trust}"
    )


# --- server mode: client certificates -------------------------------------------------------


def test_crlfile_lets_a_good_client_through(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    proc = server_tunnel(tunnel, rpki, echo_server.port, f"CRLfile = {rpki.crls}\n")
    assert talk(proc.port("crl"), rpki.client.bundle_path, rpki.ca_file) == b"hello\n"
    assert "CRL file:" in proc.log() or echo_server.accepted == 1


def test_crlfile_refuses_a_revoked_client(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    proc = server_tunnel(tunnel, rpki, echo_server.port, f"CRLfile = {rpki.crls}\n")
    assert talk(proc.port("crl"), rpki.revoked_client.bundle_path, rpki.ca_file) == b""
    proc.wait_for_log(
        r"SSL_accept: the peer's certificate could not be verified: certificate revoked "
        r"\(a CRL in CRLfile/CRLpath lists it"
    )
    assert echo_server.accepted == 0


def test_crlpath_refuses_a_revoked_client(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    proc = server_tunnel(tunnel, rpki, echo_server.port, f"CRLpath = {rpki.crl_dir}\n")
    assert talk(proc.port("crl"), rpki.client.bundle_path, rpki.ca_file) == b"hello\n"
    assert talk(proc.port("crl"), rpki.revoked_client.bundle_path, rpki.ca_file) == b""
    proc.wait_for_log(r"could not be verified: certificate revoked")
    assert echo_server.accepted == 1  # only the good client's connection


def test_a_crl_revoking_the_intermediate_refuses_every_leaf_under_it(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    proc = server_tunnel(
        tunnel, rpki, echo_server.port, f"CRLfile = {rpki.crls_revoking_intermediate}\n"
    )
    assert talk(proc.port("crl"), rpki.client.bundle_path, rpki.ca_file) == b""
    proc.wait_for_log(r"could not be verified: certificate revoked")
    assert echo_server.accepted == 0


def test_an_expired_crl_refuses_with_a_readable_line(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    proc = server_tunnel(tunnel, rpki, echo_server.port, f"CRLfile = {rpki.crls_expired}\n")
    assert talk(proc.port("crl"), rpki.client.bundle_path, rpki.ca_file) == b""
    proc.wait_for_log(
        r"could not be verified: CRL has expired \(a CRL in CRLfile/CRLpath is past its "
        r"nextUpdate: install a fresh one\)"
    )
    assert echo_server.accepted == 0


def test_a_missing_ca_crl_is_named(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer, tmp_path: Path
) -> None:
    only_intermediate = tmp_path / "intermediate-only.pem"
    end = b"-----END X509 CRL-----\n"
    only_intermediate.write_bytes(rpki.crls.read_bytes().split(end)[1] + end)
    proc = server_tunnel(tunnel, rpki, echo_server.port, f"CRLfile = {only_intermediate}\n")
    assert talk(proc.port("crl"), rpki.client.bundle_path, rpki.ca_file) == b""
    proc.wait_for_log(r"unable to get certificate CRL \(CRLfile/CRLpath has no CRL from one")
    assert echo_server.accepted == 0


@pytest.mark.interop
def test_openssl_s_client_with_a_revoked_certificate_is_refused(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    proc = server_tunnel(tunnel, rpki, echo_server.port, f"CRLfile = {rpki.crls}\n")
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{proc.port('crl')}", "-quiet",
         "-cert", str(rpki.revoked_client.bundle_path), "-CAfile", str(rpki.ca_file),
         "-cert_chain", str(rpki.intermediate.issued.cert_path)],
        input=b"hello\n", capture_output=True, timeout=15, check=False,
    )  # fmt: skip
    assert b"hello" not in result.stdout
    proc.wait_for_log(r"SSL_accept: .*certificate revoked")
    assert echo_server.accepted == 0


# --- client mode: the server's certificate ----------------------------------------------------


def tls_server_context(cert: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert))
    return context


@pytest.fixture
def revoked_backend(rpki: RevocationPKI) -> Iterator[RecordingTLSServer]:
    with RecordingTLSServer(tls_server_context(rpki.revoked_server.bundle_path)) as server:
        yield server


def client_tunnel(tunnel: TunnelFactory, port: int, trust: str) -> TunnelProcess:
    return tunnel(
        f"[out]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{port}\n"
        f"verifyChain = yes\ncheckHost = localhost\n{trust}"
    )


def test_client_mode_refuses_a_revoked_server(
    tunnel: TunnelFactory, rpki: RevocationPKI, revoked_backend: RecordingTLSServer
) -> None:
    proc = client_tunnel(
        tunnel, revoked_backend.port, f"CAfile = {rpki.ca_file}\nCRLfile = {rpki.crls}\n"
    )
    assert plain_talk(proc.port("out")) == b""
    proc.wait_for_log(r"SSL_connect: the peer's certificate could not be verified: certificate "
                      r"revoked")  # fmt: skip
    assert bytes(revoked_backend.received) == b""


def test_client_mode_without_crls_reaches_the_same_server(
    tunnel: TunnelFactory, rpki: RevocationPKI, revoked_backend: RecordingTLSServer
) -> None:
    """The control for the test above: the refusal comes from the CRL."""
    proc = client_tunnel(tunnel, revoked_backend.port, f"CAfile = {rpki.ca_file}\n")
    assert plain_talk(proc.port("out")) == b"secret\n"
    assert bytes(revoked_backend.received) == b"secret\n"


@pytest.mark.interop
def test_client_mode_refuses_openssl_s_server_with_a_revoked_certificate(
    tunnel: TunnelFactory, rpki: RevocationPKI
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-quiet",
         "-cert", str(rpki.revoked_server.bundle_path),
         "-cert_chain", str(rpki.intermediate.issued.cert_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        proc = client_tunnel(tunnel, port, f"CAfile = {rpki.ca_file}\nCRLpath = {rpki.crl_dir}\n")
        _wait_listening(port)
        assert plain_talk(proc.port("out")) == b""
        proc.wait_for_log(r"SSL_connect: .*certificate revoked")
    finally:
        server.kill()
        out, _ = server.communicate(timeout=5)
    assert b"secret" not in out


def _wait_listening(port: int) -> None:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            import time

            time.sleep(0.05)
            continue
        return
    raise AssertionError(f"nothing listens on {port}")


# --- configuration ------------------------------------------------------------------------------


def test_crl_options_need_verification(rpki: RevocationPKI, tmp_path: Path) -> None:
    text = (
        f"[s]\naccept = 1\nconnect = 2\ncert = {rpki.server.bundle_path}\n"
        f"CRLfile = {rpki.crls}\nCRLpath = {rpki.crl_dir}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_text(text, "t.conf", str(tmp_path))
    message = str(caught.value)
    assert 't.conf:5: CRLfile: CRLfile needs "verifyChain" or "verifyPeer"' in message
    assert 't.conf:6: CRLpath: CRLpath needs "verifyChain" or "verifyPeer"' in message


def _service(rpki: RevocationPKI, tmp_path: Path, trust: str) -> object:
    text = (
        f"[s]\naccept = 1\nconnect = 2\ncert = {rpki.server.bundle_path}\n"
        f"CAfile = {rpki.ca_file}\nverifyChain = yes\n{trust}"
    )
    return load_text(text, "t.conf", str(tmp_path)).config.services[0]


def test_a_crlfile_without_a_crl_is_refused_at_start(rpki: RevocationPKI, tmp_path: Path) -> None:
    svc = _service(rpki, tmp_path, f"CRLfile = {rpki.ca_file}\n")
    with pytest.raises(TLSSetupError, match=r"CRLfile = .*: no PEM CRL in it"):
        build_service_tls(svc)  # type: ignore[arg-type]


def test_an_unhashed_crlpath_is_refused_at_start(rpki: RevocationPKI, tmp_path: Path) -> None:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "crls.pem").write_bytes(rpki.crls.read_bytes())
    svc = _service(rpki, tmp_path, f"CRLpath = {folder}\n")
    with pytest.raises(TLSSetupError, match=r"no CRL named HASH.r0 in it; run 'openssl rehash"):
        build_service_tls(svc)  # type: ignore[arg-type]


def test_crls_turn_on_checking_of_the_whole_chain(rpki: RevocationPKI, tmp_path: Path) -> None:
    tls = build_service_tls(_service(rpki, tmp_path, f"CRLfile = {rpki.crls}\n"))  # type: ignore[arg-type]
    assert tls.context.verify_flags & ssl.VERIFY_CRL_CHECK_CHAIN == ssl.VERIFY_CRL_CHECK_CHAIN
    plain = build_service_tls(_service(rpki, tmp_path, ""))  # type: ignore[arg-type]
    assert not plain.context.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
