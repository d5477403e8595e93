"""What every negotiator speaks: the sides, the events, the facts, the base class.

A negotiator is the part of ``protocol = NAME`` that talks the application protocol
around the TLS handshake (SMTP's STARTTLS, PostgreSQL's SSLRequest, a SOCKS request,
a PROXY header...).  It is *sans-IO*: it never touches a socket, a timer or asyncio.
The driver (``tlstunnel.net.negotiate``) feeds it what arrived and carries out what it
asks for.  The conversation goes like this:

* the driver calls ``start()``; later ``received(side, data)`` with bytes that arrived
  (``b""`` means that side closed), ``tls_started(side)`` once a handshake it asked for
  succeeded, and ``connected(error)`` once a connection it asked for is up
  (``error`` is None) or failed (``error`` says why, for a person);
* each call returns a list of events: any number of ``Send`` and ``Note`` first, then
  exactly one *step* saying what the negotiator waits for next: ``Receive``,
  ``StartTLS``, ``Connect``, ``Done`` or ``Failed``.

Sides are named from the tunnel's point of view: ``CLIENT`` is the connection the
tunnel accepted, ``SERVER`` the one it opens towards ``connect`` (or the target a
SOCKS/CONNECT request names).  Which side TLS runs on follows the service's mode:
``client = no`` puts TLS on CLIENT, ``client = yes`` on SERVER.

Plaintext a peer sends after asking for TLS (the CVE-2011-0411 class of attack) never
reaches the other side: when a negotiator returns ``StartTLS(side)`` it drops what it
buffered from that side (saying so with a ``Note``), and the driver drops whatever it
had not yet handed over.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field


class Side(enum.Enum):
    CLIENT = "client"  # the accepted connection
    SERVER = "server"  # the connection the tunnel opens


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``data`` to ``side`` (inside TLS if that side already started it)."""

    side: Side
    data: bytes


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the log at ``level`` (syslog numbers: 3 err, 4 warning, 5 notice,
    6 info, 7 debug)."""

    level: int
    text: str


@dataclass(frozen=True, slots=True)
class Receive:
    """Step: wait for bytes from ``side``; they come back through ``received``."""

    side: Side


@dataclass(frozen=True, slots=True)
class StartTLS:
    """Step: run the TLS handshake on ``side`` now; ``tls_started(side)`` follows."""

    side: Side


@dataclass(frozen=True, slots=True)
class Connect:
    """Step: open the SERVER side.  ``host``/``port`` None means the service's
    ``connect`` targets (with failover); otherwise this exact destination (SOCKS and
    CONNECT servers).  ``connected(error)`` follows."""

    host: str | None = None
    port: int | None = None
    # Checked against every address ``host`` resolves to: a reason to refuse that
    # address (SOCKS must not reach the tunnel host's own services), or None.
    refuse_address: Callable[[str], str | None] | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """Step: negotiation is over; relay from now on.  ``to_server``/``to_client`` are
    bytes the negotiator read past its last message that belong to the stream: the
    driver sends them on before relaying."""

    to_server: bytes = b""
    to_client: bytes = b""


@dataclass(frozen=True, slots=True)
class Failed:
    """Step: give up on this connection; ``reason`` is the log line's text."""

    reason: str


Event = Send | Note | Receive | StartTLS | Connect | Done | Failed
Step = Receive | StartTLS | Connect | Done | Failed


# --- what a negotiator knows about its connection ----------------------------------------


@dataclass(slots=True)
class TLSFacts:
    """The TLS session as the handshake left it (for PROXY v2 TLVs, policy...)."""

    version: str = ""  # "TLSv1.3"
    cipher: str = ""  # "TLS_AES_256_GCM_SHA384"
    sni: str | None = None  # what the client asked for (server mode)
    alpn: str | None = None  # the protocol agreed on, if any
    peer_cn: str | None = None  # the verified peer certificate's common name
    peer_cert_der: bytes | None = None


@dataclass(slots=True)
class ConnectionFacts:
    """Filled in by the driver as the connection goes: who is on each end.

    Addresses are ``(host, port)`` with IPv4-mapped IPv6 already turned into IPv4;
    for Unix sockets they are None.  ``client_address`` is the real client's when an
    accepted PROXY header said so (``acceptProxy``).
    """

    client_address: tuple[str, int] | None = None
    local_address: tuple[str, int] | None = None  # where the client connected to
    tls: TLSFacts = field(default_factory=TLSFacts)


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    """The ``protocol*`` options of a service, as written (None when not written)."""

    name: str
    client_mode: bool
    host: str | None = None  # protocolHost
    port: int | None = None  # protocolHost's port, when it had one
    username: str | None = None
    password: str | None = None
    authentication: str | None = None  # protocolAuthentication
    domain: str | None = None  # protocolDomain
    headers: tuple[str, ...] = ()  # protocolHeader lines, "Name: value"
    proxy_version: int = 1  # proxyVersion (protocol = proxy)
    socks_allow: tuple[str, ...] = ()  # socksAllow networks (CIDR text)


class NegotiationError(Exception):
    """Raised inside a negotiator to fail the connection; the message is the reason."""


class Negotiator:
    """Base class: the default answers wait for nothing and fail on surprise.

    Subclasses keep their state in attributes (or a small table of states) and
    override the four calls.  ``settings`` and ``facts`` are given by the driver;
    ``facts`` is updated by it as the connection progresses.
    """

    # The longest line (or message) a negotiator buffers before giving up: a peer
    # that never sends a line end must not grow our memory.
    max_line = 8192

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        self.settings = settings
        self.facts = facts

    @property
    def tls_side(self) -> Side:
        return Side.SERVER if self.settings.client_mode else Side.CLIENT

    def start(self) -> list[Event]:
        raise NotImplementedError

    def received(self, side: Side, data: bytes) -> list[Event]:
        return [Failed(f"unexpected data from the {side.value}")]

    def tls_started(self, side: Side) -> list[Event]:
        return [Done()]

    def connected(self, error: str | None) -> list[Event]:
        if error is not None:
            return [Failed(error)]
        return [Done()]


class LineBuffer:
    """Bytes from one side, handed out a line (``\\n``-terminated) at a time."""

    __slots__ = ("_data", "limit")

    def __init__(self, limit: int = Negotiator.max_line) -> None:
        self._data = bytearray()
        self.limit = limit

    def feed(self, data: bytes) -> None:
        self._data += data

    def next_line(self) -> bytes | None:
        """The next whole line, its line end included; None if none is complete yet.
        Raises ``NegotiationError`` when more than ``limit`` bytes hold no line end."""
        end = self._data.find(b"\n")
        if end < 0:
            if len(self._data) > self.limit:
                raise NegotiationError(f"a line longer than {self.limit} bytes")
            return None
        line = bytes(self._data[: end + 1])
        del self._data[: end + 1]
        return line

    def take(self, count: int) -> bytes | None:
        """Exactly ``count`` bytes, or None if fewer have arrived."""
        if len(self._data) < count:
            return None
        chunk = bytes(self._data[:count])
        del self._data[:count]
        return chunk

    def rest(self) -> bytes:
        """Everything not yet handed out (and forget it)."""
        data = bytes(self._data)
        self._data.clear()
        return data

    def __len__(self) -> int:
        return len(self._data)
