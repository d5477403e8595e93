"""``protocol = socks``: a SOCKS 4/4a/5 server inside TLS, and a SOCKS 5 client.

Server mode (stunnel's SOCKS VPN): the client speaks TLS first; inside it, one SOCKS
request names the destination.  The tunnel connects there (no ``connect`` line: the
request is the destination), answers in the request's SOCKS version, and relays.
Only CONNECT is served (BIND and UDP ASSOCIATE get "command not supported"); SOCKS 5
offers only "no authentication", as stunnel does; the SOCKS 4 USERID is ignored.
Destinations on the tunnel host itself are refused unless ``socksAllow`` permits
them (``tlstunnel.protocols.destinations``); stunnel refuses nothing.

Client mode (stunnel ignores ``protocol = socks`` there and just speaks TLS): the
tunnel connects to a SOCKS 5 server (``connect``), asks it for ``protocolHost``
(with RFC 1929 username/password when ``protocolUsername`` is set), then runs TLS
with the destination through it.

Theory of operation: each negotiator is a small state machine; ``_STATES`` lists, for
each state, the one call the driver may make next (anything else is a broken peer or
a driver bug and fails the connection).  Bytes from the side being read gather in a
``LineBuffer`` (used here as a bounded byte buffer) and are parsed by
``tlstunnel.protocols.socks_wire``, which says "need more" by returning None.

    server: TLS -> REQUEST_OR_GREETING -> [SOCKS5: METHOD_SENT -> REQUEST5] -> CONNECTING -> RELAY
    client: CONNECTING -> METHOD -> [AUTH] -> REPLY -> TLS -> RELAY

Bytes a SOCKS client sends after its request (optimistic data) are already inside
TLS and belong to the stream: they go to the destination once connected.  Bytes a
SOCKS server sends after its reply, before our TLS ClientHello, cannot be TLS: they
are dropped when TLS starts (CVE-2011-0411 class).
"""

from __future__ import annotations

import enum

from tlstunnel.protocols import socks_wire as wire
from tlstunnel.protocols.base import (
    Connect,
    ConnectionFacts,
    Done,
    Event,
    Failed,
    LineBuffer,
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
from tlstunnel.protocols.http_head import join_authority

# A SOCKS request is at most ~520 bytes (SOCKS 4a: two 255-byte fields); anything
# bigger is not SOCKS.  Optimistic data after it is bounded by the same limit.
_BUFFER_LIMIT = 4096


class State(enum.Enum):
    TLS = "waiting for the TLS handshake"
    REQUEST_OR_GREETING = "reading the first SOCKS message"
    REQUEST5 = "reading the SOCKS 5 request"
    CONNECTING = "connecting"
    METHOD = "reading the SOCKS server's method choice"
    AUTH = "reading the SOCKS server's authentication answer"
    REPLY = "reading the SOCKS server's reply"
    RELAY = "relaying"
    FAILED = "failed"


# state -> the call the driver may make in it.
_STATES: dict[State, str] = {
    State.TLS: "tls_started",
    State.REQUEST_OR_GREETING: "received",
    State.REQUEST5: "received",
    State.CONNECTING: "connected",
    State.METHOD: "received",
    State.AUTH: "received",
    State.REPLY: "received",
}


class _SocksNegotiator(Negotiator):
    state: State

    def _expect(self, call: str) -> None:
        if _STATES.get(self.state) != call:
            raise NegotiationError(f"{call} while {self.state.value}")


def socks5_code_for(error: str) -> int:
    """The SOCKS 5 reply that best says why connecting failed (``error`` is the
    tunnel's own sentence for it)."""
    text = error.lower()
    if "refused" in text:
        return wire.SOCKS5_CONNECTION_REFUSED
    if "network is unreachable" in text:
        return wire.SOCKS5_NETWORK_UNREACHABLE
    if "unreachable" in text or "resolve" in text or "no address" in text:
        return wire.SOCKS5_HOST_UNREACHABLE
    if "timed out" in text or "timeout" in text:
        return wire.SOCKS5_TTL_EXPIRED
    return wire.SOCKS5_GENERAL_FAILURE


class SocksServer(_SocksNegotiator):
    """Server mode: TLS with the client, then its SOCKS request, then connect."""

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.state = State.TLS
        self.buffer = LineBuffer(_BUFFER_LIMIT)
        self.policy = DestinationPolicy.from_networks(settings.socks_allow)
        self.request: wire.Request | None = None

    def start(self) -> list[Event]:
        return [StartTLS(Side.CLIENT)]

    def tls_started(self, side: Side) -> list[Event]:
        self._expect("tls_started")
        self.state = State.REQUEST_OR_GREETING
        return [Receive(Side.CLIENT)]

    def received(self, side: Side, data: bytes) -> list[Event]:
        self._expect("received")
        if side is not Side.CLIENT:
            raise NegotiationError(f"data from the {side.value} before connecting")
        if not data:
            return self._fail(f"the client closed the connection while {self.state.value}")
        self.buffer.feed(data)
        if len(self.buffer) > _BUFFER_LIMIT:
            return self._fail(f"more than {_BUFFER_LIMIT} bytes before the SOCKS request ended")
        events: list[Event] = []
        pending = self.buffer.take(len(self.buffer)) or b""
        try:
            steps = self._parse(pending, events)
            return [*events, *steps]
        except wire.BadRequest as exc:
            version = wire.SOCKS5 if self.state is State.REQUEST5 else wire.SOCKS4
            reply = wire.socks4_reply(exc.code) if version == 4 else wire.socks5_reply(exc.code)
            return [*events, Send(Side.CLIENT, reply), *self._fail(f"{self._client()}: {exc}")]

    def _parse(self, pending: bytes, events: list[Event]) -> list[Event]:
        """Handle what ``pending`` holds; what to send goes to ``events`` as it is
        decided (so an error reply still follows an earlier method choice)."""
        if self.state is State.REQUEST_OR_GREETING:
            if pending[0] == wire.SOCKS4:
                return self._got_request(wire.parse_socks4_request(pending), pending)
            if pending[0] != wire.SOCKS5:
                return self._fail(
                    f"{self._client()} does not speak SOCKS (first byte {pending[0]:#04x})"
                )
            parsed = wire.parse_greeting(pending)
            if parsed is None:
                return self._wait(pending)
            greeting, used = parsed
            if wire.METHOD_NO_AUTH not in greeting.methods:
                events.append(Send(Side.CLIENT, wire.method_choice(wire.METHOD_NONE_ACCEPTABLE)))
                return self._fail(
                    f"{self._client()} offers no SOCKS 5 method we accept "
                    "(only no-authentication is served)"
                )
            self.state = State.REQUEST5
            events.append(Send(Side.CLIENT, wire.method_choice(wire.METHOD_NO_AUTH)))
            rest = pending[used:]
            return self._parse(rest, events) if rest else [Receive(Side.CLIENT)]
        return self._got_request(wire.parse_socks5_request(pending), pending)

    def _wait(self, pending: bytes) -> list[Event]:
        self.buffer.feed(pending)
        return [Receive(Side.CLIENT)]

    def _got_request(self, parsed: tuple[wire.Request, int] | None, pending: bytes) -> list[Event]:
        if parsed is None:
            return self._wait(pending)
        request, used = parsed
        self.request = request
        self.buffer.feed(pending[used:])  # optimistic data: sent on once connected
        self.state = State.CONNECTING
        return [
            Note(6, f"SOCKS{request.version} request from {self._client()} to {self._target()}"),
            Connect(request.host, request.port, refuse_address=self.policy.reason_to_refuse),
        ]

    def connected(self, error: str | None) -> list[Event]:
        self._expect("connected")
        assert self.request is not None
        version = self.request.version
        if error is None:
            self.state = State.RELAY
            code = wire.SOCKS4_GRANTED if version == 4 else wire.SOCKS5_SUCCEEDED
            reply = wire.socks4_reply(code) if version == 4 else wire.socks5_reply(code)
            return [Send(Side.CLIENT, reply), Done(to_server=self.buffer.rest())]
        if self.policy.refused_everything:
            code5 = wire.SOCKS5_NOT_ALLOWED
            why = f"refused: {'; '.join(dict.fromkeys(self.policy.refusals))}"
        else:
            code5 = socks5_code_for(error)
            why = f"failed: {error}"
        reply = (
            wire.socks4_reply(wire.SOCKS4_REJECTED) if version == 4 else wire.socks5_reply(code5)
        )
        return [
            Send(Side.CLIENT, reply),
            *self._fail(f"SOCKS{version} request from {self._client()} to {self._target()} {why}"),
        ]

    def _fail(self, reason: str) -> list[Event]:
        self.state = State.FAILED
        return [Failed(reason)]

    def _client(self) -> str:
        address = self.facts.client_address
        return f"client {join_authority(*address)}" if address else "the client"

    def _target(self) -> str:
        assert self.request is not None
        return join_authority(self.request.host, self.request.port)


class SocksClient(_SocksNegotiator):
    """Client mode: ask the SOCKS 5 server at ``connect`` for ``protocolHost``."""

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.host = settings.host or ""
        self.port = settings.port or 0
        self.state = State.CONNECTING
        self.buffer = LineBuffer(_BUFFER_LIMIT)
        self.with_password = settings.username is not None

    def start(self) -> list[Event]:
        if not self.host or not self.port:  # the configuration check makes this rare
            return self._fail("protocol = socks in client mode needs protocolHost = HOST:PORT")
        return [Connect()]

    def connected(self, error: str | None) -> list[Event]:
        self._expect("connected")
        if error is not None:
            return self._fail(error)
        self.state = State.METHOD
        return [Send(Side.SERVER, wire.greeting(self.with_password)), Receive(Side.SERVER)]

    def received(self, side: Side, data: bytes) -> list[Event]:
        self._expect("received")
        if side is not Side.SERVER:
            raise NegotiationError(f"data from the {side.value} before TLS is up")
        if not data:
            return self._fail(f"the SOCKS server closed the connection while {self.state.value}")
        self.buffer.feed(data)
        if len(self.buffer) > _BUFFER_LIMIT:
            return self._fail(f"the SOCKS server sent more than {_BUFFER_LIMIT} bytes unasked")
        events: list[Event] = []
        while True:
            pending = self.buffer.take(len(self.buffer)) or b""
            step = self._step(pending, events)
            if step is not None:
                return [*events, step]

    def _step(self, pending: bytes, events: list[Event]) -> Event | None:
        """Handle one message from ``pending`` (adding what to send to ``events``);
        the step to return, or None to handle the next message."""
        parser = {
            State.METHOD: wire.parse_method_choice,
            State.AUTH: wire.parse_password_reply,
            State.REPLY: wire.parse_socks5_reply,
        }[self.state]
        parsed = parser(pending)
        if parsed is None:
            self.buffer.feed(pending)
            return Receive(Side.SERVER)
        value, used = parsed
        self.buffer.feed(pending[used:])
        if self.state is State.METHOD:
            if value == wire.METHOD_USERNAME_PASSWORD and self.with_password:
                self.state = State.AUTH
                username, password = self.settings.username or "", self.settings.password or ""
                events.append(Send(Side.SERVER, wire.password_request(username, password)))
            elif value == wire.METHOD_NO_AUTH:
                self._ask(events)
            else:
                return self._refused_method(value)
        elif self.state is State.AUTH:
            if value != 0:
                return self._fail_step("the SOCKS server refused protocolUsername/protocolPassword")
            self._ask(events)
        else:
            if value != wire.SOCKS5_SUCCEEDED:
                meaning = wire.SOCKS5_MEANINGS.get(value, f"reply code {value:#04x}")
                return self._fail_step(
                    f"the SOCKS server could not connect to {self._target()}: {meaning}"
                )
            self.state = State.TLS
            events.append(Note(6, f"SOCKS server connected to {self._target()}"))
            leftover = self.buffer.rest()
            if leftover:
                events.append(
                    Note(4, f"{len(leftover)} byte(s) after the SOCKS reply were discarded")
                )
            return StartTLS(Side.SERVER)
        return None if len(self.buffer) else Receive(Side.SERVER)

    def _ask(self, events: list[Event]) -> None:
        self.state = State.REPLY
        events.append(Send(Side.SERVER, wire.connect_request(self.host, self.port)))

    def _refused_method(self, method: int) -> Event:
        if method == wire.METHOD_NONE_ACCEPTABLE:
            hint = "" if self.with_password else " (set protocolUsername and protocolPassword?)"
            return self._fail_step(f"the SOCKS server accepts none of our methods{hint}")
        return self._fail_step(f"the SOCKS server chose a method we did not offer ({method})")

    def tls_started(self, side: Side) -> list[Event]:
        self._expect("tls_started")
        self.state = State.RELAY
        return [Done()]

    def _fail(self, reason: str) -> list[Event]:
        return [self._fail_step(reason)]

    def _fail_step(self, reason: str) -> Failed:
        self.state = State.FAILED
        return Failed(reason)

    def _target(self) -> str:
        return join_authority(self.host, self.port)


CLIENT_MODE = SocksClient
SERVER_MODE = SocksServer
