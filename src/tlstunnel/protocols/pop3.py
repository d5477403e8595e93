"""``protocol = pop3``: STLS for POP3 (RFC 2595 section 4, RFC 2449 CAPA), both modes.

Theory of operation
-------------------
**Client mode** (``client = yes``).  The tunnel connects and reads the server's
``+OK`` greeting.  It asks ``CAPA`` (RFC 2449) and requires ``STLS`` in the list; a
server that answers ``CAPA`` with ``-ERR`` predates RFC 2449, and is sent ``STLS``
anyway (stunnel never asks ``CAPA``: it always sends ``STLS``, so both reach TLS
with such a server, but only we explain a server without STLS in its list).  On
``+OK`` to ``STLS`` the handshake runs; then the local client gets the server's
greeting (the APOP timestamp in it intact) and talks through TLS.  Until then it has
heard nothing, so a failure reaches it as a ``-ERR`` greeting.

**Server mode** (``client = no``).  The tunnel connects to the backend, passes its
``+OK`` greeting on, and answers the client itself until ``STLS``: ``CAPA`` lists
just ``STLS`` (RFC 2595 section 4: before TLS the server need offer nothing else),
``QUIT`` ends the connection, ``STLS`` gets ``+OK`` and starts the handshake, anything
else (``USER``, ``PASS``, ``APOP``, ``AUTH``...) gets ``-ERR``, at most
``lines.MAX_REFUSED`` times.  No byte the client sends before TLS reaches the backend,
which is in its AUTHORIZATION state when the client's first command inside TLS
arrives.

Plaintext pipelined behind ``STLS`` is dropped, never forwarded (CVE-2011-0411).
The states are ``ClientMode.TABLE`` and ``ServerMode.TABLE``; the steps every
mail protocol shares (connect, greeting, handshake, the refused-command count) are
``lines.StartTLSClientMode`` and ``lines.StartTLSServerMode``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import ClassVar

from tlstunnel.protocols.base import (
    ConnectionFacts,
    Event,
    NegotiationError,
    ProtocolSettings,
    Send,
    Side,
)
from tlstunnel.protocols.lines import (
    CRLF,
    DotBlock,
    LineHandler,
    StartTLSClientMode,
    StartTLSServerMode,
    first_word,
    quote,
    strip_eol,
)

CLIENT_MODE_FAILURE = b"-ERR tlstunnel: could not set up TLS with the mail server\r\n"
SERVER_MODE_FAILURE = b"-ERR tlstunnel: the mail server is not available\r\n"


def _status(line: bytes, what: str) -> bool:
    """True for ``+OK``, False for ``-ERR``; anything else is a broken server."""
    word = first_word(line)
    if word == b"+OK":
        return True
    if word == b"-ERR":
        return False
    raise NegotiationError(f"{what} is neither +OK nor -ERR: {quote(line)}")


class ClientState(enum.Enum):
    CONNECTING = "connecting to the server"
    GREETING = "waiting for the server's greeting"
    CAPA = "waiting for the reply to CAPA"
    CAPA_LIST = "reading the server's CAPA list"
    STLS = "waiting for the reply to STLS"
    HANDSHAKE = "in the TLS handshake"


class ClientMode(StartTLSClientMode):
    """``client = yes``: the tunnel is the POP3 client up to STLS."""

    CONNECTING = ClientState.CONNECTING
    GREETING = ClientState.GREETING
    HANDSHAKE = ClientState.HANDSHAKE
    FAILURE = CLIENT_MODE_FAILURE

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.capabilities = DotBlock("the CAPA list")

    def _on_greeting(self, line: bytes) -> list[Event]:
        if not _status(line, "the server's greeting"):
            return self.fail(f"the server refused the session: {quote(line)}")
        self.greeting = strip_eol(line) + CRLF
        return self.expect(ClientState.CAPA, Send(Side.SERVER, b"CAPA" + CRLF))

    def _on_capa(self, line: bytes) -> list[Event]:
        if _status(line, "the reply to CAPA"):
            return self.expect(ClientState.CAPA_LIST)
        return self._stls()  # no RFC 2449: STLS may still work

    def _on_capa_list(self, line: bytes) -> list[Event]:
        if not self.capabilities.feed(line):
            return self.expect(ClientState.CAPA_LIST)
        if b"STLS" not in self.capabilities.keywords():
            listed = b" ".join(sorted(self.capabilities.keywords()))
            return self.fail(f"the server does not offer STLS (its CAPA list: {quote(listed)})")
        return self._stls()

    def _stls(self) -> list[Event]:
        return self.expect(ClientState.STLS, Send(Side.SERVER, b"STLS" + CRLF))

    def _on_stls(self, line: bytes) -> list[Event]:
        if not _status(line, "the reply to STLS"):
            return self.fail(f"the server refused STLS: {quote(line)}")
        return self.server_agreed()

    TABLE: ClassVar[Mapping[enum.Enum, tuple[Side, LineHandler]]] = {
        ClientState.GREETING: (Side.SERVER, _on_greeting),
        ClientState.CAPA: (Side.SERVER, _on_capa),
        ClientState.CAPA_LIST: (Side.SERVER, _on_capa_list),
        ClientState.STLS: (Side.SERVER, _on_stls),
    }


class ServerState(enum.Enum):
    CONNECTING = "connecting to the server"
    GREETING = "waiting for the server's greeting"
    COMMAND = "waiting for the client's STLS"
    HANDSHAKE = "in the TLS handshake"


class ServerMode(StartTLSServerMode):
    """``client = no``: the tunnel is the POP3 server up to STLS."""

    CONNECTING = ServerState.CONNECTING
    GREETING = ServerState.GREETING
    COMMAND = ServerState.COMMAND
    HANDSHAKE = ServerState.HANDSHAKE
    FAILURE = SERVER_MODE_FAILURE
    TLS_COMMAND = "STLS"
    TOO_MANY = b"-ERR Too many commands before STLS\r\n"

    def _on_greeting(self, line: bytes) -> list[Event]:
        if not _status(line, "the server's greeting"):
            return self.fail(f"the server refused the session: {quote(line)}")
        return self.pass_greeting(strip_eol(line) + CRLF)

    def _on_command(self, line: bytes) -> list[Event]:
        command = first_word(line)
        if command == b"CAPA":
            return self.answer(b"+OK Capability list follows", b"STLS", b".")
        if command == b"QUIT":
            return self.fail("the client quit before STLS", Send(Side.CLIENT, b"+OK Bye\r\n"))
        if command == b"STLS":
            return self.accept_tls(b"+OK Begin TLS negotiation")
        return self.refuse(command, b"-ERR Command not permitted before STLS")

    TABLE: ClassVar[Mapping[enum.Enum, tuple[Side, LineHandler]]] = {
        ServerState.GREETING: (Side.SERVER, _on_greeting),
        ServerState.COMMAND: (Side.CLIENT, _on_command),
    }


CLIENT_MODE = ClientMode
SERVER_MODE = ServerMode
