"""protocol = connect: the negotiators on their own, fuzzed, and end to end.

Client mode goes through tinyproxy (a real HTTP proxy, with and without Basic
authentication) to a TLS echo server; server mode is reached by stunnel4's client
mode and by our own.  A scripted proxy on a real socket covers what a real proxy will
not do on demand (echo our headers, send bytes after its 200).
"""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TunnelFactory
from tests.protocols.proxy_servers import ScriptedProxy, TinyProxy, TLSEchoServer
from tests.support.backends import EchoServer
from tests.support.clients import recv_all, tls_connect
from tests.support.pki import PKIFiles
from tests.support.tunnel import run_tlstunnel
from tlstunnel.protocols.base import (
    Connect,
    ConnectionFacts,
    Done,
    Event,
    Failed,
    NegotiationError,
    Note,
    ProtocolSettings,
    Receive,
    Send,
    Side,
    StartTLS,
)
from tlstunnel.protocols.connect import ConnectClient, ConnectServer, connect_request
from tlstunnel.protocols.http_head import (
    HEAD_LIMIT,
    HeadReader,
    parse_status_line,
    split_authority,
)

FACTS = ConnectionFacts(client_address=("192.0.2.7", 50123))


def client_settings(**kwargs: object) -> ProtocolSettings:
    values: dict[str, object] = {"host": "www.example.com", "port": 443}
    values.update(kwargs)
    return ProtocolSettings(name="connect", client_mode=True, **values)  # type: ignore[arg-type]


def server_settings(*allow: str) -> ProtocolSettings:
    return ProtocolSettings(name="connect", client_mode=False, socks_allow=allow)


def step(events: list[Event]) -> Event:
    return events[-1]


def sent(events: list[Event], side: Side) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Send) and e.side is side)


def notes(events: list[Event]) -> str:
    return "\n".join(e.text for e in events if isinstance(e, Note))


def proxy_answers(answer: bytes, **kwargs: object) -> tuple[ConnectClient, list[Event]]:
    negotiator = ConnectClient(client_settings(**kwargs), FACTS)
    assert negotiator.start() == [Connect()]
    events = negotiator.connected(None)
    assert step(events) == Receive(Side.SERVER)
    return negotiator, negotiator.received(Side.SERVER, answer)


# --- client mode, no network ----------------------------------------------------------------


def test_client_request_carries_host_auth_and_headers() -> None:
    settings = client_settings(
        host="2001:db8::1", username="us", password="pa:ss", headers=("X-Foo: bar", "X-Two: 2")
    )
    token = base64.b64encode(b"us:pa:ss").decode()
    assert (
        connect_request(settings)
        == (
            "CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n"
            f"Proxy-Authorization: Basic {token}\r\nX-Foo: bar\r\nX-Two: 2\r\n\r\n"
        ).encode()
    )


def test_client_sends_request_then_starts_tls_on_2xx() -> None:
    negotiator = ConnectClient(client_settings(), FACTS)
    events = negotiator.connected(None)
    assert sent(events, Side.SERVER).startswith(b"CONNECT www.example.com:443 HTTP/1.1\r\n")
    events = negotiator.received(Side.SERVER, b"HTTP/1.0 200 Connection established\r\n")
    assert step(events) == Receive(Side.SERVER)
    events = negotiator.received(Side.SERVER, b"Proxy-agent: x\r\n\r\n")
    assert step(events) == StartTLS(Side.SERVER)
    assert "CONNECT request accepted" in notes(events)
    assert negotiator.tls_started(Side.SERVER) == [Done()]


def test_client_drops_bytes_the_proxy_sends_after_its_answer() -> None:
    """CVE-2011-0411 class: plaintext before our ClientHello is not TLS; never relayed."""
    negotiator, events = proxy_answers(b"HTTP/1.1 200 OK\r\n\r\nINJECTED")
    assert step(events) == StartTLS(Side.SERVER)
    assert "8 byte(s) the proxy sent after its HTTP head were discarded" in notes(events)
    assert negotiator.tls_started(Side.SERVER) == [Done()]  # nothing handed on


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (
            b"HTTP/1.0 407 Proxy Authentication Required\r\nX: y\r\n\r\n",
            "CONNECT request rejected: 'HTTP/1.0 407 Proxy Authentication Required'",
        ),
        (
            b"HTTP/1.1 502 Bad Gateway\r\n\r\n",
            "CONNECT request rejected: 'HTTP/1.1 502 Bad Gateway'",
        ),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "the proxy's answer is not HTTP: 'SSH-2.0-OpenSSH_9.2'"),
        (b"HTTP/1.1 200 OK\x00\r\n\r\n", "control characters"),
        (b"", "the proxy closed the connection without answering CONNECT"),
    ],
)
def test_client_fails_on_refusal_garbage_or_close(answer: bytes, reason: str) -> None:
    _, events = proxy_answers(answer)
    failed = step(events)
    assert isinstance(failed, Failed)
    assert reason in failed.reason


def test_client_refuses_an_endless_head() -> None:
    negotiator, events = proxy_answers(b"HTTP/1.1 200 OK\r\n")
    for _ in range(HEAD_LIMIT // 1000 + 1):
        events = negotiator.received(Side.SERVER, b"X-Pad: " + b"a" * 993 + b"\r\n")
    failed = step(events)
    assert isinstance(failed, Failed)
    assert f"longer than {HEAD_LIMIT} bytes" in failed.reason


def test_client_reports_a_proxy_it_cannot_reach() -> None:
    negotiator = ConnectClient(client_settings(), FACTS)
    assert negotiator.connected("Connection refused") == [Failed("Connection refused")]


def test_client_without_protocol_host_fails_cleanly() -> None:
    negotiator = ConnectClient(client_settings(host=None, port=None), FACTS)
    negotiator.start()
    with pytest.raises(NegotiationError, match="needs protocolHost"):
        negotiator.connected(None)


# --- server mode, no network ----------------------------------------------------------------


def client_asks(request: bytes, *allow: str) -> tuple[ConnectServer, list[Event]]:
    negotiator = ConnectServer(server_settings(*allow), FACTS)
    assert negotiator.start() == [Receive(Side.CLIENT)]
    return negotiator, negotiator.received(Side.CLIENT, request)


def test_server_connects_where_asked_then_answers_200_and_starts_tls() -> None:
    negotiator, events = client_asks(b"CONNECT [2001:db8::5]:8443 HTTP/1.1\r\nHost: x\r\n\r\n")
    connect = step(events)
    assert isinstance(connect, Connect)
    assert (connect.host, connect.port) == ("2001:db8::5", 8443)
    assert "CONNECT request from client 192.0.2.7:50123 to [2001:db8::5]:8443" in notes(events)
    events = negotiator.connected(None)
    assert sent(events, Side.CLIENT).startswith(b"HTTP/1.0 200 OK\r\nServer: tlstunnel/")
    assert step(events) == StartTLS(Side.CLIENT)
    assert negotiator.tls_started(Side.CLIENT) == [Done()]


def test_server_drops_plaintext_pipelined_after_the_request() -> None:
    negotiator, events = client_asks(b"CONNECT 192.0.2.9:443 HTTP/1.1\r\n\r\nSMUGGLED")
    events = negotiator.connected(None)
    assert step(events) == StartTLS(Side.CLIENT)
    assert "8 byte(s) the client sent after its HTTP head were discarded" in notes(events)
    assert negotiator.tls_started(Side.CLIENT) == [Done()]


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"405 Method Not Allowed", "asked for GET, not CONNECT"),
        (b"\x16\x03\x01\x02\x00", b"400 Bad Request", "sent no HTTP request (first byte 0x16)"),
        (b"CONNECT nohost HTTP/1.1\r\n\r\n", b"400 Bad Request", "not HOST:PORT"),
        (b"CONNECT h:99999 HTTP/1.1\r\n\r\n", b"400 Bad Request", "port out of range"),
        (b"CONNECT h:1 FOO\r\n\r\n", b"400 Bad Request", "sent no HTTP request"),
    ],
)
def test_server_answers_a_bad_request_with_an_error(
    request_bytes: bytes, status: bytes, reason: str
) -> None:
    _, events = client_asks(request_bytes)
    assert sent(events, Side.CLIENT).startswith(b"HTTP/1.0 " + status + b"\r\n")
    failed = step(events)
    assert isinstance(failed, Failed)
    assert reason in failed.reason


def test_server_answers_502_when_the_target_is_down() -> None:
    negotiator, events = client_asks(b"CONNECT 192.0.2.9:443 HTTP/1.1\r\n\r\n")
    connect = step(events)
    assert isinstance(connect, Connect) and connect.refuse_address is not None
    assert connect.refuse_address("192.0.2.9") is None
    events = negotiator.connected("192.0.2.9:443: Connection refused (111)")
    assert sent(events, Side.CLIENT).startswith(b"HTTP/1.0 502 Bad Gateway\r\n")
    assert step(events) == Failed(
        "CONNECT request from client 192.0.2.7:50123 to 192.0.2.9:443 failed: "
        "192.0.2.9:443: Connection refused (111)"
    )


@pytest.mark.parametrize("address", ["127.0.0.1", "::ffff:127.0.0.1", "::1", "169.254.169.254"])
def test_server_refuses_local_targets_with_403(address: str) -> None:
    negotiator, events = client_asks(b"CONNECT localhost:22 HTTP/1.1\r\n\r\n")
    connect = step(events)
    assert isinstance(connect, Connect) and connect.refuse_address is not None
    assert connect.refuse_address(address) is not None
    events = negotiator.connected("refused")
    assert sent(events, Side.CLIENT).startswith(b"HTTP/1.0 403 Forbidden\r\n")
    failed = step(events)
    assert isinstance(failed, Failed)
    assert "CONNECT request from client 192.0.2.7:50123 to localhost:22 refused:" in failed.reason


def test_server_socks_allow_permits_a_local_network() -> None:
    _, events = client_asks(b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n", "127.0.0.0/8")
    connect = step(events)
    assert isinstance(connect, Connect) and connect.refuse_address is not None
    assert connect.refuse_address("127.0.0.1") is None
    assert connect.refuse_address("::1") is not None


def test_server_reports_a_client_that_leaves() -> None:
    _, events = client_asks(b"")
    assert isinstance(step(events), Failed)


# --- the HTTP head parser ---------------------------------------------------------------------


def test_head_reader_keeps_bytes_after_the_head() -> None:
    reader = HeadReader()
    assert reader.feed(b"HTTP/1.1 200 OK\r\nA: b\r") is None
    head = reader.feed(b"\n\r\nrest")
    assert head is not None and head.first_line == "HTTP/1.1 200 OK"
    assert head.headers == ("A: b",)
    assert reader.rest() == b"rest"


@pytest.mark.parametrize("authority", ["[::1]:443", "h:0", "h:", ":80", "a:b:80", "[::1]", "h:+80"])
def test_split_authority_is_strict(authority: str) -> None:
    if authority == "[::1]:443":
        assert split_authority(authority) == ("::1", 443)
    else:
        with pytest.raises(NegotiationError):
            split_authority(authority)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40000), st.lists(st.integers(1, 5000), max_size=30))
def test_fuzz_head_reader(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes in arbitrary chunks: a head, None, or NegotiationError, never
    more than the limit buffered while waiting."""
    reader = HeadReader()
    position = 0
    for size in [*cuts, len(data)]:
        chunk, position = data[position : position + size], position + size
        try:
            head = reader.feed(chunk)
        except NegotiationError:
            return
        if head is not None:
            with pytest.raises(NegotiationError):
                parse_status_line(head.first_line + "\x00")
            return
        assert len(reader) <= HEAD_LIMIT
        if position >= len(data):
            return


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000), st.lists(st.integers(1, 600), max_size=20), st.booleans())
def test_fuzz_negotiators(data: bytes, cuts: list[int], server_mode: bool) -> None:
    """Either negotiator fed arbitrary bytes from its peer only ever asks for more,
    goes on (Connect / StartTLS) or fails: no other exception, bounded buffers."""
    negotiator: ConnectServer | ConnectClient
    if server_mode:
        negotiator = ConnectServer(server_settings(), FACTS)
        events: list[Event] = negotiator.start()
        side = Side.CLIENT
    else:
        negotiator = ConnectClient(client_settings(), FACTS)
        negotiator.start()
        events = negotiator.connected(None)
        side = Side.SERVER
    position = 0
    for size in [*cuts, len(data) + 1]:
        chunk, position = data[position : position + size], position + size
        if not chunk:
            break
        events = negotiator.received(side, chunk)
        assert isinstance(step(events), Receive | Connect | StartTLS | Failed)
        assert len(negotiator.reader) <= HEAD_LIMIT + 5000
        if not isinstance(step(events), Receive):
            return


# --- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_echo(pki: PKIFiles) -> Iterator[TLSEchoServer]:
    server = TLSEchoServer(pki.server)
    yield server
    server.close()


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    proxy = TinyProxy(tmp_path_factory.mktemp("tinyproxy"))
    yield proxy
    proxy.close()


@pytest.fixture(scope="module")
def tinyproxy_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    proxy = TinyProxy(tmp_path_factory.mktemp("tinyproxy-auth"), user="tunnel", password="s3cret")
    yield proxy
    proxy.close()


def client_service(pki: PKIFiles, proxy_port: int, target_port: int, extra: str = "") -> str:
    return (
        f"[via-proxy]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{proxy_port}\n"
        f"protocol = connect\nprotocolHost = localhost:{target_port}\n"
        f"CAfile = {pki.ca}\nverifyChain = yes\ncheckHost = localhost\n{extra}"
    )


def echo_through(port: int, payload: bytes = b"ping through the proxy\n") -> bytes:
    """Send ``payload`` and read its echo (no half-close: tinyproxy closes both
    directions at the first EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def closed_at_once(port: int) -> bytes:
    """What the tunnel sent before closing (reset or not) a connection it refused."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"never sent\n")
        try:
            return recv_all(sock)
        except ConnectionResetError:
            return b""


@pytest.mark.interop
def test_client_mode_through_tinyproxy(
    tunnel: TunnelFactory, pki: PKIFiles, tinyproxy: TinyProxy, tls_echo: TLSEchoServer
) -> None:
    process = tunnel(client_service(pki, tinyproxy.port, tls_echo.port))
    assert echo_through(process.port("via-proxy")) == b"ping through the proxy\n"
    log = process.wait_for_log(r"Connection closed")
    assert "CONNECT request accepted: 'HTTP/1.0 200 Connection established'" in log
    assert tls_echo.server_names[-1] == "localhost"  # SNI names protocolHost, not the proxy


@pytest.mark.interop
def test_client_mode_basic_auth(
    tunnel: TunnelFactory, pki: PKIFiles, tinyproxy_auth: TinyProxy, tls_echo: TLSEchoServer
) -> None:
    good = tunnel(
        client_service(
            pki,
            tinyproxy_auth.port,
            tls_echo.port,
            "protocolUsername = tunnel\nprotocolPassword = s3cret\n",
        ),
        name="good",
    )
    assert echo_through(good.port("via-proxy")) == b"ping through the proxy\n"
    before = len(tls_echo.server_names)
    # tinyproxy answers 407 without credentials and 401 to wrong ones.
    for name, extra, status in [
        ("anonymous", "", "HTTP/1.0 407 Proxy Authentication Required"),
        (
            "wrong",
            "protocolUsername = tunnel\nprotocolPassword = wrong\n",
            "HTTP/1.0 401 Unauthorized",
        ),
    ]:
        bad = tunnel(client_service(pki, tinyproxy_auth.port, tls_echo.port, extra), name=name)
        assert closed_at_once(bad.port("via-proxy")) == b""
        log = bad.wait_for_log(r"Connection reset")
        assert f"connect: CONNECT request rejected: '{status}'" in log
    assert len(tls_echo.server_names) == before  # nothing reached the server


@pytest.mark.interop
def test_client_mode_target_down(
    tunnel: TunnelFactory, pki: PKIFiles, tinyproxy: TinyProxy
) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        down = unused.getsockname()[1]
    process = tunnel(client_service(pki, tinyproxy.port, down))
    assert closed_at_once(process.port("via-proxy")) == b""
    log = process.wait_for_log(r"Connection reset")
    assert "connect: CONNECT request rejected: 'HTTP/1.1 500 Unable to connect'" in log


def test_client_mode_sends_protocol_headers_and_drops_injected_bytes(
    tunnel: TunnelFactory, pki: PKIFiles, tls_echo: TLSEchoServer
) -> None:
    proxy = ScriptedProxy(extra=b"")
    try:
        process = tunnel(
            client_service(pki, proxy.port, tls_echo.port, "protocolHeader = X-Trace: 42\n")
        )
        assert echo_through(process.port("via-proxy")) == b"ping through the proxy\n"
        head = proxy.heads[-1]
        assert head.startswith(f"CONNECT localhost:{tls_echo.port} HTTP/1.1\r\n".encode())
        assert b"\r\nX-Trace: 42\r\n" in head
    finally:
        proxy.close()
    evil = ScriptedProxy(extra=b"HTTP/1.1 200 OK\r\n\r\nplaintext")
    try:
        process = tunnel(client_service(pki, evil.port, tls_echo.port), name="evil")
        # The plaintext is discarded, not fed to TLS: the tunnel still works.
        assert echo_through(process.port("via-proxy")) == b"ping through the proxy\n"
        log = process.wait_for_log(r"Connection closed")
        assert "connect: 28 byte(s) the proxy sent after its HTTP head were discarded" in log
    finally:
        evil.close()


def http_connect(port: int, target: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return sock, answer


def server_service(pki: PKIFiles, extra: str = "") -> str:
    return f"[proxy]\naccept = 127.0.0.1:0\ncert = {pki.server}\nprotocol = connect\n{extra}"


def test_server_mode_with_a_real_tls_client(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    process = tunnel(server_service(pki, "socksAllow = 127.0.0.1/32\n"))
    sock, answer = http_connect(process.port("proxy"), f"127.0.0.1:{echo_server.port}")
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
    context = ssl.create_default_context(cafile=str(pki.ca))
    with context.wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(b"inside TLS\n")
        assert tls.recv(100) == b"inside TLS\n"


def test_server_mode_refuses_the_tunnel_host_itself(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    process = tunnel(server_service(pki))
    for target in (f"127.0.0.1:{echo_server.port}", f"localhost:{echo_server.port}"):
        sock, answer = http_connect(process.port("proxy"), target)
        sock.close()
        assert answer.startswith(b"HTTP/1.0 403 Forbidden\r\n")
    log = process.wait_for_log(r"Connection reset", count=2)
    assert (
        "connect: CONNECT request from client 127.0.0.1:" in log
        and f"to 127.0.0.1:{echo_server.port} refused: 127.0.0.1 is a loopback address" in log
    )
    assert f"to localhost:{echo_server.port} refused:" in log
    assert echo_server.accepted == 0


@pytest.mark.interop
def test_interop_stunnel4_client_to_our_connect_server(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    ours = tunnel(server_service(pki, "socksAllow = 127.0.0.0/8\n"), name="ours")
    theirs = tunnel(
        f"[in]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{ours.port('proxy')}\n"
        f"protocol = connect\nprotocolHost = 127.0.0.1:{echo_server.port}\n"
        f"CAfile = {pki.ca}\nverifyChain = yes\n",
        program="stunnel4",
        name="stunnel4",
    )
    assert echo_through(theirs.port("in")) == b"ping through the proxy\n"
    assert "CONNECT request from client 127.0.0.1:" in ours.wait_for_log("Connection closed")


@pytest.mark.interop
def test_interop_our_client_to_stunnel4_connect_server(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    theirs = tunnel(
        f"[proxy]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\ncert = {pki.server}\n"
        "protocol = connect\n",
        program="stunnel4",
        name="stunnel4",
    )
    ours = tunnel(
        f"[in]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{theirs.port('proxy')}\n"
        f"protocol = connect\nprotocolHost = 127.0.0.1:{echo_server.port}\n"
        f"CAfile = {pki.ca}\nverifyChain = yes\ncheckHost = localhost\n",
        name="ours",
    )
    assert echo_through(ours.port("in")) == b"ping through the proxy\n"
    assert "CONNECT request accepted: 'HTTP/1.0 200 OK'" in ours.wait_for_log("Connection closed")


@pytest.mark.interop
def test_interop_same_result_as_stunnel4_through_tinyproxy(
    tunnel: TunnelFactory, pki: PKIFiles, tinyproxy: TinyProxy, tls_echo: TLSEchoServer
) -> None:
    service = client_service(pki, tinyproxy.port, tls_echo.port).replace(
        "checkHost = localhost\n", ""
    )
    theirs = tunnel(service, program="stunnel4", name="stunnel4")
    ours = tunnel(service, name="ours")
    payload = b"x" * 100000
    assert echo_through(theirs.port("via-proxy"), payload) == payload
    assert echo_through(ours.port("via-proxy"), payload) == payload
    assert tls_echo.server_names[-2:] == ["localhost", "localhost"]


# --- configuration --------------------------------------------------------------------------------


def check(tmp_path: Path, text: str) -> str:
    path = tmp_path / "t.conf"
    path.write_text(text)
    result = run_tlstunnel("--check", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_config_client_mode_needs_protocol_host(tmp_path: Path) -> None:
    out = check(tmp_path, "[p]\nclient = yes\naccept = 1\nconnect = 2\nprotocol = connect\n")
    assert "t.conf:5: protocolHost:" in out
    assert "protocol = connect in client mode needs protocolHost = HOST:PORT" in out
    out = check(
        tmp_path,
        "[p]\nclient = yes\naccept = 1\nconnect = 2\nprotocol = connect\nprotocolHost = h\n",
    )
    assert "t.conf:6: protocolHost:" in out


def test_config_refuses_ntlm_and_half_credentials(tmp_path: Path) -> None:
    out = check(
        tmp_path,
        "[p]\nclient = yes\naccept = 1\nconnect = 2\nprotocol = connect\n"
        "protocolHost = h:443\nprotocolAuthentication = ntlm\nprotocolUsername = u\n",
    )
    assert "t.conf:7: protocolAuthentication:" in out and "NTLM is not supported" in out
    assert "t.conf:8: protocolPassword:" in out


def test_config_server_mode_needs_no_connect(tmp_path: Path, pki: PKIFiles) -> None:
    path = tmp_path / "ok.conf"
    path.write_text(f"[p]\naccept = 127.0.0.1:0\ncert = {pki.server}\nprotocol = connect\n")
    result = run_tlstunnel("--check", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_tunnel_waits_for_no_one(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    """A client that opens the connection and says nothing is cut off by TIMEOUTbusy."""
    process = tunnel(server_service(pki, "TIMEOUTbusy = 1\n"))
    start = time.monotonic()
    with (
        socket.create_connection(("127.0.0.1", process.port("proxy")), timeout=10) as sock,
        pytest.raises(ConnectionResetError),
    ):
        recv_all(sock)
    assert time.monotonic() - start < 5
    assert "TIMEOUTbusy exceeded" in process.wait_for_log("Connection reset")


def test_server_mode_tls_client_is_told_to_speak_http(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    process = tunnel(server_service(pki))
    with pytest.raises((ssl.SSLError, OSError)):
        tls_connect(process.port("proxy"), pki.ca).close()
    assert "sent no HTTP request (first byte 0x16)" in process.wait_for_log("Connection reset")


# --- examples/connect-proxy.conf ---------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "connect-proxy.conf"


@pytest.fixture(scope="module")
def example_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyProxy]:
    proxy = TinyProxy(tmp_path_factory.mktemp("tinyproxy-ex"), user="tunnel", password="secret")
    yield proxy
    proxy.close()


@pytest.mark.interop
@pytest.mark.parametrize("program", ["tlstunnel", "stunnel4"])
def test_example_connect_proxy(
    tunnel: TunnelFactory,
    pki: PKIFiles,
    example_proxy: TinyProxy,
    tls_echo: TLSEchoServer,
    program: str,
) -> None:
    """The example as users copy it (ports, paths and host names changed), through
    tinyproxy with Basic authentication, under tlstunnel and stunnel4."""
    text = EXAMPLE.read_text()
    for old, new in [
        ("pid = /run/stunnel/connect-proxy.pid", "pid ="),
        ("accept = 127.0.0.1:8025", "accept = 127.0.0.1:0"),
        ("proxy.office.example:3128", f"127.0.0.1:{example_proxy.port}"),
        ("smtp.example.net:465", f"localhost:{tls_echo.port}"),
        ("/etc/ssl/certs/ca-certificates.crt", str(pki.ca)),
        ("checkHost = smtp.example.net", "checkHost = localhost"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    process = tunnel(text, program=program, name=program)
    assert echo_through(process.port("smtps-via-proxy"), b"EHLO me\r\n") == b"EHLO me\r\n"
