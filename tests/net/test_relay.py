"""The data path end to end: real tlstunnel processes, real TLS clients and backends.

Every test here goes through sockets on loopback and checks bytes, EOFs and the log
lines a user would see.  The half-close tests are the heart of it: a tunnel must carry
each direction until *that* direction ends, whatever the other one does.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import struct
import threading
import time

import pytest

from tests.conftest import TunnelFactory
from tests.support.backends import EarlyCloser, EchoServer, RecordingServer
from tests.support.clients import HalfClosingTLSClient, recv_all, tls_connect
from tests.support.pki import PKIFiles


def server_service(pki: PKIFiles, backend_port: int, extra: str = "") -> str:
    return (
        "[tls]\n"
        "accept = 127.0.0.1:0\n"
        f"connect = 127.0.0.1:{backend_port}\n"
        f"cert = {pki.server}\n" + extra
    )


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_server_mode_carries_bytes_both_ways(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, version: ssl.TLSVersion
) -> None:
    proc = tunnel(server_service(pki, echo_server.port))
    with tls_connect(proc.port("tls"), pki.ca, version=version) as conn:
        assert conn.version() == ("TLSv1.2" if version is ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
        payload = os.urandom(300_000)
        conn.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            echoed += conn.recv(65536)
        assert echoed == payload
    log = proc.wait_for_log(r"Connection closed: 300000 byte\(s\) sent to TLS, 300000 byte")
    assert "Service [tls] accepted connection from 127.0.0.1:" in log
    assert "TLS accepted: new session negotiated" in log
    assert "s_connect: connected 127.0.0.1:" in log


def test_backend_streams_megabytes_after_client_half_close(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    """The client sends, half-closes (close_notify + FIN), and only then does the
    backend answer with 8 MB: every byte must reach the client, then close_notify."""
    reply = os.urandom(8 << 20)
    backend = RecordingServer(reply)
    try:
        proc = tunnel(server_service(pki, backend.port))
        client = HalfClosingTLSClient(proc.port("tls"), pki.ca)
        request = os.urandom(100_000)
        client.send(request)
        client.half_close()
        received, clean = client.receive_all()
        client.close()
        assert len(received) == len(reply)
        assert hashlib.sha256(received).digest() == hashlib.sha256(reply).digest()
        assert clean, "the tunnel must end its direction with close_notify"
        assert backend.received[0].done.wait(5)
        assert backend.received[0].size == len(request)
        assert backend.received[0].digest == hashlib.sha256(request).hexdigest()
        proc.wait_for_log(rf"Connection closed: {len(reply)} byte\(s\) sent to TLS, 100000 byte")
    finally:
        backend.close()


def test_client_keeps_sending_after_backend_half_close(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    """The backend answers and half-closes first; the tunnel sends close_notify to the
    client, and the client's later 4 MB must still reach the backend."""
    backend = EarlyCloser(b"banner\r\n")
    try:
        proc = tunnel(server_service(pki, backend.port))
        client = HalfClosingTLSClient(proc.port("tls"), pki.ca)
        received, clean = client.receive_all()
        assert received == b"banner\r\n"
        assert clean
        upload = os.urandom(4 << 20)
        client.send(upload)
        client.half_close()
        assert backend.received[0].done.wait(10)
        client.close()
        assert backend.received[0].size == len(upload)
        assert backend.received[0].digest == hashlib.sha256(upload).hexdigest()
        proc.wait_for_log(r"Connection closed: 8 byte\(s\) sent to TLS, 4194304 byte")
    finally:
        backend.close()


def test_client_and_server_mode_pair_forward_eof_each_way(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    """plain client → tlstunnel client mode → TLS → tlstunnel server mode → backend."""
    reply = os.urandom(3 << 20)
    backend = RecordingServer(reply)
    try:
        server = tunnel(server_service(pki, backend.port), name="server")
        client_side = tunnel(
            "[plain]\naccept = 127.0.0.1:0\nclient = yes\n"
            f"connect = 127.0.0.1:{server.port('tls')}\n"
            f"CAfile = {pki.ca}\nverifyChain = yes\ncheckHost = localhost\n",
            name="client",
        )
        with socket.create_connection(("127.0.0.1", client_side.port("plain"))) as conn:
            request = os.urandom(2 << 20)
            conn.sendall(request)
            conn.shutdown(socket.SHUT_WR)
            received = recv_all(conn)
        assert hashlib.sha256(received).digest() == hashlib.sha256(reply).digest()
        assert backend.received[0].digest == hashlib.sha256(request).hexdigest()
        client_side.wait_for_log(r"Connection closed: 2097152 byte\(s\) sent to TLS, 3145728")
        server.wait_for_log(r"Connection closed: 3145728 byte\(s\) sent to TLS, 2097152")
    finally:
        backend.close()


def test_client_mode_resumes_the_session_on_the_next_connection(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    server = tunnel(server_service(pki, echo_server.port), name="server")
    client_side = tunnel(
        f"[plain]\naccept = 127.0.0.1:0\nclient = yes\nconnect = 127.0.0.1:{server.port('tls')}\n",
        name="client",
    )
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", client_side.port("plain"))) as conn:
            conn.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.shutdown(socket.SHUT_WR)
            recv_all(conn)
    log = client_side.wait_for_log(r"Connection closed", count=2)
    assert "TLS connected: new session negotiated" in log
    assert "TLS connected: previous session reused" in log
    assert "TLS accepted: previous session reused" in server.log()


def test_slow_reader_does_not_grow_memory(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    """A client that never reads: the backend must be held back, not buffered."""
    sent = [0]
    stop = threading.Event()

    def flood(conn: socket.socket) -> None:
        block = b"x" * 65536
        conn.settimeout(0.5)
        while not stop.is_set():
            try:
                sent[0] += conn.send(block)
            except TimeoutError:
                continue

    from tests.support.backends import _ThreadedServer

    backend = _ThreadedServer(flood)
    try:
        proc = tunnel(server_service(pki, backend.port))
        pid = proc.process.pid
        with tls_connect(proc.port("tls"), pki.ca) as conn:
            conn.sendall(b"go")
            time.sleep(0.5)
            before = _rss_kb(pid)
            time.sleep(2.0)
            after = _rss_kb(pid)
            pushed = sent[0]
            stop.set()
        assert pushed < 64 << 20, f"backend pushed {pushed} bytes into a client that never reads"
        assert after - before < 16 * 1024, f"tunnel RSS grew {after - before} KB"
    finally:
        stop.set()
        backend.close()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_trickled_client_hello_is_cut_at_timeout_busy(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    """TIMEOUTbusy is a deadline for the whole handshake, not a per-read timeout."""
    proc = tunnel(server_service(pki, echo_server.port, "TIMEOUTbusy = 1\n"))
    hello = _client_hello()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proc.port("tls"))) as conn:
        conn.settimeout(0.25)
        closed = False
        for byte in hello:
            try:
                conn.send(bytes([byte]))
                if conn.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if time.monotonic() - started > 6:
                break
    elapsed = time.monotonic() - started
    assert closed, "the tunnel kept a trickling handshake open"
    assert elapsed < 3, f"closed only after {elapsed:.1f} s"
    proc.wait_for_log("TIMEOUTbusy exceeded")


def _client_hello() -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_idle_connection_is_closed_at_timeout_idle(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    proc = tunnel(server_service(pki, echo_server.port, "TIMEOUTidle = 1\n"))
    with tls_connect(proc.port("tls"), pki.ca) as conn:
        conn.sendall(b"hi")
        assert conn.recv(2) == b"hi"
        started = time.monotonic()
        conn.settimeout(5)
        with _closed():
            data = conn.recv(10)
            assert data == b""
        assert 0.8 < time.monotonic() - started < 3
    log = proc.wait_for_log("Connection reset")
    assert "TIMEOUTidle exceeded" in log


class _closed:
    """Accept either a clean EOF or a reset as 'the tunnel closed the connection'."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return exc_type is None or isinstance(exc, (OSError, ssl.SSLError))


def test_plain_http_on_the_tls_port_is_refused_readably(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    proc = tunnel(server_service(pki, echo_server.port))
    port = proc.port("tls")
    with tls_connect(port, pki.ca) as healthy:
        with socket.create_connection(("127.0.0.1", port)) as garbage:
            garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            garbage.settimeout(5)
            try:
                leftover = garbage.recv(100)
            except ConnectionResetError:
                leftover = b""
            assert b"HTTP" not in leftover
        healthy.sendall(b"still fine")
        assert healthy.recv(10) == b"still fine"
    log = proc.wait_for_log("does not speak TLS")
    assert "plain HTTP" in log
    assert echo_server.accepted == 1, "nothing may reach the backend for a failed handshake"


def test_dead_backend_gives_one_readable_line_and_the_next_client_works(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    placeholder = socket.socket()
    placeholder.bind(("127.0.0.1", 0))
    dead_port = placeholder.getsockname()[1]
    placeholder.close()
    proc = tunnel(server_service(pki, dead_port, "TIMEOUTconnect = 2\n"))
    with tls_connect(proc.port("tls"), pki.ca) as conn:
        conn.settimeout(5)
        with _closed():
            assert conn.recv(10) == b""
    log = proc.wait_for_log(r"Connection reset: 0 byte")
    assert f"s_connect: connect 127.0.0.1:{dead_port}: Connection refused (111)" in log
    assert f"No more addresses to connect: 127.0.0.1:{dead_port}: Connection refused" in log
    # The process is still serving: the next client gets the same treatment, no crash.
    with tls_connect(proc.port("tls"), pki.ca) as conn:
        conn.settimeout(5)
        with _closed():
            conn.recv(10)
    proc.wait_for_log("No more addresses to connect", count=2)
    assert proc.process.poll() is None


def test_failover_prio_skips_a_refusing_address(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    placeholder = socket.socket()
    placeholder.bind(("127.0.0.1", 0))
    dead_port = placeholder.getsockname()[1]
    placeholder.close()
    config = (
        "[tls]\naccept = 127.0.0.1:0\n"
        f"connect = 127.0.0.1:{dead_port}\nconnect = 127.0.0.1:{echo_server.port}\n"
        f"cert = {pki.server}\n"
    )
    proc = tunnel(config)
    with tls_connect(proc.port("tls"), pki.ca) as conn:
        conn.sendall(b"abc")
        assert conn.recv(3) == b"abc"
    log = proc.log()
    assert f"connect 127.0.0.1:{dead_port}: Connection refused" in log


def test_failover_rr_spreads_connections(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    first, second = EchoServer(), EchoServer()
    try:
        config = (
            "[tls]\naccept = 127.0.0.1:0\nfailover = rr\n"
            f"connect = 127.0.0.1:{first.port}\nconnect = 127.0.0.1:{second.port}\n"
            f"cert = {pki.server}\n"
        )
        proc = tunnel(config)
        for _ in range(4):
            with tls_connect(proc.port("tls"), pki.ca) as conn:
                conn.sendall(b"x")
                assert conn.recv(1) == b"x"
        assert (first.accepted, second.accepted) == (2, 2)
    finally:
        first.close()
        second.close()


def test_client_vanishing_mid_stream_is_logged_and_others_continue(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    proc = tunnel(server_service(pki, echo_server.port))
    port = proc.port("tls")
    with tls_connect(port, pki.ca) as survivor:
        doomed = tls_connect(port, pki.ca)
        doomed.sendall(b"partial")
        assert doomed.recv(7) == b"partial"
        doomed.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        doomed.close()  # linger 0: the kernel sends RST, not FIN
        proc.wait_for_log("Connection reset")
        survivor.sendall(b"ok")
        assert survivor.recv(2) == b"ok"
    assert "Connection reset by peer" in proc.log()


def test_ipv6_accept_and_connect(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    backend = EchoServer(host="::1")
    try:
        config = f"[v6]\naccept = [::1]:0\nconnect = [::1]:{backend.port}\ncert = {pki.server}\n"
        proc = tunnel(config)
        assert proc.addresses()["v6"][0].startswith("[::1]:")
        with tls_connect(proc.port("v6"), pki.ca, host="::1") as conn:
            conn.sendall(b"six")
            assert conn.recv(3) == b"six"
    finally:
        backend.close()


def test_several_accept_addresses_for_one_service(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    config = server_service(pki, echo_server.port, "accept = 127.0.0.1:0\n")
    proc = tunnel(config)
    assert len(proc.addresses()["tls"]) == 2
    for index in range(2):
        with tls_connect(proc.port("tls", index), pki.ca) as conn:
            conn.sendall(b"n")
            assert conn.recv(1) == b"n"


def test_data_sent_before_the_upstream_is_ready_is_held_not_hoarded(
    tunnel: TunnelFactory,
) -> None:
    """Client mode, an upstream that accepts TCP but never answers the TLS handshake:
    the plaintext client's data is held, and past a small limit reading stops, so the
    client is held back instead of the tunnel buffering without bound."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        proc = tunnel(
            "[plain]\naccept = 127.0.0.1:0\nclient = yes\n"
            f"connect = 127.0.0.1:{silent.getsockname()[1]}\nTIMEOUTbusy = 30\n"
        )
        pid = proc.process.pid
        before = _rss_kb(pid)
        sent = 0
        with socket.create_connection(("127.0.0.1", proc.port("plain"))) as conn:
            conn.settimeout(2)
            block = b"y" * 65536
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                try:
                    sent += conn.send(block)
                except TimeoutError:
                    break
            grown = _rss_kb(pid) - before
        assert sent < 32 << 20, f"the tunnel took {sent} bytes it could not forward"
        assert grown < 16 * 1024, f"tunnel RSS grew {grown} KB while holding data"
    finally:
        silent.close()


def test_when_every_address_fails_one_line_lists_every_attempt(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    dead = []
    for _ in range(2):
        placeholder = socket.socket()
        placeholder.bind(("127.0.0.1", 0))
        dead.append(placeholder.getsockname()[1])
        placeholder.close()
    config = (
        "[tls]\naccept = 127.0.0.1:0\n"
        f"connect = 127.0.0.1:{dead[0]}\nconnect = 127.0.0.1:{dead[1]}\n"
        f"cert = {pki.server}\n"
    )
    proc = tunnel(config)
    with tls_connect(proc.port("tls"), pki.ca) as conn:
        conn.settimeout(5)
        with _closed():
            conn.recv(1)
    log = proc.wait_for_log("No more addresses to connect")
    line = next(x for x in log.splitlines() if "No more addresses to connect" in x)
    assert f"127.0.0.1:{dead[0]}: Connection refused (111)" in line
    assert f"127.0.0.1:{dead[1]}: Connection refused (111)" in line
