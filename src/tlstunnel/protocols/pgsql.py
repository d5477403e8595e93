"""``protocol = pgsql``: PostgreSQL's SSLRequest, in both modes (as stunnel has).

Theory of operation
-------------------

A PostgreSQL connection starts with the client's *startup packet*: a 4-byte length
(itself included) and a 4-byte code.  Code 80877103 with length 8 is the SSLRequest;
the server answers one byte, ``S`` (TLS follows) or ``N`` (no TLS).  80877104 is the
GSSENCRequest, answered the same way; 80877102 a CancelRequest (length 16);
``major << 16 | minor`` (3.0 = 196608) a StartupMessage carrying user and database.
The client always speaks first, so the first eight bytes tell everything.

Server mode (``client = no``): TLS clients connect to the tunnel, which forwards plain
PostgreSQL to the server.

    client -> tunnel  SSLRequest         tunnel answers S, runs the TLS handshake,
                                         connects to the server and relays
    client -> tunnel  GSSENCRequest      tunnel answers N (as a server without GSSAPI
                                         encryption does) and reads the next packet
    client -> tunnel  StartupMessage     the client did not ask for TLS: it gets a
                                         PostgreSQL ErrorResponse saying this port
                                         needs TLS, and is closed (stunnel drops it
                                         silently; libpq with sslmode=allow retries
                                         with TLS after such an error)
    anything else                        closed with a log line saying what it was

Client mode (``client = yes``): plain clients connect to the tunnel, which speaks TLS
to the server.  The tunnel reads the client's first packet, connects, sends its own
SSLRequest and expects ``S``; ``N`` fails with "the server does not accept TLS".  The
client's packet (usually its StartupMessage) is then relayed inside TLS.  A client
that itself begins with an SSLRequest or GSSENCRequest (libpq's default
sslmode=prefer) is answered ``N`` and goes on in plaintext to the tunnel -- stunnel
would pass the request on inside TLS, where PostgreSQL rejects it.

Plaintext that arrives after the request for TLS and before the handshake is dropped
with a note, never relayed: bytes after a client's SSLRequest (CVE-2021-23214) or
after the server's ``S`` (CVE-2021-23222).

PostgreSQL 17's ``sslnegotiation=direct`` (TLS from the first byte, ALPN
"postgresql") skips the SSLRequest; stunnel's ``pgsql`` is the SSLRequest protocol,
so such a client is told, in the log, to use ``sslnegotiation=postgres`` -- or a
service without ``protocol`` and with ``alpn = postgresql`` (libpq requires that
ALPN for direct TLS).

The states, and the one call each accepts::

    server mode:  READING_STARTUP --received(CLIENT)--> STARTING_TLS --tls_started-->
                  CONNECTING --connected--> Done
    client mode:  READING_STARTUP --received(CLIENT)--> CONNECTING --connected-->
                  AWAITING_ANSWER --received(SERVER)--> STARTING_TLS --tls_started-->
                  Done (the client's packet goes to the server)
"""

from __future__ import annotations

import enum
import struct

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

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST = struct.pack("!II", 8, SSL_REQUEST_CODE)
HEADER_SIZE = 8
# PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10000
# A TLS record carrying a handshake message starts 0x16 0x03.
_TLS_HANDSHAKE_RECORD = 0x16


def error_response(message: str, hint: str, sqlstate: str = "28000") -> bytes:
    """A protocol-3 ErrorResponse with severity FATAL (what the server sends when it
    refuses a connection; 28000 is invalid_authorization_specification, the code of a
    pg_hba.conf refusal)."""
    fields = b"".join(
        kind + text.encode() + b"\0"
        for kind, text in (
            (b"S", "FATAL"),
            (b"V", "FATAL"),
            (b"C", sqlstate),
            (b"M", message),
            (b"H", hint),
        )
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


NEEDS_TLS = error_response(
    "this server accepts only TLS (SSL) connections",
    "Connect with sslmode=require (or prefer).",
)


class Packet(enum.Enum):
    """What the first eight bytes of a connection say it is."""

    SSL_REQUEST = "an SSLRequest"
    GSSENC_REQUEST = "a GSSENCRequest"
    CANCEL_REQUEST = "a CancelRequest"
    STARTUP_MESSAGE = "a StartupMessage"
    DIRECT_TLS = "a TLS ClientHello (sslnegotiation=direct)"
    UNKNOWN = "no PostgreSQL startup packet"


def classify(head: bytes | bytearray) -> tuple[Packet, int]:
    """The kind and length of the packet ``head`` (at least eight bytes) starts."""
    if head[0] == _TLS_HANDSHAKE_RECORD and head[1] == 0x03:
        return Packet.DIRECT_TLS, 0
    length, code = struct.unpack_from("!II", head)
    if length == HEADER_SIZE and code == SSL_REQUEST_CODE:
        return Packet.SSL_REQUEST, length
    if length == HEADER_SIZE and code == GSSENC_REQUEST_CODE:
        return Packet.GSSENC_REQUEST, length
    if length == 16 and code == CANCEL_REQUEST_CODE:
        return Packet.CANCEL_REQUEST, length
    if code >> 16 in (2, 3) and HEADER_SIZE <= length <= MAX_STARTUP_PACKET:
        return Packet.STARTUP_MESSAGE, length
    return Packet.UNKNOWN, length


def startup_user(packet: bytes) -> str | None:
    """The ``user`` parameter of a StartupMessage (``name\\0value\\0...\\0``)."""
    words = packet[HEADER_SIZE:].split(b"\0")
    for name, value in zip(words[::2], words[1::2], strict=False):
        if name == b"user":
            return printable(value, 64)
    return None


def error_text(data: bytes) -> str:
    """The message of an ErrorResponse (``E`` first): protocol 3 (length, then typed
    fields; ``M`` is the message) or the bare text protocol 2 used, which is what
    the postmaster still sends when it cannot start a backend."""
    if len(data) >= 5 and data[1] == 0:
        for field in data[5:].split(b"\0"):
            if field[:1] == b"M":
                return printable(field[1:])
        return ""
    return printable(data[1:].split(b"\0")[0])


def printable(raw: bytes, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else "?" for ch in text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


class State(enum.Enum):
    READING_STARTUP = "reading the client's startup packet"
    STARTING_TLS = "starting TLS"
    CONNECTING = "connecting"
    AWAITING_ANSWER = "awaiting the server's answer to SSLRequest"
    FINISHED = "finished"


class _PgsqlNegotiator(Negotiator):
    """What both modes share: reading the client's first packet, refusing the
    encryption requests the tunnel does not serve, and the state check."""

    # Requests this mode answers with N (once each, as PostgreSQL does).
    refused: frozenset[Packet] = frozenset()

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.state = State.READING_STARTUP
        self._buffer = bytearray()
        self._answered_n: set[Packet] = set()

    def _expect(self, state: State, side: Side | None = None, got: Side | None = None) -> None:
        if self.state is not state or side is not got:
            raise NegotiationError(f"internal: unexpected call while {self.state.value}")

    def _finish(self, step: Failed | Done) -> list[Event]:
        self.state = State.FINISHED
        return [step]

    def start(self) -> list[Event]:
        return [Receive(Side.CLIENT)]

    def received(self, side: Side, data: bytes) -> list[Event]:
        if self.state is not State.READING_STARTUP:
            return self._received_later(side, data)
        self._expect(State.READING_STARTUP, side, Side.CLIENT)
        if not data:
            return self._finish(
                Failed("the client closed the connection before its startup packet")
            )
        self._buffer += data
        events: list[Event] = []
        while len(self._buffer) >= HEADER_SIZE:
            packet, length = classify(self._buffer)
            if packet not in self.refused:
                return events + self._on_packet(packet, length)
            if packet in self._answered_n:
                raise NegotiationError(f"the client sent {packet.value} twice")
            self._answered_n.add(packet)
            del self._buffer[:HEADER_SIZE]
            events += [Note(7, f"answered N to {packet.value}"), Send(Side.CLIENT, b"N")]
        return [*events, Receive(Side.CLIENT)]

    def _on_packet(self, packet: Packet, length: int) -> list[Event]:
        raise NotImplementedError

    def _received_later(self, side: Side, data: bytes) -> list[Event]:
        raise NegotiationError(f"internal: data from the {side.value} while {self.state.value}")


class PgsqlServer(_PgsqlNegotiator):
    """Server mode: answer the client's SSLRequest with ``S`` and accept TLS."""

    refused = frozenset({Packet.GSSENC_REQUEST})

    def _on_packet(self, packet: Packet, length: int) -> list[Event]:
        if packet is Packet.SSL_REQUEST:
            events: list[Event] = []
            extra = len(self._buffer) - HEADER_SIZE
            if extra:
                events.append(
                    Note(4, f"{extra} byte(s) the client sent after its SSLRequest were discarded")
                )
            self._buffer.clear()
            self.state = State.STARTING_TLS
            return [*events, Send(Side.CLIENT, b"S"), StartTLS(Side.CLIENT)]
        if packet is Packet.DIRECT_TLS:
            return self._finish(
                Failed(
                    "the client started TLS directly (sslnegotiation=direct); protocol = "
                    "pgsql expects an SSLRequest: use sslnegotiation=postgres, or a "
                    "service without protocol and with alpn = postgresql"
                )
            )
        if packet is not Packet.STARTUP_MESSAGE:
            return self._finish(Failed(f"the client did not request TLS (it sent {packet.value})"))
        # A plaintext StartupMessage: read it whole (closing with unread data would
        # reset the connection under our answer), then refuse it as PostgreSQL would.
        if len(self._buffer) < length:
            return [Receive(Side.CLIENT)]
        user = startup_user(bytes(self._buffer[:length]))
        self._buffer.clear()
        who = f" (user {user!r})" if user is not None else ""
        return [
            Send(Side.CLIENT, NEEDS_TLS),
            *self._finish(Failed(f"PostgreSQL client did not request TLS{who}, rejecting")),
        ]

    def tls_started(self, side: Side) -> list[Event]:
        self._expect(State.STARTING_TLS, side, Side.CLIENT)
        self.state = State.CONNECTING
        return [Connect()]

    def connected(self, error: str | None) -> list[Event]:
        self._expect(State.CONNECTING)
        return self._finish(Failed(error) if error is not None else Done())


class PgsqlClient(_PgsqlNegotiator):
    """Client mode: send our own SSLRequest to the server and expect ``S``."""

    refused = frozenset({Packet.GSSENC_REQUEST, Packet.SSL_REQUEST})

    def _on_packet(self, packet: Packet, length: int) -> list[Event]:
        # Whatever else the packet is, the server is the judge: it goes inside TLS.
        self.state = State.CONNECTING
        return [Connect()]

    def connected(self, error: str | None) -> list[Event]:
        self._expect(State.CONNECTING)
        if error is not None:
            return self._finish(Failed(error))
        self.state = State.AWAITING_ANSWER
        return [
            Note(7, "Requesting TLS from the PostgreSQL server"),
            Send(Side.SERVER, SSL_REQUEST),
            Receive(Side.SERVER),
        ]

    def _received_later(self, side: Side, data: bytes) -> list[Event]:
        self._expect(State.AWAITING_ANSWER, side, Side.SERVER)
        if not data:
            return self._finish(
                Failed("the server closed the connection instead of answering the SSLRequest")
            )
        answer = data[:1]
        if answer == b"S":
            events: list[Event] = []
            if len(data) > 1:
                events.append(
                    Note(4, f"{len(data) - 1} byte(s) the server sent after its S were discarded")
                )
            self.state = State.STARTING_TLS
            return [*events, StartTLS(Side.SERVER)]
        if answer == b"N":
            return self._finish(Failed("the server does not accept TLS (it answered N)"))
        if answer == b"E":
            said = error_text(data)
            return self._finish(
                Failed(
                    "the server answered the SSLRequest with an error"
                    + (f": {said}" if said else "")
                )
            )
        return self._finish(
            Failed(
                f"the server answered the SSLRequest with {answer!r}, not S or N: "
                "is it a PostgreSQL server?"
            )
        )

    def tls_started(self, side: Side) -> list[Event]:
        self._expect(State.STARTING_TLS, side, Side.SERVER)
        self.state = State.FINISHED
        return [Done(to_server=bytes(self._buffer))]


CLIENT_MODE = PgsqlClient
SERVER_MODE = PgsqlServer
