"""``redirect``: clients failing certificate authentication reach another backend.

Two backends that greet with their names; the tunnel verifies client certificates.
A trusted client reaches ``connect``; a stranger's certificate, no certificate, or a
trusted certificate failing ``checkHost`` reaches ``redirect`` instead — and nothing
of theirs reaches the real backend.  The same clients against stunnel4 with the same
configuration land in the same places.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TunnelFactory
from tests.support.backends import RecordingServer
from tests.support.pki import PKIFiles, make_pki


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    """The end-to-end PKI (tests/tls has its own ``pki`` fixture of another shape)."""
    return make_pki(tmp_path_factory.mktemp("e2e-pki"))


@pytest.fixture
def real() -> Iterator[RecordingServer]:
    server = RecordingServer(b"real", reply_first=True)
    yield server
    server.close()


@pytest.fixture
def decoy() -> Iterator[RecordingServer]:
    server = RecordingServer(b"decoy", reply_first=True)
    yield server
    server.close()


def section(e2e: PKIFiles, real: RecordingServer, decoy: RecordingServer, extra: str = "") -> str:
    return (
        f"[web]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{real.port}\n"
        f"redirect = 127.0.0.1:{decoy.port}\ncert = {e2e.server}\n"
        f"verifyChain = yes\nCAfile = {e2e.ca}\n{extra}"
    )


def visit(port: int, e2e: PKIFiles, cert: Path | None, version: ssl.TLSVersion) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(e2e.ca))
    context.maximum_version = version
    if cert is not None:
        context.load_cert_chain(str(cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with raw, context.wrap_socket(raw, server_hostname="localhost") as conn:
        conn.sendall(b"secret")
        reply = b""
        while len(reply) < 4 and (chunk := conn.recv(1024)):
            reply += chunk
    return reply


VERSIONS = [
    pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
    pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3"),
]


@pytest.mark.parametrize("version", VERSIONS)
def test_failing_clients_go_to_the_redirect_target(
    tunnel: TunnelFactory,
    e2e: PKIFiles,
    real: RecordingServer,
    decoy: RecordingServer,
    version: ssl.TLSVersion,
) -> None:
    proc = tunnel(section(e2e, real, decoy))
    port = proc.port("web")
    assert visit(port, e2e, e2e.client, version) == b"real"
    assert visit(port, e2e, e2e.stranger, version) == b"decoy"
    assert visit(port, e2e, None, version) == b"decoy"
    log = proc.wait_for_log("Connection closed", count=3)
    assert log.count("Redirecting connection") == 2
    assert "CERT: Pre-verification error: unable to get local issuer certificate" in log
    assert "Rejected by CERT at depth=0:" in log
    assert "The client did not present a certificate" in log
    assert len(real.received) == 1  # the strangers' bytes never reached it
    assert len(decoy.received) == 2


def test_a_failed_subject_check_is_redirected_too(
    tunnel: TunnelFactory, e2e: PKIFiles, real: RecordingServer, decoy: RecordingServer
) -> None:
    proc = tunnel(section(e2e, real, decoy, "checkHost = someone-else.example.com\n"))
    assert visit(proc.port("web"), e2e, e2e.client, ssl.TLSVersion.TLSv1_3) == b"decoy"
    proc.wait_for_log("Redirecting connection")
    assert real.received == []


def test_without_redirect_a_stranger_is_refused_in_the_handshake(
    tunnel: TunnelFactory, e2e: PKIFiles, real: RecordingServer, decoy: RecordingServer
) -> None:
    """The control: the same service without redirect fails the stranger's handshake."""
    text = section(e2e, real, decoy).replace(f"redirect = 127.0.0.1:{decoy.port}\n", "")
    proc = tunnel(text)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        visit(proc.port("web"), e2e, e2e.stranger, ssl.TLSVersion.TLSv1_2)
    proc.wait_for_log("Connection reset")
    assert real.received == [] and decoy.received == []


@pytest.mark.interop
def test_stunnel4_redirects_the_same_clients(
    tunnel: TunnelFactory, e2e: PKIFiles, real: RecordingServer, decoy: RecordingServer
) -> None:
    """The reference: stunnel4 sends the same three clients to the same places."""
    proc = tunnel(section(e2e, real, decoy), program="stunnel4", name="stunnel4")
    port = proc.port("web")
    version = ssl.TLSVersion.TLSv1_3
    outcomes = [visit(port, e2e, cert, version) for cert in (e2e.client, e2e.stranger, None)]
    assert outcomes == [b"real", b"decoy", b"decoy"]
