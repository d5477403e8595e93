"""``protocol = connect``: TLS through an HTTP proxy (RFC 2817 section 5.2, RFC 9110 CONNECT).

Client mode (stunnel's documented mode): the tunnel connects to the proxy named by
``connect`` and sends, in plaintext::

    CONNECT protocolHost HTTP/1.1
    Host: protocolHost
    Proxy-Authorization: Basic base64(protocolUsername:protocolPassword)   (when set)
    protocolHeader lines
    <empty line>

A 2xx answer opens the tunnel: TLS starts with the real server through the proxy.
Anything else (407 authentication required, 502 the target is down, garbage) fails
the connection with a line quoting what the proxy said.  The TLS server name (SNI) is
protocolHost's host, not the proxy's (see ``service.py``).

Server mode (stunnel has it, undocumented): a client (typically another tunnel in
client mode) sends a plaintext CONNECT request; the tunnel connects to the host it
names, answers ``HTTP/1.0 200 OK`` and then runs TLS with the client; the target gets
the plaintext.  stunnel answers 200 before trying to connect and reaches any address;
tlstunnel connects first (so the client hears 502 Bad Gateway when that fails, or
403 Forbidden when the target is refused) and applies the same destination policy as
``protocol = socks``: the tunnel host's own addresses are refused unless a
``socksAllow`` network permits them (``tlstunnel.protocols.destinations``).

Theory of operation: ``_STATES`` names, per state, the one call the driver may make
next.  ``HeadReader`` collects the (bounded) HTTP head.  Bytes after a head are not
forwarded anywhere: after the proxy's 2xx the next thing from it must be TLS records
answering our ClientHello, and after a client's CONNECT its TLS ClientHello should
wait for our 200; either way such bytes are plaintext sent ahead of the TLS request
and are dropped (CVE-2011-0411 class), with a Note.

    client: CONNECTING -> RESPONSE -> TLS -> RELAY
    server: REQUEST -> CONNECTING -> TLS -> RELAY
"""

from __future__ import annotations

import base64
import enum

from tlstunnel import __version__
from tlstunnel.protocols.base import (
    Connect,
    ConnectionFacts,
    Done,
    Event,
    Failed,
    NegotiationError,
    Negotiator,
    Note,
    ProtocolSettings,
    Receive,
    Send,
    Side,
    StartTLS,
)
from tlstunnel.protocols.destinations import DestinationPolicy
from tlstunnel.protocols.http_head import (
    HeadReader,
    join_authority,
    parse_request_line,
    parse_status_line,
    quote,
    split_authority,
)


class State(enum.Enum):
    CONNECTING = "connecting"
    RESPONSE = "reading the proxy's answer"
    REQUEST = "reading the CONNECT request"
    TLS = "waiting for the TLS handshake"
    RELAY = "relaying"
    FAILED = "failed"


# state -> the call the driver may make in it.
_STATES: dict[State, str] = {
    State.CONNECTING: "connected",
    State.RESPONSE: "received",
    State.REQUEST: "received",
    State.TLS: "tls_started",
}


def basic_credentials(username: str, password: str) -> str:
    """The ``Proxy-Authorization`` value for HTTP Basic (RFC 7617, UTF-8)."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def connect_request(settings: ProtocolSettings) -> bytes:
    """The CONNECT request a client-mode service sends to its proxy."""
    if settings.host is None or settings.port is None:
        raise NegotiationError("protocol = connect needs protocolHost = HOST:PORT")
    authority = join_authority(settings.host, settings.port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if settings.username is not None and settings.password is not None:
        lines.append(
            f"Proxy-Authorization: {basic_credentials(settings.username, settings.password)}"
        )
    lines.extend(settings.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


class _ConnectNegotiator(Negotiator):
    state: State

    def _expect(self, call: str) -> None:
        if _STATES.get(self.state) != call:
            raise NegotiationError(f"{call} while {self.state.value}")

    def _fail(self, reason: str) -> list[Event]:
        self.state = State.FAILED
        return [Failed(reason)]

    def _drop_leftover(self, reader: HeadReader, who: str) -> list[Event]:
        leftover = reader.rest()
        if not leftover:
            return []
        return [
            Note(4, f"{len(leftover)} byte(s) the {who} sent after its HTTP head were discarded")
        ]


class ConnectClient(_ConnectNegotiator):
    """Client mode: CONNECT protocolHost through the proxy at ``connect``, then TLS."""

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.state = State.CONNECTING
        self.reader = HeadReader()

    def start(self) -> list[Event]:
        return [Connect()]

    def connected(self, error: str | None) -> list[Event]:
        self._expect("connected")
        if error is not None:
            return self._fail(error)
        self.state = State.RESPONSE
        return [Send(Side.SERVER, connect_request(self.settings)), Receive(Side.SERVER)]

    def received(self, side: Side, data: bytes) -> list[Event]:
        self._expect("received")
        if side is not Side.SERVER:
            raise NegotiationError(f"data from the {side.value} before TLS is up")
        if not data:
            return self._fail("the proxy closed the connection without answering CONNECT")
        try:
            head = self.reader.feed(data)
        except NegotiationError as exc:
            return self._fail(f"the proxy's answer is broken: {exc}")
        if head is None:
            return [Receive(Side.SERVER)]
        try:
            status = parse_status_line(head.first_line)
        except NegotiationError:
            return self._fail(f"the proxy's answer is not HTTP: {quote(head.first_line)}")
        if not 200 <= status.code < 300:
            return self._fail(f"CONNECT request rejected: {quote(head.first_line)}")
        self.state = State.TLS
        return [
            Note(6, f"CONNECT request accepted: {quote(head.first_line)}"),
            *self._drop_leftover(self.reader, "proxy"),
            StartTLS(Side.SERVER),
        ]

    def tls_started(self, side: Side) -> list[Event]:
        self._expect("tls_started")
        self.state = State.RELAY
        return [Done()]


def _reply(status: str) -> bytes:
    return f"HTTP/1.0 {status}\r\nServer: tlstunnel/{__version__}\r\n\r\n".encode("ascii")


class ConnectServer(_ConnectNegotiator):
    """Server mode: a plaintext CONNECT from the client, connect, 200, then TLS."""

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.state = State.REQUEST
        self.reader = HeadReader()
        self.policy = DestinationPolicy.from_networks(settings.socks_allow)
        self.target = ""

    def start(self) -> list[Event]:
        return [Receive(Side.CLIENT)]

    def received(self, side: Side, data: bytes) -> list[Event]:
        self._expect("received")
        if side is not Side.CLIENT:
            raise NegotiationError(f"data from the {side.value} before connecting")
        if not data:
            return self._fail(f"{self._client()} closed the connection before its CONNECT request")
        if not len(self.reader) and not data[:1].isalpha():
            # A request starts with a method name; 0x16 would be a TLS ClientHello.
            return self._refuse(
                "400 Bad Request",
                f"{self._client()} sent no HTTP request (first byte {data[0]:#04x})",
            )
        try:
            head = self.reader.feed(data)
        except NegotiationError as exc:
            return self._refuse("400 Bad Request", f"a broken request from {self._client()}: {exc}")
        if head is None:
            return [Receive(Side.CLIENT)]
        try:
            request = parse_request_line(head.first_line)
        except NegotiationError:
            return self._refuse(
                "400 Bad Request",
                f"{self._client()} sent no HTTP request: {quote(head.first_line)}",
            )
        if request.method != "CONNECT":
            return self._refuse(
                "405 Method Not Allowed",
                f"{self._client()} asked for {request.method}, not CONNECT",
            )
        try:
            host, port = split_authority(request.target)
        except NegotiationError as exc:
            return self._refuse("400 Bad Request", f"{self._client()}: CONNECT target {exc}")
        self.target = join_authority(host, port)
        self.state = State.CONNECTING
        return [
            Note(6, f"CONNECT request from {self._client()} to {self.target}"),
            Connect(host, port, refuse_address=self.policy.reason_to_refuse),
        ]

    def connected(self, error: str | None) -> list[Event]:
        self._expect("connected")
        what = f"CONNECT request from {self._client()} to {self.target}"
        if error is not None:
            if self.policy.refused_everything:
                reasons = "; ".join(dict.fromkeys(self.policy.refusals))
                return self._refuse("403 Forbidden", f"{what} refused: {reasons}")
            return self._refuse("502 Bad Gateway", f"{what} failed: {error}")
        self.state = State.TLS
        return [
            Send(Side.CLIENT, _reply("200 OK")),
            *self._drop_leftover(self.reader, "client"),
            StartTLS(Side.CLIENT),
        ]

    def tls_started(self, side: Side) -> list[Event]:
        self._expect("tls_started")
        self.state = State.RELAY
        return [Done()]

    def _refuse(self, status: str, reason: str) -> list[Event]:
        return [Send(Side.CLIENT, _reply(status)), *self._fail(reason)]

    def _client(self) -> str:
        address = self.facts.client_address
        return f"client {join_authority(*address)}" if address else "the client"


CLIENT_MODE = ConnectClient
SERVER_MODE = ConnectServer
