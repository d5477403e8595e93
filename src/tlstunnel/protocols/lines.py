"""What the line-based STARTTLS negotiators (SMTP, POP3, IMAP, NNTP) share.

Theory of operation
-------------------
All four protocols are conversations of CRLF-terminated lines, one side talking at a
time.  ``LineNegotiator`` keeps one bounded ``LineBuffer`` per side and a current
*state*; each state names the side it reads from and the method that handles one
line from it (the subclass's ``TABLE``).  A handler returns events whose last one is
the next step, as ``base`` describes.  Three rules live here so every protocol
obeys them the same way:

* **Pipelining.**  A peer may send several lines in one packet.  When the next step
  is ``Receive(side)`` and a whole line from that side is already buffered, it is
  handled at once instead of waiting for bytes that may never come.
* **CVE-2011-0411.**  When the next step is ``StartTLS(side)``, whatever that side
  sent after its last handled line is plaintext pipelined behind the request for
  TLS: it is dropped (and said so in a ``Note``), never handed to anyone.
* **A side closing** fails the negotiation with the current state's description
  ("the server closed the connection while waiting for the reply to STARTTLS").

Two skeletons sit on ``LineNegotiator`` because every mail/news protocol walks them
the same way; what a protocol says and expects stays in its own module, and so does
its state table (each subclass names which of its states play the shared parts):

* ``StartTLSClientMode`` (``client = yes``): connect (``CONNECTING``), read the
  greeting (``GREETING``), talk the protocol's way to TLS, run the handshake on the
  SERVER side (``HANDSHAKE``), then give the local client the server's greeting and
  relay.  Until then the local client has heard nothing, so a failure reaches it as
  the protocol's refusal greeting (``FAILURE``).
* ``StartTLSServerMode`` (``client = no``): connect to the backend, read its
  greeting and pass it on, then answer the client (``COMMAND``) until it asks for
  TLS; the handshake runs on the CLIENT side and the relay starts with nothing of
  the client's plaintext forwarded.  A client that sends more than ``MAX_REFUSED``
  other commands is shown the door.  Until the greeting is passed on a failure
  reaches the client as ``FAILURE``; after it, each failure is answered by the line
  at hand.

The reply readers below turn lines into replies: ``NumericReply`` for SMTP's and
NNTP's ``NNN text`` (SMTP's ``NNN-`` continuation lines included) and
``DotBlock`` for the ``.``-terminated lists of POP3 ``CAPA`` and NNTP
``CAPABILITIES``.  Both are bounded: a reply of more than ``MAX_REPLY_LINES`` lines
is a broken peer.  ``quote`` shows a peer's line in a log line, shortened and with
control characters escaped, so a hostile peer cannot forge log lines.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

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

# A multi-line reply or capability list longer than this is not a mail server talking.
MAX_REPLY_LINES = 100
# Commands a client may send before asking for TLS (server mode) before it is shown
# the door.
MAX_REFUSED = 10
# How much of a peer's line a log line shows.
QUOTE_LIMIT = 100

CRLF = b"\r\n"


def quote(line: bytes, limit: int = QUOTE_LIMIT) -> str:
    """``line`` for a log: line end stripped, quoted, non-printable bytes as ``\\xNN``,
    cut to ``limit`` characters with ``...``."""
    text = line.rstrip(b"\r\n").decode("latin-1")
    shown = "".join(ch if " " <= ch <= "~" else f"\\x{ord(ch):02x}" for ch in text)
    if len(shown) > limit:
        shown = shown[:limit] + "..."
    return f"'{shown}'"


def strip_eol(line: bytes) -> bytes:
    return line.rstrip(b"\r\n")


def first_word(line: bytes) -> bytes:
    """The line's first space-separated word, upper-cased (a command or keyword)."""
    words = strip_eol(line).split(None, 1)
    return words[0].upper() if words else b""


@dataclass(slots=True)
class NumericReply:
    """An SMTP/NNTP reply: ``NNN text`` lines, SMTP's continuations as ``NNN-text``.

    ``feed`` takes one line at a time and returns True once the reply is complete.
    ``multiline`` False (NNTP) takes the first line as the whole reply."""

    what: str  # "the reply to EHLO": for error messages
    multiline: bool = True
    code: int = 0
    lines: list[bytes] = field(default_factory=list)  # each with its line end stripped

    def feed(self, line: bytes) -> bool:
        text = strip_eol(line)
        head = text[:3]
        separator = text[3:4]
        if not (head.isdigit() and len(head) == 3 and separator in (b"", b" ", b"-")):
            raise NegotiationError(f"{self.what} is not a reply: {quote(line)}")
        code = int(head)
        if self.lines and code != self.code:
            raise NegotiationError(f"{self.what} changes its code midway: {quote(line)}")
        if len(self.lines) >= MAX_REPLY_LINES:
            raise NegotiationError(f"{self.what} is longer than {MAX_REPLY_LINES} lines")
        self.code = code
        self.lines.append(text)
        return separator != b"-" or not self.multiline

    def texts(self) -> list[bytes]:
        """The text of each line, code and separator removed."""
        return [line[4:] for line in self.lines]

    def shown(self) -> str:
        """The reply for a log line: its last line, which carries the verdict."""
        return quote(self.lines[-1]) if self.lines else "''"

    def raw(self) -> bytes:
        return b"".join(line + CRLF for line in self.lines)


@dataclass(slots=True)
class DotBlock:
    """The lines of a ``.``-terminated block (RFC 1939 / RFC 3977), dot-unstuffed."""

    what: str
    lines: list[bytes] = field(default_factory=list)

    def feed(self, line: bytes) -> bool:
        text = strip_eol(line)
        if text == b".":
            return True
        if len(self.lines) >= MAX_REPLY_LINES:
            raise NegotiationError(f"{self.what} is longer than {MAX_REPLY_LINES} lines")
        self.lines.append(text[1:] if text.startswith(b"..") else text)
        return False

    def keywords(self) -> set[bytes]:
        return {first_word(line) for line in self.lines}


# A state's handler: an unbound method of the subclass, called with one line.
LineHandler = Callable[[Any, bytes], list[Event]]


class LineNegotiator(Negotiator):
    """Base class: a state machine fed one line at a time from the side it waits on.

    Subclasses define ``State`` (an enum whose values describe the wait, for error
    messages), ``TABLE`` mapping each reading state to ``(side, handler)``, and
    ``start``/``on_connected``/``on_tls``.  Handlers and those calls return events
    through ``expect``/``start_tls``/``done``/``fail`` so the rules above apply.

    ``client_notice`` is what the accepted client is told when the negotiation fails
    (a protocol-correct error line, fixed text: a server's words are logged, never
    passed on); None while nothing fits.
    """

    TABLE: ClassVar[Mapping[enum.Enum, tuple[Side, LineHandler]]]

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.buffers = {side: LineBuffer(self.max_line) for side in Side}
        self.state: enum.Enum | None = None
        self.client_notice: bytes | None = None

    # -- steps for subclasses ------------------------------------------------------------

    def expect(self, state: enum.Enum, *before: Event) -> list[Event]:
        """Go to ``state`` and read its side (handling a buffered line at once)."""
        self.state = state
        side, _handler = self.TABLE[state]
        return [*before, Receive(side)]

    def start_tls(self, side: Side, state: enum.Enum, *before: Event) -> list[Event]:
        """Start TLS on ``side``; what it sent past its request is dropped here."""
        self.state = state
        events = list(before)
        dropped = len(self.buffers[side].rest())
        if dropped:
            events.append(
                Note(
                    4,
                    f"{dropped} byte(s) of plaintext the {side.value} sent after the "
                    "request for TLS were discarded (CVE-2011-0411)",
                )
            )
        events.append(StartTLS(side))
        return events

    def done(self, *before: Event) -> list[Event]:
        """Relay from now on; bytes buffered past the last message go on (only bytes
        read inside TLS or from the plaintext side can be left here: the TLS side's
        plaintext was dropped by ``start_tls``)."""
        return [
            *before,
            Done(
                to_server=self.buffers[Side.CLIENT].rest(),
                to_client=self.buffers[Side.SERVER].rest(),
            ),
        ]

    def fail(self, reason: str, *before: Event) -> list[Event]:
        """Give up; the client gets ``client_notice`` after ``before``."""
        notice = [Send(Side.CLIENT, self.client_notice)] if self.client_notice else []
        return [*before, *notice, Failed(reason)]

    def describe_state(self) -> str:
        return str(self.state.value) if self.state is not None else "negotiating"

    # -- hooks for subclasses -------------------------------------------------------------

    def on_connected(self) -> list[Event]:
        """The SERVER side is up."""
        raise NotImplementedError

    def on_tls(self, side: Side) -> list[Event]:
        """The handshake on ``side`` succeeded."""
        raise NotImplementedError

    # -- what the driver calls -------------------------------------------------------------

    def connected(self, error: str | None) -> list[Event]:
        if error is not None:
            return [Failed(error)]
        return self.pump(self.on_connected())

    def tls_started(self, side: Side) -> list[Event]:
        return self.pump(self.on_tls(side))

    # Every entry point turns a broken peer (NegotiationError) into ``fail``, so the
    # client hears ``client_notice`` whatever went wrong.

    def received(self, side: Side, data: bytes) -> list[Event]:
        entry = self.TABLE.get(self.state) if self.state is not None else None
        if entry is None or entry[0] is not side:
            return [Failed(f"unexpected data from the {side.value} while {self.describe_state()}")]
        if not data:
            return self.closed(side)
        self.buffers[side].feed(data)
        return self.pump([Receive(side)])

    def closed(self, side: Side) -> list[Event]:
        """``side`` closed before the negotiation was over."""
        return self.fail(f"the {side.value} closed the connection while {self.describe_state()}")

    def pump(self, events: list[Event]) -> list[Event]:
        """Hand buffered whole lines to handlers for as long as the next step is a
        ``Receive`` from a side that already has one."""
        out: list[Event] = []
        try:
            return self._pump(events, out)
        except NegotiationError as exc:
            return out + self.fail(str(exc))

    def _pump(self, events: list[Event], out: list[Event]) -> list[Event]:
        while True:
            step = events[-1]
            entry = self.TABLE.get(self.state) if self.state is not None else None
            if not isinstance(step, Receive) or entry is None:
                return out + events
            line = self.buffers[step.side].next_line()
            if line is None:
                return out + events
            if len(line) > self.max_line:
                raise NegotiationError(f"a line longer than {self.max_line} bytes")
            out.extend(events[:-1])
            events = entry[1](self, line)


def _lines(*lines: bytes) -> bytes:
    return b"".join(line + CRLF for line in lines)


class _GreetedNegotiator(LineNegotiator):
    """What both skeletons start with: connect to the server, read its greeting.

    A subclass names its own states for ``CONNECTING``, ``GREETING`` and
    ``HANDSHAKE`` and gives ``FAILURE``, what the accepted client is told when the
    negotiation fails before it heard anything else (fixed text, see
    ``LineNegotiator``)."""

    CONNECTING: ClassVar[enum.Enum]
    GREETING: ClassVar[enum.Enum]
    HANDSHAKE: ClassVar[enum.Enum]
    FAILURE: ClassVar[bytes]

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.client_notice = self.FAILURE

    def start(self) -> list[Event]:
        self.state = self.CONNECTING
        return [Connect()]

    def on_connected(self) -> list[Event]:
        return self.expect(self.GREETING)


class StartTLSClientMode(_GreetedNegotiator):
    """``client = yes``: the tunnel is the protocol's client up to TLS.

    The subclass's greeting handler keeps the server's greeting in ``greeting``; its
    handler for the server's yes to the TLS command calls ``server_agreed``.  Once
    the handshake is done the local client gets ``greeting`` and the relay starts
    (a subclass with more to do inside TLS overrides ``on_tls`` and ends with
    ``welcome``)."""

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.greeting = b""

    def on_tls(self, side: Side) -> list[Event]:
        return self.welcome()

    def welcome(self) -> list[Event]:
        """TLS is up: the local client gets the server's greeting now."""
        return self.done(Send(Side.CLIENT, self.greeting))

    def server_agreed(self) -> list[Event]:
        """The server said yes to the TLS command: the handshake on its side."""
        return self.start_tls(Side.SERVER, self.HANDSHAKE)


class StartTLSServerMode(_GreetedNegotiator):
    """``client = no``: the tunnel is the protocol's server up to TLS.

    The subclass's greeting handler checks the backend's greeting and calls
    ``pass_greeting``; its ``COMMAND`` handler answers each client line with
    ``answer``, ``refuse`` (counted: more than ``MAX_REFUSED`` ends the connection
    with ``TOO_MANY``, and a log line naming ``TLS_COMMAND`` and the client's last
    command, never its arguments) or ``accept_tls``.  After the handshake the relay
    starts: the backend hears the client's first command inside TLS."""

    COMMAND: ClassVar[enum.Enum]
    TLS_COMMAND: ClassVar[str]
    TOO_MANY: ClassVar[bytes]

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.refused = 0

    def on_tls(self, side: Side) -> list[Event]:
        return self.done()

    def pass_greeting(self, greeting: bytes) -> list[Event]:
        """Give the client the backend's ``greeting`` (line ends included)."""
        self.client_notice = None  # from here on a failure is answered by the line at hand
        return self.expect(self.COMMAND, Send(Side.CLIENT, greeting))

    def answer(self, *lines: bytes) -> list[Event]:
        """Say ``lines`` (each without its line end) and wait for the next command."""
        return self.expect(self.COMMAND, Send(Side.CLIENT, _lines(*lines)))

    def refuse(self, command: bytes, *lines: bytes) -> list[Event]:
        """Answer ``command`` (its name, for the log) with ``lines``: not before TLS."""
        self.refused += 1
        if self.refused > MAX_REFUSED:
            return self.fail(
                f"the client sent {MAX_REFUSED} commands other than {self.TLS_COMMAND} "
                f"(the last: {quote(command, 20)})",
                Send(Side.CLIENT, self.TOO_MANY),
            )
        return self.answer(*lines)

    def accept_tls(self, *lines: bytes) -> list[Event]:
        """Say ``lines`` (the yes to the TLS command), then the handshake."""
        return self.start_tls(Side.CLIENT, self.HANDSHAKE, Send(Side.CLIENT, _lines(*lines)))
