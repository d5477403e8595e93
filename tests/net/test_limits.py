"""Limits and endings an operator relies on: maxConnections, reset, local, TIMEOUTdrain.

Each test runs a real tlstunnel process and checks what a client or backend sees on
the wire (a refusal before any TLS, a RST or a FIN, the source address) and the line
the log gives for it.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
import threading
import time

import pytest

from tests.conftest import TunnelFactory
from tests.support.backends import EchoServer, _ThreadedServer
from tests.support.clients import tls_connect
from tests.support.pki import PKIFiles


def _dead_port() -> int:
    placeholder = socket.socket()
    placeholder.bind(("127.0.0.1", 0))
    port: int = placeholder.getsockname()[1]
    placeholder.close()
    return port


def _service(pki: PKIFiles, name: str, backend: int, extra: str = "") -> str:
    return (
        f"[{name}]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{backend}\n"
        f"cert = {pki.server}\n{extra}"
    )


def _echo(conn: ssl.SSLSocket, data: bytes) -> None:
    conn.sendall(data)
    assert conn.recv(len(data)) == data


def test_service_max_connections_refuses_the_next_client_before_tls(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    proc = tunnel(_service(pki, "capped", echo_server.port, "maxConnections = 2\n"))
    port = proc.port("capped")
    first, second = tls_connect(port, pki.ca), tls_connect(port, pki.ca)
    try:
        _echo(first, b"1")
        _echo(second, b"2")
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            tls_connect(port, pki.ca, timeout=5).close()
        log = proc.wait_for_log("refused: maxConnections = 2 for this service reached")
        assert "Service [capped]: connection from 127.0.0.1:" in log
        assert echo_server.accepted == 2, "a refused client must not reach the backend"
    finally:
        first.close()
    proc.wait_for_log("Connection closed", count=1)
    with tls_connect(port, pki.ca) as third:  # a slot is free again
        _echo(third, b"3")
    second.close()


def test_global_max_connections_caps_every_service_together(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    proc = tunnel(
        "maxConnections = 1\n"
        + _service(pki, "one", echo_server.port)
        + _service(pki, "two", echo_server.port)
    )
    with tls_connect(proc.port("one"), pki.ca) as held:
        _echo(held, b"x")
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            tls_connect(proc.port("two"), pki.ca, timeout=5).close()
        proc.wait_for_log(r"Service \[two\]: connection from .* the process-wide limit of 1")


@pytest.mark.parametrize(("reset", "expect_rst"), [("yes", True), ("no", False)])
def test_reset_decides_between_rst_and_fin_when_a_connection_fails(
    tunnel: TunnelFactory, reset: str, expect_rst: bool
) -> None:
    """Client mode, an upstream that refuses: the plain client's socket is dropped with a
    RST (reset = yes, stunnel's default) or closed with a FIN (reset = no)."""
    proc = tunnel(
        "[plain]\naccept = 127.0.0.1:0\nclient = yes\n"
        f"connect = 127.0.0.1:{_dead_port()}\nreset = {reset}\n"
    )
    with socket.create_connection(("127.0.0.1", proc.port("plain"))) as conn:
        conn.settimeout(5)
        proc.wait_for_log("No more addresses to connect")
        if expect_rst:
            with pytest.raises(ConnectionResetError):
                conn.recv(1)
        else:
            assert conn.recv(1) == b""


def test_local_sets_the_source_address_of_upstream_connections(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    seen: list[str] = []

    def record_peer(conn: socket.socket) -> None:
        seen.append(conn.getpeername()[0])
        conn.sendall(b"k")

    backend = _ThreadedServer(record_peer)
    try:
        proc = tunnel(_service(pki, "src", backend.port, "local = 127.0.0.2\n"))
        with tls_connect(proc.port("src"), pki.ca) as conn:
            assert conn.recv(1) == b"k"
        assert seen == ["127.0.0.2"]
    finally:
        backend.close()


def test_timeout_drain_lets_live_connections_finish_after_sigterm(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    proc = tunnel("TIMEOUTdrain = 20\n" + _service(pki, "drain", echo_server.port))
    port = proc.port("drain")
    with tls_connect(port, pki.ca) as live:
        _echo(live, b"before")
        proc.send_signal(signal.SIGTERM)
        proc.wait_for_log(r"Waiting up to 20 s for 1 connection\(s\) to finish")
        with pytest.raises(OSError):  # no new clients during the drain
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        _echo(live, b"during the drain")
    started = time.monotonic()
    assert proc.process.wait(10) == 0
    assert time.monotonic() - started < 5, "the stop should end as soon as the last client left"
    assert "Terminated" in proc.log()


def test_a_second_sigterm_cuts_the_drain_short(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    proc = tunnel("TIMEOUTdrain = 60\n" + _service(pki, "drain", echo_server.port))
    with tls_connect(proc.port("drain"), pki.ca) as live:
        _echo(live, b"x")
        proc.send_signal(signal.SIGTERM)
        proc.wait_for_log("Waiting up to 60 s")
        closed = threading.Event()

        def watch() -> None:
            with contextlib.suppress(OSError):
                live.recv(1)
            closed.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        proc.send_signal(signal.SIGTERM)
        assert closed.wait(5), "the second SIGTERM must close the live connection"
    assert proc.process.wait(10) == 0
    assert "Closing 1 connection(s) still open after the drain" in proc.log()
