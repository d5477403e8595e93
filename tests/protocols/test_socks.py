"""protocol = socks: the negotiators on their own, fuzzed, and end to end.

Server mode is stunnel's SOCKS VPN: curl speaks SOCKS to a plain client-mode tunnel
(``client = yes`` without a protocol: stunnel4 or tlstunnel) which carries it over TLS
to the server-mode socks service, which connects to an HTTP server on loopback::

    curl --socks5 ... -> [client = yes] -TLS-> [protocol = socks] -> HTTP server

Client mode asks microsocks (a real SOCKS 5 server, with and without username and
password) for a TLS echo server.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import TunnelFactory
from tests.protocols.proxy_servers import HTTPServer, MicroSocks, TLSEchoServer
from tests.support.pki import PKIFiles
from tests.support.tunnel import TunnelProcess, run_tlstunnel
from tlstunnel.protocols import socks_wire as wire
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
from tlstunnel.protocols.socks import SocksClient, SocksServer

FACTS = ConnectionFacts(client_address=("192.0.2.7", 50123))
CLIENT_NAME = "client 192.0.2.7:50123"


def step(events: list[Event]) -> Event:
    return events[-1]


def sent(events: list[Event], side: Side = Side.CLIENT) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Send) and e.side is side)


def notes(events: list[Event]) -> str:
    return "\n".join(e.text for e in events if isinstance(e, Note))


def socks4(host: str, port: int, command: int = 1, user: bytes = b"me") -> bytes:
    try:
        packed = ipaddress.IPv4Address(host).packed
        name = b""
    except ValueError:
        packed, name = b"\0\0\0\x01", host.encode() + b"\0"
    return bytes([4, command]) + struct.pack("!H", port) + packed + user + b"\0" + name


def socks5(host: str, port: int, command: int = 1) -> bytes:
    """A SOCKS 5 request (the greeting comes separately)."""
    return bytes([5, command, 0]) + wire.connect_request(host, port)[3:]


def received(negotiator: SocksServer | SocksClient, side: Side, data: bytes) -> list[Event]:
    """As the driver calls it: a NegotiationError becomes Failed."""
    try:
        return negotiator.received(side, data)
    except NegotiationError as exc:
        return [Failed(str(exc))]


def server(*allow: str) -> tuple[SocksServer, list[Event]]:
    negotiator = SocksServer(
        ProtocolSettings(name="socks", client_mode=False, socks_allow=allow), FACTS
    )
    assert negotiator.start() == [StartTLS(Side.CLIENT)]
    return negotiator, negotiator.tls_started(Side.CLIENT)


def ask(data: bytes, *allow: str) -> tuple[SocksServer, list[Event]]:
    negotiator, events = server(*allow)
    assert events == [Receive(Side.CLIENT)]
    return negotiator, received(negotiator, Side.CLIENT, data)


# --- server mode, no network -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "host", "port", "version"),
    [
        (socks4("192.0.2.9", 80), "192.0.2.9", 80, 4),
        (socks4("www.example.com", 443), "www.example.com", 443, 4),
        (b"\x05\x01\x00" + socks5("192.0.2.9", 80), "192.0.2.9", 80, 5),
        (b"\x05\x02\x02\x00" + socks5("2001:db8::9", 8080), "2001:db8::9", 8080, 5),
        (b"\x05\x01\x00" + socks5("www.example.com", 443), "www.example.com", 443, 5),
    ],
)
def test_server_connects_where_the_request_says(
    request_bytes: bytes, host: str, port: int, version: int
) -> None:
    negotiator, events = ask(request_bytes)
    connect = step(events)
    assert isinstance(connect, Connect)
    assert (connect.host, connect.port) == (host, port)
    assert f"SOCKS{version} request from {CLIENT_NAME} to" in notes(events)
    if version == 5:
        assert sent(events) == b"\x05\x00"  # no authentication
    events = negotiator.connected(None)
    expected = wire.socks4_reply(0x5A) if version == 4 else wire.socks5_reply(0)
    assert sent(events) == expected
    assert step(events) == Done()


def test_server_reads_a_request_byte_by_byte() -> None:
    negotiator, events = server()
    data = b"\x05\x01\x00" + socks5("www.example.com", 443)
    for byte in data[:-1]:
        events = negotiator.received(Side.CLIENT, bytes([byte]))
        assert step(events) == Receive(Side.CLIENT)
    assert isinstance(step(negotiator.received(Side.CLIENT, data[-1:])), Connect)


def test_server_hands_optimistic_data_to_the_destination() -> None:
    negotiator, _ = ask(socks4("192.0.2.9", 80) + b"GET / HTTP/1.0\r\n\r\n")
    assert step(negotiator.connected(None)) == Done(to_server=b"GET / HTTP/1.0\r\n\r\n")


@pytest.mark.parametrize(
    ("request_bytes", "reply", "reason"),
    [
        (socks4("192.0.2.9", 80, command=2), wire.socks4_reply(0x5B), "command 2"),
        (
            b"\x05\x01\x00" + socks5("192.0.2.9", 80, command=2),
            b"\x05\x00" + wire.socks5_reply(0x07),
            "command 2",
        ),
        (
            b"\x05\x01\x00\x05\x01\x00\x09",
            b"\x05\x00" + wire.socks5_reply(0x08),
            "address type 9",
        ),
        (b"\x05\x01\x02", b"\x05\xff", "offers no SOCKS 5 method we accept"),
        (
            b"\x05\x01\x00\x05\x01\x00\x03\x04a b\x00\x00\x50",
            b"\x05\x00" + wire.socks5_reply(0x01),
            "names no valid host",
        ),
        (socks4("192.0.2.9", 0), wire.socks4_reply(0x5B), "port 0"),
    ],
)
def test_server_answers_what_it_will_not_do(
    request_bytes: bytes, reply: bytes, reason: str
) -> None:
    _, events = ask(request_bytes)
    assert sent(events) == reply
    failed = step(events)
    assert isinstance(failed, Failed) and reason in failed.reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\n", "does not speak SOCKS (first byte 0x47)"),
        (b"", "closed the connection"),
        (b"\x04\x01\x00\x50\xc0\x00\x02\x09" + b"u" * 300, "user id longer than 255"),
        (b"\x05\x01\x00\x04", "not a SOCKS 5 request"),
    ],
)
def test_server_fails_on_garbage(data: bytes, reason: str) -> None:
    _, events = ask(data)
    failed = step(events)
    assert isinstance(failed, Failed) and reason in failed.reason


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("127.0.0.2:80: Connection refused (111)", 0x05),
        ("h:80: cannot resolve: [Errno -2] Name or service not known", 0x04),
        ("10.0.0.1:80: Network is unreachable", 0x03),
        ("10.0.0.1:80: TIMEOUTconnect exceeded", 0x06),
        ("something else", 0x01),
    ],
)
def test_server_reports_connect_failures_in_socks5_terms(error: str, code: int) -> None:
    negotiator, _ = ask(b"\x05\x01\x00" + socks5("192.0.2.9", 80))
    events = negotiator.connected(error)
    assert sent(events) == wire.socks5_reply(code)
    assert step(events) == Failed(
        f"SOCKS5 request from {CLIENT_NAME} to 192.0.2.9:80 failed: {error}"
    )


@pytest.mark.parametrize(
    ("target", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),  # ATYP 4 literal carrying IPv4 loopback
        ("::1", "::1"),
        ("0.0.0.0", "0.0.0.0"),
        ("169.254.169.254", "169.254.169.254"),
        ("fe80::1", "fe80::1%1"),
        ("evil.example", "127.0.0.5"),  # a name that resolves to loopback
    ],
)
def test_server_refuses_local_destinations(target: str, address: str) -> None:
    for version, request, refusal in (
        (5, b"\x05\x01\x00" + socks5(target, 22), b"\x05\x00" + wire.socks5_reply(0x02)),
        (4, socks4(target, 22), wire.socks4_reply(0x5B)),
    ):
        if version == 4 and ":" in target:
            continue
        negotiator, events = ask(request)
        connect = step(events)
        assert isinstance(connect, Connect) and connect.refuse_address is not None
        reason = connect.refuse_address(address)
        assert reason is not None
        events = negotiator.connected(reason)  # what service.py reports when all refused
        assert sent(events).endswith(refusal[-10:] if version == 5 else refusal)
        failed = step(events)
        assert isinstance(failed, Failed)
        assert f"SOCKS{version} request from {CLIENT_NAME} to " in failed.reason
        assert "refused: " in failed.reason and "socksAllow" in failed.reason


def test_server_socks_allow_permits_chosen_networks() -> None:
    _, events = ask(b"\x05\x01\x00" + socks5("localhost", 22), "127.0.0.1/32", "::1/128")
    connect = step(events)
    assert isinstance(connect, Connect) and connect.refuse_address is not None
    assert connect.refuse_address("127.0.0.1") is None
    assert connect.refuse_address("::ffff:127.0.0.1") is None
    assert connect.refuse_address("::1") is None
    assert connect.refuse_address("127.0.0.2") is not None


def test_server_allows_other_hosts() -> None:
    _, events = ask(socks4("192.0.2.200", 80))
    connect = step(events)
    assert isinstance(connect, Connect) and connect.refuse_address is not None
    assert connect.refuse_address("192.0.2.200") is None
    assert connect.refuse_address("2001:db8::200") is None


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1200), st.lists(st.integers(1, 300), max_size=20))
def test_fuzz_server(data: bytes, cuts: list[int]) -> None:
    negotiator, _ = server()
    position = 0
    for size in [*cuts, len(data) + 1]:
        chunk, position = data[position : position + size], position + size
        if not chunk:
            return
        events = negotiator.received(Side.CLIENT, chunk)
        assert isinstance(step(events), Receive | Connect | Failed)
        assert len(negotiator.buffer) <= 4096
        if not isinstance(step(events), Receive):
            return


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([4, 5]), st.binary(max_size=600))
def test_fuzz_wire_parsers(version: int, data: bytes) -> None:
    """Each parser on arbitrary bytes: a message, None, or NegotiationError."""
    data = bytes([version]) + data
    parsers = (
        wire.parse_socks4_request,
        wire.parse_greeting,
        wire.parse_socks5_request,
        wire.parse_socks5_reply,
        wire.parse_method_choice,
        wire.parse_password_reply,
    )
    for parser in parsers:
        try:
            result = parser(data)
        except NegotiationError:
            continue
        assert result is None or 0 < result[1] <= len(data)


# --- client mode, no network -------------------------------------------------------------------


def socks_client(**kwargs: object) -> tuple[SocksClient, list[Event]]:
    values: dict[str, object] = {"host": "www.example.com", "port": 443}
    values.update(kwargs)
    negotiator = SocksClient(
        ProtocolSettings(name="socks", client_mode=True, **values),  # type: ignore[arg-type]
        FACTS,
    )
    assert negotiator.start() == [Connect()]
    return negotiator, negotiator.connected(None)


def test_client_asks_for_protocol_host_then_starts_tls() -> None:
    negotiator, events = socks_client()
    assert sent(events, Side.SERVER) == b"\x05\x01\x00"
    events = negotiator.received(Side.SERVER, b"\x05\x00")
    assert sent(events, Side.SERVER) == b"\x05\x01\x00\x03\x0fwww.example.com\x01\xbb"
    events = negotiator.received(Side.SERVER, wire.socks5_reply(0)[:5])
    assert step(events) == Receive(Side.SERVER)
    events = negotiator.received(Side.SERVER, wire.socks5_reply(0)[5:])
    assert step(events) == StartTLS(Side.SERVER)
    assert negotiator.tls_started(Side.SERVER) == [Done()]


def test_client_authenticates_with_username_and_password() -> None:
    negotiator, events = socks_client(username="user", password="pw", host="2001:db8::1")
    assert sent(events, Side.SERVER) == b"\x05\x02\x00\x02"
    events = negotiator.received(Side.SERVER, b"\x05\x02")
    assert sent(events, Side.SERVER) == b"\x01\x04user\x02pw"
    events = negotiator.received(Side.SERVER, b"\x01\x00")
    assert (
        sent(events, Side.SERVER)
        == b"\x05\x01\x00\x04" + bytes(ipaddress.IPv6Address("2001:db8::1").packed) + b"\x01\xbb"
    )


def test_client_drops_bytes_after_the_reply() -> None:
    """CVE-2011-0411 class: nothing the SOCKS server says before TLS is relayed."""
    negotiator, _ = socks_client()
    events = negotiator.received(Side.SERVER, b"\x05\x00" + wire.socks5_reply(0) + b"INJECT")
    assert step(events) == StartTLS(Side.SERVER)
    assert "6 byte(s) after the SOCKS reply were discarded" in notes(events)
    assert negotiator.tls_started(Side.SERVER) == [Done()]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"\x05\xff", "accepts none of our methods (set protocolUsername"),
        (
            b"\x05\x00" + wire.socks5_reply(0x05),
            "could not connect to www.example.com:443: connection refused",
        ),
        (b"\x05\x00" + wire.socks5_reply(0x02), "connection not allowed by ruleset"),
        (b"\x04\x5a", "not a SOCKS 5 server"),
        (b"\x05\x00\x05\x00\x00\x09", "a SOCKS 5 reply with"),
        (b"", "the SOCKS server closed the connection"),
        (b"\x05\x02", "chose a method we did not offer"),
    ],
)
def test_client_failures(answer: bytes, reason: str) -> None:
    negotiator, _ = socks_client()
    failed = step(received(negotiator, Side.SERVER, answer))
    assert isinstance(failed, Failed) and reason in failed.reason, failed


def test_client_wrong_password() -> None:
    negotiator, _ = socks_client(username="u", password="p")
    failed = step(negotiator.received(Side.SERVER, b"\x05\x02\x01\x01"))
    assert failed == Failed("the SOCKS server refused protocolUsername/protocolPassword")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(1, 100), max_size=20), st.booleans())
def test_fuzz_client(data: bytes, cuts: list[int], with_password: bool) -> None:
    extra = {"username": "u", "password": "p"} if with_password else {}
    negotiator, _ = socks_client(**extra)
    position = 0
    for size in [*cuts, len(data) + 1]:
        chunk, position = data[position : position + size], position + size
        if not chunk:
            return
        try:
            events = negotiator.received(Side.SERVER, chunk)
        except NegotiationError:
            return  # the driver turns this into Failed
        assert isinstance(step(events), Receive | StartTLS | Failed)
        assert len(negotiator.buffer) <= 4096
        if not isinstance(step(events), Receive):
            return


# --- end to end ---------------------------------------------------------------------------------

CURL = shutil.which("curl") or "curl"


@pytest.fixture(scope="module")
def http_server() -> Iterator[HTTPServer]:
    served = HTTPServer()
    yield served
    served.close()


@pytest.fixture
def fresh_http_server() -> Iterator[HTTPServer]:
    served = HTTPServer()
    yield served
    served.close()


def socks_server_config(pki: PKIFiles, extra: str = "") -> str:
    return f"[socks]\naccept = 127.0.0.1:0\ncert = {pki.server}\nprotocol = socks\n{extra}"


def vpn_client(tunnel: TunnelFactory, pki: PKIFiles, socks_port: int, program: str) -> int:
    """stunnel's SOCKS VPN client: plain in, TLS out, no protocol."""
    front = tunnel(
        f"[vpn]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{socks_port}\n"
        f"CAfile = {pki.ca}\nverifyChain = yes\n"
        + ("checkHost = localhost\n" if program == "tlstunnel" else ""),
        program=program,
        name=f"vpn-{program}",
    )
    return front.port("vpn")


def curl(option: str, proxy_port: int, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CURL, "-sS", "--max-time", "10", option, f"127.0.0.1:{proxy_port}", url],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.interop
@pytest.mark.parametrize("program", ["tlstunnel", "stunnel4"])
def test_curl_through_the_socks_vpn(
    tunnel: TunnelFactory, pki: PKIFiles, http_server: HTTPServer, program: str
) -> None:
    """Every SOCKS flavour curl speaks, through stunnel4's or our client to our server."""
    socks = tunnel(socks_server_config(pki, "socksAllow = 127.0.0.0/8\n"), name="socks")
    front = vpn_client(tunnel, pki, socks.port("socks"), program)
    for option, host in [
        ("--socks4", "127.0.0.1"),
        ("--socks4a", "localhost"),
        ("--socks5", "127.0.0.1"),
        ("--socks5-hostname", "localhost"),
    ]:
        result = curl(option, front, f"http://{host}:{http_server.port}/{option[2:]}")
        assert result.stdout == f"hello from /{option[2:]}\n", result.stderr
    log = socks.wait_for_log("Connection closed", count=4)
    for version in ("SOCKS4", "SOCKS5"):
        assert f"socks: {version} request from client 127.0.0.1:" in log


@pytest.mark.interop
def test_curl_to_an_ipv6_destination(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    served = HTTPServer("::1")
    try:
        socks = tunnel(socks_server_config(pki, "socksAllow = ::1/128\n"), name="socks")
        front = vpn_client(tunnel, pki, socks.port("socks"), "tlstunnel")
        result = curl("--socks5", front, f"http://[::1]:{served.port}/six")
        assert result.stdout == "hello from /six\n", result.stderr
    finally:
        served.close()


def assert_refused(
    socks: TunnelProcess, result: subprocess.CompletedProcess[str], served: HTTPServer, why: str
) -> None:
    assert result.returncode != 0 and result.stdout == ""
    log = socks.wait_for_log("Connection reset")
    assert "socks: SOCKS" in log and "from client 127.0.0.1:" in log
    assert why in log
    assert served.connections == 0  # not one connection reached the destination


@pytest.mark.interop
@pytest.mark.parametrize(
    ("option", "host", "why"),
    [
        ("--socks5", "127.0.0.1", "refused: 127.0.0.1 is a loopback address"),
        ("--socks5", "[::ffff:127.0.0.1]", "refused: 127.0.0.1 is a loopback address"),
        ("--socks5-hostname", "localhost", "is a loopback address"),
        ("--socks4", "127.0.0.1", "refused: 127.0.0.1 is a loopback address"),
        ("--socks4a", "localhost", "refused: 127.0.0.1 is a loopback address"),
    ],
)
def test_curl_to_the_tunnel_host_is_refused(  # noqa: PLR0917 (fixtures and parameters)
    tunnel: TunnelFactory,
    pki: PKIFiles,
    fresh_http_server: HTTPServer,
    option: str,
    host: str,
    why: str,
) -> None:
    socks = tunnel(socks_server_config(pki), name="socks")
    front = vpn_client(tunnel, pki, socks.port("socks"), "tlstunnel")
    result = curl(option, front, f"http://{host}:{fresh_http_server.port}/")
    assert_refused(socks, result, fresh_http_server, why)
    if option == "--socks5":
        assert "Connection not allowed by ruleset" in result.stderr or "(2)" in result.stderr


@pytest.mark.interop
def test_socks_allow_is_honoured(
    tunnel: TunnelFactory, pki: PKIFiles, fresh_http_server: HTTPServer
) -> None:
    """socksAllow 127.0.0.2/32 permits that address only: 127.0.0.1 stays refused."""
    socks = tunnel(socks_server_config(pki, "socksAllow = 127.0.0.2/32\n"), name="socks")
    front = vpn_client(tunnel, pki, socks.port("socks"), "tlstunnel")
    result = curl("--socks5", front, f"http://127.0.0.1:{fresh_http_server.port}/")
    assert_refused(socks, result, fresh_http_server, "127.0.0.1 is a loopback address")


@pytest.mark.interop
def test_stunnel4_socks_server_with_our_vpn_client(
    tunnel: TunnelFactory, pki: PKIFiles, fresh_http_server: HTTPServer
) -> None:
    """The reverse pairing: our plain client-mode tunnel in front of stunnel4's server.

    stunnel4 refuses 127.0.0.1 itself, but not the same address written as IPv4-mapped
    IPv6: the request reaches the local HTTP server.  Ours refuses it (see
    test_curl_to_the_tunnel_host_is_refused)."""
    theirs = tunnel(socks_server_config(pki), program="stunnel4", name="stunnel4-socks")
    front = vpn_client(tunnel, pki, theirs.port("socks"), "tlstunnel")
    refused = curl("--socks5", front, f"http://127.0.0.1:{fresh_http_server.port}/s4")
    assert refused.returncode != 0
    assert "SOCKS connection to the IPv4 loopback rejected" in theirs.log()
    mapped = f"http://[::ffff:127.0.0.1]:{fresh_http_server.port}/s4"
    result = curl("--socks5", front, mapped)
    assert result.stdout == "hello from /s4\n", result.stderr
    assert fresh_http_server.connections == 1


# --- client mode: microsocks -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_echo(pki: PKIFiles) -> Iterator[TLSEchoServer]:
    echo = TLSEchoServer(pki.server)
    yield echo
    echo.close()


def socks_client_config(pki: PKIFiles, socks_port: int, target_port: int, extra: str = "") -> str:
    return (
        f"[out]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{socks_port}\n"
        f"protocol = socks\nprotocolHost = localhost:{target_port}\n"
        f"CAfile = {pki.ca}\nverifyChain = yes\ncheckHost = localhost\n{extra}"
    )


def echo(port: int, payload: bytes = b"through microsocks\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        answer = b""
        while len(answer) < len(payload):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.interop
def test_client_mode_through_microsocks(
    tunnel: TunnelFactory, pki: PKIFiles, tls_echo: TLSEchoServer, tmp_path: Path
) -> None:
    proxy = MicroSocks(tmp_path)
    try:
        process = tunnel(socks_client_config(pki, proxy.port, tls_echo.port))
        assert echo(process.port("out")) == b"through microsocks\n"
        log = process.wait_for_log("Connection closed")
        assert f"socks: SOCKS server connected to localhost:{tls_echo.port}" in log
        assert tls_echo.server_names[-1] == "localhost"
    finally:
        proxy.close()


@pytest.mark.interop
def test_client_mode_microsocks_with_password(
    tunnel: TunnelFactory, pki: PKIFiles, tls_echo: TLSEchoServer, tmp_path: Path
) -> None:
    proxy = MicroSocks(tmp_path, user="tunnel", password="s3cret")
    try:
        good = tunnel(
            socks_client_config(
                pki,
                proxy.port,
                tls_echo.port,
                "protocolUsername = tunnel\nprotocolPassword = s3cret\n",
            ),
            name="good",
        )
        assert echo(good.port("out")) == b"through microsocks\n"
        before = len(tls_echo.server_names)
        bad = tunnel(
            socks_client_config(
                pki,
                proxy.port,
                tls_echo.port,
                "protocolUsername = tunnel\nprotocolPassword = nope\n",
            ),
            name="bad",
        )
        assert echo(bad.port("out")) == b""
        log = bad.wait_for_log("Connection reset")
        assert "socks: the SOCKS server refused protocolUsername/protocolPassword" in log
        none = tunnel(socks_client_config(pki, proxy.port, tls_echo.port), name="none")
        assert echo(none.port("out")) == b""
        assert "accepts none of our methods" in none.wait_for_log("Connection reset")
        assert len(tls_echo.server_names) == before
    finally:
        proxy.close()


@pytest.mark.interop
def test_client_mode_target_down(tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path) -> None:
    proxy = MicroSocks(tmp_path)
    try:
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            down = unused.getsockname()[1]
        process = tunnel(socks_client_config(pki, proxy.port, down))
        assert echo(process.port("out")) == b""
        log = process.wait_for_log("Connection reset")
        assert f"socks: the SOCKS server could not connect to localhost:{down}:" in log
    finally:
        proxy.close()


def test_client_mode_through_our_own_socks_server(
    tunnel: TunnelFactory, pki: PKIFiles, tls_echo: TLSEchoServer
) -> None:
    """Our SOCKS 5 client against our server (its TLS first: a plain client in front)."""
    socks = tunnel(socks_server_config(pki, "socksAllow = 127.0.0.1/32\n"), name="socks")
    front = vpn_client(tunnel, pki, socks.port("socks"), "tlstunnel")
    process = tunnel(socks_client_config(pki, front, tls_echo.port), name="client")
    assert echo(process.port("out"), b"own server\n") == b"own server\n"


# --- configuration -------------------------------------------------------------------------------


def check(tmp_path: Path, text: str) -> str:
    path = tmp_path / "t.conf"
    path.write_text(text)
    result = run_tlstunnel("--check", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_config_socks_server_refuses_connect(tmp_path: Path, pki: PKIFiles) -> None:
    out = check(
        tmp_path, f"[s]\naccept = 1080\nconnect = 80\ncert = {pki.server}\nprotocol = socks\n"
    )
    assert "t.conf:3: connect:" in out and "remove connect" in out


def test_config_socks_client_needs_protocol_host(tmp_path: Path) -> None:
    out = check(tmp_path, "[s]\nclient = yes\naccept = 1080\nconnect = 9080\nprotocol = socks\n")
    assert "t.conf:5: protocolHost:" in out
    assert "stunnel ignores protocol = socks in client mode" in out


def test_config_socks_allow_outside_a_server(tmp_path: Path) -> None:
    out = check(
        tmp_path,
        "[s]\nclient = yes\naccept = 1080\nconnect = 9080\nsocksAllow = 10.0.0.0/8\n",
    )
    assert "t.conf:5: socksAllow:" in out


def test_config_socks_server_is_accepted(tmp_path: Path, pki: PKIFiles) -> None:
    path = tmp_path / "ok.conf"
    path.write_text(
        f"[s]\naccept = 127.0.0.1:0\ncert = {pki.server}\nprotocol = socks\n"
        "socksAllow = 127.0.0.1/32\nsocksAllow = ::1\n"
    )
    result = run_tlstunnel("--check", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- examples/socks-vpn.conf -------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "socks-vpn.conf"


def example_config(pki: PKIFiles, server_port: int, allow_loopback: bool) -> str:
    """The example as users copy it, with only ports, paths and the host name changed."""
    text = EXAMPLE.read_text()
    for old, new in [
        ("pid = /run/stunnel/socks-vpn.pid", "pid ="),
        ("accept = 127.0.0.1:1080", "accept = 127.0.0.1:0"),
        ("vpn.example.com:9080", f"localhost:{server_port}"),
        ("accept = 9080", f"accept = 127.0.0.1:{server_port}"),
        ("/etc/stunnel/vpn-ca.pem", str(pki.ca)),
        ("/etc/stunnel/laptop.pem", str(pki.client)),
        ("/etc/stunnel/vpn.example.com.pem", str(pki.server_cert)),
        ("/etc/stunnel/vpn.example.com.key", str(pki.server_key)),
        ("checkHost = vpn.example.com", "checkHost = localhost"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    if allow_loopback:
        text = text.replace(";socksAllow = 127.0.0.1/32", "socksAllow = 127.0.0.1/32")
    return text


def test_example_socks_vpn(tunnel: TunnelFactory, pki: PKIFiles, http_server: HTTPServer) -> None:
    from tests.protocols.proxy_servers import free_port

    process = tunnel(example_config(pki, free_port(), allow_loopback=True), name="example")
    front = process.port("socks-client")
    for option in ("--socks4a", "--socks5-hostname"):
        result = curl(option, front, f"http://127.0.0.1:{http_server.port}/example")
        assert result.stdout == "hello from /example\n", result.stderr


@pytest.mark.interop
def test_example_socks_vpn_under_stunnel4(
    tunnel: TunnelFactory, pki: PKIFiles, fresh_http_server: HTTPServer
) -> None:
    """Real stunnel syntax: stunnel4 runs the same file (it refuses loopback itself)."""
    from tests.protocols.proxy_servers import free_port

    process = tunnel(
        example_config(pki, free_port(), allow_loopback=False), program="stunnel4", name="s4"
    )
    url = f"http://[::ffff:127.0.0.1]:{fresh_http_server.port}/s4"
    result = curl("--socks5", process.port("socks-client"), url)
    assert result.stdout == "hello from /s4\n", result.stderr


def own_address() -> str | None:
    """This host's address towards the outside (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_the_hosts_own_addresses_are_refused() -> None:
    from tlstunnel.protocols.destinations import DestinationPolicy

    policy = DestinationPolicy.from_networks([])
    assert policy.reason_to_refuse("203.0.113.7") is None  # TEST-NET: nobody's
    mine = own_address()
    if mine is None:
        pytest.skip("this machine has no address besides loopback")
    reason = policy.reason_to_refuse(mine)
    assert reason == f"{mine} is an address of this host (socksAllow = NETWORK permits it)"
    assert DestinationPolicy.from_networks([f"{mine}/32"]).reason_to_refuse(mine) is None
