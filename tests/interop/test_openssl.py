"""tlstunnel's server mode against ``openssl s_client``, OpenSSL's own reference client.

s_client verifies our certificate chain and name, sends its stdin and prints what comes
back.  With ``-state`` it reports every TLS alert on stderr, so the tests can see the
close_notify our server sends when the backend closes, and can tell it from a bare TCP
close (the control test at the end shows the check is able to fail).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import TunnelFactory
from tests.interop.helpers import CLOSE_NOTIFY_READ, s_client, server_section
from tests.support.backends import EarlyCloser, _ThreadedServer
from tests.support.pki import PKIFiles

pytestmark = pytest.mark.interop

VERSIONS = [
    pytest.param("-tls1_2", "TLSv1.2", id="tls1.2"),
    pytest.param("-tls1_3", "TLSv1.3", id="tls1.3"),
]


class LineAnswerer(_ThreadedServer):
    """Reads one line, answers ``you said <line>`` and closes: the backend ends first."""

    def __init__(self) -> None:
        super().__init__(self._answer)

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        line = b""
        while b"\n" not in line and (data := conn.recv(1024)):
            line += data
        conn.sendall(b"you said " + line)


@pytest.fixture
def answerer() -> Iterator[LineAnswerer]:
    server = LineAnswerer()
    yield server
    server.close()


@pytest.mark.parametrize(("flag", "version"), VERSIONS)
def test_s_client_handshakes_and_exchanges_data(
    tunnel: TunnelFactory, pki: PKIFiles, answerer: LineAnswerer, flag: str, version: str
) -> None:
    proc = tunnel(server_section(pki, answerer.port))
    result = s_client(proc.port("tls"), pki.ca, flag, stdin=b"hello over TLS\n")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"you said hello over TLS\n"
    stderr = result.stderr.decode()
    # The backend closed after answering: our server ended TLS with close_notify.
    assert CLOSE_NOTIFY_READ in stderr
    log = proc.wait_for_log(r"Connection closed: 24 byte\(s\) sent to TLS, 15 byte")
    assert f"{version} ciphersuite" in log


@pytest.mark.parametrize(("flag", "version"), VERSIONS)
def test_s_client_sees_close_notify_when_the_backend_closes_first(
    tunnel: TunnelFactory, pki: PKIFiles, flag: str, version: str
) -> None:
    """The backend sends a banner and half-closes before the client says anything:
    s_client gets the banner, then a close_notify (not a bare FIN), answers with its
    own close_notify, and that EOF reaches the backend."""
    backend = EarlyCloser(b"* OK ready\r\n")
    try:
        proc = tunnel(server_section(pki, backend.port))
        result = s_client(proc.port("tls"), pki.ca, flag, stdin=b"")
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == b"* OK ready\r\n"
        stderr = result.stderr.decode()
        assert CLOSE_NOTIFY_READ in stderr
        assert "SSL3 alert write:warning:close notify" in stderr
        assert backend.received[0].done.wait(5), "s_client's close_notify must reach the backend"
        assert backend.received[0].size == 0
        log = proc.wait_for_log(r"Connection closed: 12 byte\(s\) sent to TLS, 0 byte")
        assert f"{version} ciphersuite" in log
    finally:
        backend.close()


def _verifying_server(pki: PKIFiles, backend_port: int) -> str:
    return server_section(
        pki,
        backend_port,
        f"verifyChain = yes\nCAfile = {pki.ca}\ncheckHost = client.example.com\n",
    )


@pytest.mark.parametrize(("flag", "version"), VERSIONS)
def test_s_client_with_a_client_certificate_passes_verify_chain(
    tunnel: TunnelFactory, pki: PKIFiles, answerer: LineAnswerer, flag: str, version: str
) -> None:
    proc = tunnel(_verifying_server(pki, answerer.port))
    client_cert = str(pki.client)
    result = s_client(
        proc.port("tls"), pki.ca, flag, "-cert", client_cert, "-key", client_cert, stdin=b"me\n"
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"you said me\n"
    log = proc.wait_for_log(r"Connection closed: 12 byte\(s\) sent to TLS, 3 byte")
    assert "Certificate accepted at depth=0" in log
    assert f"{version} ciphersuite" in log


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
@pytest.mark.parametrize(
    ("use_stranger", "explanation"),
    [
        pytest.param(False, "SSL_accept: the client did not present a certificate", id="no-cert"),
        pytest.param(
            True,
            "SSL_accept: the peer's certificate could not be verified: unable to get local "
            "issuer certificate (the CA that issued it is not in CAfile/CApath)",
            id="stranger-cert",
        ),
    ],
)
def test_s_client_without_a_trusted_certificate_is_refused(
    tunnel: TunnelFactory,
    pki: PKIFiles,
    answerer: LineAnswerer,
    *,
    flag: str,
    use_stranger: bool,
    explanation: str,
) -> None:
    proc = tunnel(_verifying_server(pki, answerer.port))
    cert_args = ["-cert", str(pki.stranger), "-key", str(pki.stranger)] if use_stranger else []
    result = s_client(proc.port("tls"), pki.ca, flag, *cert_args, stdin=b"me\n")
    assert result.returncode != 0
    assert result.stdout == b""
    assert "SSL3 alert read:fatal:" in result.stderr.decode()
    log = proc.wait_for_log(r"Connection reset: 0 byte\(s\) sent to TLS, 0 byte")
    assert explanation in log
    assert answerer.accepted == 0, "no byte may reach the backend"


def test_the_close_notify_check_tells_a_bare_tcp_close_apart(pki: PKIFiles) -> None:
    """Control for the checks above: a TLS server that answers and then closes TCP
    without close_notify does not produce the line they look for."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.server))
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_once() -> None:
        conn, _ = listener.accept()
        with context.wrap_socket(conn, server_side=True) as tls:
            tls.recv(100)
            tls.sendall(b"bye\n")
            tls.shutdown(socket.SHUT_RDWR)  # TCP FIN with no close_notify before it

    server = threading.Thread(target=serve_once, daemon=True)
    server.start()
    try:
        result = s_client(listener.getsockname()[1], pki.ca, stdin=b"hi\n")
    finally:
        server.join(5)
        listener.close()
    assert result.stdout == b"bye\n"
    stderr = result.stderr.decode()
    assert CLOSE_NOTIFY_READ not in stderr
    assert "unexpected eof while reading" in stderr
