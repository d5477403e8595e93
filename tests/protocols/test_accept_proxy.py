"""``acceptProxy``: a PROXY header in front of each connection names the real client.

Each test runs a real tlstunnel and talks to it over loopback sockets: a client that
writes a header and then speaks TLS on the same socket, HAProxy with ``send-proxy``
and ``send-proxy-v2``, and stunnel4 with ``protocol = proxy``.  Where the tunnel has
``protocol = proxy`` too, the backend receives a header naming the client the first
header named: the address went through.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TunnelFactory
from tests.protocols.proxy_peers import HAPROXY_DEFAULTS, HAProxy, HeaderBackend, free_port
from tests.support.clients import client_context, tls_connect
from tests.support.pki import PKIFiles
from tests.support.tunnel import TunnelProcess, run_tlstunnel
from tlstunnel.net.accept_proxy import parse_networks, source_allowed, unmapped
from tlstunnel.protocols.proxy_header import (
    TLV,
    Command,
    ProxyHeader,
    encode_v1,
    encode_v2,
    header_for,
)

REAL = ("192.0.2.7", 50123)
ORIGINAL_DESTINATION = ("198.51.100.1", 443)

# --- the pieces, without a network ---------------------------------------------------------


def test_sources() -> None:
    networks = parse_networks(["127.0.0.0/8", "2001:db8::/32"])
    assert source_allowed(("127.0.0.1", 1), networks)
    assert source_allowed(("::ffff:127.0.0.2", 1), networks)
    assert source_allowed(("2001:db8::1", 1), networks)
    assert not source_allowed(("10.0.0.1", 1), networks)
    assert not source_allowed(("::1", 1), networks)
    assert not source_allowed(None, networks)  # a Unix socket peer


def test_unmapped() -> None:
    assert unmapped(("::ffff:192.0.2.7", 5)) == ("192.0.2.7", 5)
    assert unmapped(("2001:db8::1", 5)) == ("2001:db8::1", 5)


# --- a client that writes a header, then speaks TLS on the same socket -------------------------


class HeaderThenTLS:
    """Sends ``prefix`` and the ClientHello in ONE write (so the tunnel must put the
    bytes after the header back), then runs the handshake over memory BIOs."""

    def __init__(self, port: int, ca: Path, prefix: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context(ca).wrap_bio(self._in, self._out, server_hostname="localhost")
        first = True
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                data = self._out.read()
                self.sock.sendall(prefix + data if first else data)
                first = False
                self._fill()
        self._flush()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _flush(self) -> None:
        if self._out.pending:
            self.sock.sendall(self._out.read())

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the tunnel closed the connection")
        self._in.write(data)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def receive(self) -> bytes:
        while True:
            try:
                return self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._fill()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def backend() -> Iterator[HeaderBackend]:
    server = HeaderBackend()
    yield server
    server.close()


def _service(pki: PKIFiles, backend_port: int, extra: str = "", proxy: bool = True) -> str:
    protocol = "protocol = proxy\n" if proxy else ""
    return (
        f"[ap]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{backend_port}\ncert = {pki.server}\n"
        f"acceptProxy = yes\n{protocol}{extra}"
    )


def _exchange(port: int, pki: PKIFiles, prefix: bytes) -> int:
    client = HeaderThenTLS(port, pki.ca, prefix)
    try:
        client.send(b"hello")
        assert client.receive() == b"ok\n"
        return client.port
    finally:
        client.close()


def _accepted(process: TunnelProcess) -> str:
    text = process.wait_for_log(r"accepted connection from")
    return str(re.findall(r"accepted connection from .*", text)[-1])


# --- the header is read, and its client replaces the socket's ----------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_real_client_reaches_the_log_and_the_backend(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend, version: int
) -> None:
    process = tunnel(_service(pki, backend.port))
    header = header_for(REAL, ORIGINAL_DESTINATION, (TLV(0xE0, b"ignored"),))
    prefix = encode_v1(header) if version == 1 else encode_v2(header)
    socket_port = _exchange(process.port("ap"), pki, prefix)
    (received,) = backend.wait()
    assert received == b"PROXY TCP4 192.0.2.7 198.51.100.1 50123 443\r\nhello"
    assert _accepted(process) == (
        f"accepted connection from 192.0.2.7:50123 via PROXY v{version} "
        f"from 127.0.0.1:{socket_port}"
    )


def test_plain_server_mode_relays_after_the_header(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend
) -> None:
    """No protocol: the ClientHello that followed the header starts TLS; the backend
    sees only the client's data."""
    process = tunnel(_service(pki, backend.port, proxy=False))
    _exchange(process.port("ap"), pki, encode_v1(header_for(REAL, ORIGINAL_DESTINATION)))
    assert backend.wait() == [b"hello"]
    assert "from 192.0.2.7:50123 via PROXY v1" in _accepted(process)


def test_ipv6_client_behind_an_ipv4_proxy(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend
) -> None:
    process = tunnel(_service(pki, backend.port))
    prefix = encode_v2(header_for(("2001:db8::7", 1), ("2001:db8::1", 443)))
    _exchange(process.port("ap"), pki, prefix)
    assert backend.wait() == [b"PROXY TCP6 2001:db8::7 2001:db8::1 1 443\r\nhello"]
    assert "from [2001:db8::7]:1 via PROXY v2" in _accepted(process)


@pytest.mark.parametrize(
    ("prefix", "what"),
    [
        (encode_v2(ProxyHeader(command=Command.LOCAL)), "PROXY v2 LOCAL"),
        (b"PROXY UNKNOWN\r\n", "PROXY v1 without addresses"),
    ],
)
def test_health_checks_keep_the_socket_address(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend, prefix: bytes, what: str
) -> None:
    process = tunnel(_service(pki, backend.port))
    port = process.port("ap")
    socket_port = _exchange(port, pki, prefix)
    assert backend.wait() == [
        f"PROXY TCP4 127.0.0.1 127.0.0.1 {socket_port} {port}\r\nhello".encode()
    ]
    assert _accepted(process) == (
        f"accepted connection from 127.0.0.1:{socket_port} ({what}: the socket's address is kept)"
    )


def test_exec_sees_the_real_client(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    config = (
        f"[ap]\naccept = 127.0.0.1:0\nexec = /bin/sh\ncert = {pki.server}\nacceptProxy = yes\n"
        "execArgs = sh -c echo$IFS$REMOTE_HOST$IFS$REMOTE_PORT\n"
    )
    process = tunnel(config)
    client = HeaderThenTLS(process.port("ap"), pki.ca, encode_v1(header_for(REAL, ("10.0.0.1", 1))))
    try:
        assert client.receive() == b"192.0.2.7 50123\n"
    finally:
        client.close()


def test_client_mode_reads_the_header_from_the_plain_client(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend
) -> None:
    """plain client + header → [in] (client mode, acceptProxy) → TLS → [out] → backend:
    [in] reads the header before anything else and logs the client it names."""
    out_port = free_port()
    config = (
        f"[in]\naccept = 127.0.0.1:0\nclient = yes\nconnect = 127.0.0.1:{out_port}\n"
        f"acceptProxy = yes\nacceptProxyFrom = 127.0.0.0/8\nCAfile = {pki.ca}\n"
        "verifyChain = yes\ncheckHost = localhost\n"
        f"[out]\naccept = 127.0.0.1:{out_port}\nconnect = 127.0.0.1:{backend.port}\n"
        f"cert = {pki.server}\n"
    )
    process = tunnel(config)
    with socket.create_connection(("127.0.0.1", process.port("in")), timeout=10) as client:
        client.sendall(encode_v1(header_for(REAL, ORIGINAL_DESTINATION)) + b"hello")
        assert client.recv(100) == b"ok\n"
    assert backend.wait() == [b"hello"]  # the header went no further than [in]
    assert "Service [in] accepted connection from 192.0.2.7:50123 via PROXY v1" in process.log()


# --- refusals: one line in the log, nothing reaches the backend -------------------------------


def _refused(process: TunnelProcess, backend: HeaderBackend, pattern: str) -> str:
    text = process.wait_for_log(pattern)
    process.wait_for_log(r"Connection reset: 0 byte\(s\) sent to TLS, 0 byte\(s\) sent to socket")
    time.sleep(0.1)
    assert backend.connections == 0
    assert "s_connect" not in text
    return text


def _closed_by_tunnel(sock: socket.socket) -> None:
    with contextlib.suppress(ConnectionResetError):  # reset = yes: refusals end with a RST
        assert sock.recv(100) == b""


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "no PROXY header: the connection starts with the text 'GET / HTTP/1.1'",
        ),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "must end with CRLF"),
        (b"PROXY UNKNOWN " + b"a" * 120, "longer than 107 bytes"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff", "the limit is 4096"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x10" + bytes(12) + b"\x01\x00\x09x", "runs past"),
    ],
)
def test_bad_headers_are_refused(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend, data: bytes, reason: str
) -> None:
    process = tunnel(_service(pki, backend.port))
    with socket.create_connection(("127.0.0.1", process.port("ap")), timeout=10) as sock:
        sock.sendall(data)
        _closed_by_tunnel(sock)
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
    text = _refused(process, backend, "refused: PROXY header")
    line = rf"LOG3\[0\]: Service \[ap\]: connection from {peer} refused: PROXY header: .*"
    assert re.search(line + re.escape(reason), text)
    assert "accepted connection" not in text


def test_tls_without_a_header_is_refused(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend
) -> None:
    process = tunnel(_service(pki, backend.port))
    with pytest.raises((ssl.SSLError, OSError)):
        tls_connect(process.port("ap"), pki.ca).close()
    _refused(process, backend, r"refused: PROXY header: no PROXY header: .*a TLS handshake")


def test_a_client_that_closes_first(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend
) -> None:
    process = tunnel(_service(pki, backend.port))
    with socket.create_connection(("127.0.0.1", process.port("ap"))) as sock:
        sock.sendall(b"PROXY TCP4 ")
        sock.shutdown(socket.SHUT_WR)
        _closed_by_tunnel(sock)
    _refused(process, backend, r"PROXY header: the connection closed after 11 byte\(s\)")


def test_the_header_has_one_deadline(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend
) -> None:
    """TIMEOUTbusy bounds the whole header: a peer trickling bytes is cut off on time."""
    process = tunnel(_service(pki, backend.port, "TIMEOUTbusy = 1\n"))
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", process.port("ap")), timeout=5) as sock:
        for byte in b"PROXY TCP4 1.2.3.4":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        _closed_by_tunnel(sock)
    assert time.monotonic() - started < 3
    _refused(process, backend, r"TIMEOUTbusy exceeded: no complete PROXY header within 1 s")


def test_accept_proxy_from_refuses_other_sources(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend
) -> None:
    process = tunnel(_service(pki, backend.port, "acceptProxyFrom = 192.0.2.0/24\n"))
    with socket.create_connection(("127.0.0.1", process.port("ap")), timeout=10) as sock:
        sock.sendall(encode_v1(header_for(REAL, ORIGINAL_DESTINATION)))
        _closed_by_tunnel(sock)
        peer = f"127.0.0.1:{sock.getsockname()[1]}"
    text = _refused(process, backend, "not in acceptProxyFrom")
    assert (
        f"LOG4[0]: Service [ap]: connection from {peer} refused: not in acceptProxyFrom, "
        "so it may not send a PROXY header" in text
    )


def test_accept_proxy_from_admits_listed_sources(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend
) -> None:
    extra = "acceptProxyFrom = 10.0.0.0/8\nacceptProxyFrom = 127.0.0.1\n"
    process = tunnel(_service(pki, backend.port, extra))
    _exchange(process.port("ap"), pki, encode_v1(header_for(REAL, ORIGINAL_DESTINATION)))
    assert backend.wait()[0].startswith(b"PROXY TCP4 192.0.2.7 ")
    assert "acceptProxy without acceptProxyFrom" not in process.log()


def test_anyone_may_send_a_header_says_a_warning(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend
) -> None:
    process = tunnel(_service(pki, backend.port))
    assert (
        "LOG4[ui]: Service [ap]: acceptProxy without acceptProxyFrom: any client that "
        "reaches this port can claim any address in a PROXY header" in process.log()
    )


def test_accept_proxy_from_needs_accept_proxy(tmp_path: Path, pki: PKIFiles) -> None:
    config = tmp_path / "c.conf"
    config.write_text(
        f"[p]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:1\ncert = {pki.server}\n"
        "acceptProxyFrom = 10.0.0.0/8\n"
    )
    result = run_tlstunnel("--check", str(config))
    assert result.returncode == 1
    assert "c.conf:5: acceptProxyFrom: acceptProxyFrom needs acceptProxy = yes" in result.stderr


# --- interop: HAProxy in front (send-proxy, send-proxy-v2) -------------------------------------


@pytest.mark.interop
def test_haproxy_send_proxy_passes_tls_through(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend, tmp_path: Path
) -> None:
    """client --TLS--> haproxy (tcp mode, send-proxy) --v1 + TLS--> tlstunnel --> backend."""
    process = tunnel(_service(pki, backend.port, "acceptProxyFrom = 127.0.0.1/32\n"))
    front = free_port()
    config = HAPROXY_DEFAULTS + (
        f"listen lb\n    mode tcp\n    bind 127.0.0.1:{front}\n"
        f"    server tunnel 127.0.0.1:{process.port('ap')} send-proxy\n"
    )
    haproxy = HAProxy(tmp_path, config, [front])
    try:
        with tls_connect(front, pki.ca) as client:
            client.sendall(b"hello")
            assert client.recv(100) == b"ok\n"
            client_port = client.getsockname()[1]
    finally:
        haproxy.stop()
    (received,) = backend.wait()
    assert received == f"PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {front}\r\nhello".encode()
    assert re.search(
        rf"accepted connection from 127\.0\.0\.1:{client_port} via PROXY v1 from 127\.0\.0\.1:\d+",
        process.log(),
    )


@pytest.mark.interop
def test_haproxy_send_proxy_v2_over_its_own_tls(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend, tmp_path: Path
) -> None:
    """plain client --> haproxy (send-proxy-v2, ssl verify none, sni) --v2 + TLS-->
    tlstunnel --> backend: the v2 header (TLVs included) is parsed and its client kept."""
    process = tunnel(_service(pki, backend.port, "acceptProxyFrom = 127.0.0.0/8\n"))
    front = free_port()
    config = HAPROXY_DEFAULTS + (
        f"listen lb\n    mode tcp\n    bind 127.0.0.1:{front}\n"
        f"    server tunnel 127.0.0.1:{process.port('ap')} send-proxy-v2 "
        "proxy-v2-options unique-id ssl verify none sni str(localhost)\n"
        "    unique-id-format %ci:%cp\n"
    )
    haproxy = HAProxy(tmp_path, config, [front])
    try:
        with socket.create_connection(("127.0.0.1", front), timeout=10) as client:
            client.sendall(b"hello")
            assert client.recv(100) == b"ok\n"
            client_port = client.getsockname()[1]
    finally:
        haproxy.stop()
    (received,) = backend.wait()
    assert received == f"PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {front}\r\nhello".encode()
    assert f"accepted connection from 127.0.0.1:{client_port} via PROXY v2" in process.log()


# --- interop: stunnel4 protocol = proxy in front ------------------------------------------------


@pytest.mark.interop
def test_stunnel4_protocol_proxy_in_front(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend
) -> None:
    """client --TLS--> stunnel4 (protocol = proxy) --v1 + plain--> tlstunnel [in]
    (client mode, acceptProxy) --TLS--> tlstunnel [out] --> backend."""
    out_port, in_port = free_port(), free_port()
    ours = tunnel(
        f"[in]\naccept = 127.0.0.1:{in_port}\nclient = yes\nconnect = 127.0.0.1:{out_port}\n"
        f"acceptProxy = yes\nacceptProxyFrom = 127.0.0.1\nCAfile = {pki.ca}\nverifyChain = yes\n"
        f"checkHost = localhost\n[out]\naccept = 127.0.0.1:{out_port}\n"
        f"connect = 127.0.0.1:{backend.port}\ncert = {pki.server}\n",
        name="ours",
    )
    theirs = tunnel(
        f"[front]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{in_port}\ncert = {pki.server}\n"
        "protocol = proxy\n",
        program="stunnel4",
        name="stunnel4",
    )
    front = theirs.port("front")
    with tls_connect(front, pki.ca) as client:
        client.sendall(b"hello")
        assert client.recv(100) == b"ok\n"
        client_port = client.getsockname()[1]
    assert backend.wait() == [b"hello"]
    assert (
        f"Service [in] accepted connection from 127.0.0.1:{client_port} via PROXY v1" in ours.log()
    )
