"""``protocol = imap``: STARTTLS for IMAP (RFC 3501 sections 6.1.1, 6.2.1), both modes.

Theory of operation
-------------------
**Client mode** (``client = yes``).  The tunnel connects and reads the greeting: it
must be ``* OK`` (a ``* PREAUTH`` server is already logged in, when STARTTLS is no
longer allowed; ``* BYE`` is a refusal).  The server's capabilities come from the
greeting's ``[CAPABILITY ...]`` code when it has one, otherwise from a tagged
``CAPABILITY`` command; ``STARTTLS`` must be among them (stunnel does not check,
and would send the command regardless).  Then ``STARTTLS`` itself, and on its tagged
``OK`` the handshake.  Only then does the local client get the greeting, with the
``[CAPABILITY ...]`` code taken out: those were the pre-TLS capabilities (with
STARTTLS and LOGINDISABLED in them) and a client must ask again inside TLS (RFC
3501 6.2.1).  stunnel garbles the word instead ("KAPABILITY").  A failure reaches
the local client as a ``* BYE`` greeting.

**Server mode** (``client = no``).  The tunnel connects to the backend, passes its
``* OK`` greeting on (capabilities code removed, as above) and answers the client
itself until ``STARTTLS``: ``CAPABILITY`` gets ``IMAP4rev1 STARTTLS LOGINDISABLED``,
``NOOP`` gets ``OK``, ``LOGOUT`` gets ``BYE`` and ends the connection, ``STARTTLS``
gets ``OK Begin TLS negotiation now`` and the handshake; anything else gets ``NO``
(``LOGIN``, whose password must not travel in plaintext) or ``BAD``, at most
``lines.MAX_REFUSED`` times.  stunnel forwards the client's ``CAPABILITY`` to the backend
and adds STARTTLS to the answer; here no byte the client sends before TLS reaches
the backend, which is in its not-authenticated state when the client's first
command inside TLS arrives.

Plaintext pipelined behind ``STARTTLS`` is dropped, never forwarded (CVE-2011-0411).
The states are ``ClientMode.TABLE`` and ``ServerMode.TABLE``; the steps every
mail protocol shares (connect, greeting, handshake, the refused-command count) are
``lines.StartTLSClientMode`` and ``lines.StartTLSServerMode``.
"""

from __future__ import annotations

import enum
import re
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
    MAX_REPLY_LINES,
    LineHandler,
    StartTLSClientMode,
    StartTLSServerMode,
    quote,
    strip_eol,
)

CAPABILITY_TAG = b"TT1"
STARTTLS_TAG = b"TT2"
CLIENT_MODE_FAILURE = b"* BYE tlstunnel: could not set up TLS with the mail server\r\n"
SERVER_MODE_FAILURE = b"* BYE tlstunnel: the mail server is not available\r\n"
# What the tunnel offers in server mode before TLS (RFC 3501 6.2.3: LOGINDISABLED).
PRE_TLS_CAPABILITIES = b"IMAP4rev1 STARTTLS LOGINDISABLED"

_CAPABILITY_CODE = re.compile(rb"\[CAPABILITY(?: [^\]]*)?\] ?", re.IGNORECASE)
# RFC 3501 tag: ASTRING-CHARs but "+": printable, no space, no ( ) { % * " \ +.
_NOT_IN_TAG = frozenset(b'(){%*"\\+')


def _valid_tag(tag: bytes) -> bool:
    return bool(tag) and all(0x21 <= byte <= 0x7E and byte not in _NOT_IN_TAG for byte in tag)


def _greeting(line: bytes, what: str = "the server's greeting") -> tuple[bytes, bytes | None]:
    """Check a greeting; return it without its capabilities code, and that code's
    capability list (None if there was none).  Raises ``NegotiationError``."""
    text = strip_eol(line)
    words = text.split(None, 2)
    status = words[1].upper() if len(words) > 1 and words[0] == b"*" else b""
    if status == b"PREAUTH":
        raise NegotiationError(
            f"{what} is PREAUTH (already logged in: STARTTLS is not allowed): {quote(line)}"
        )
    if status == b"BYE":
        raise NegotiationError(f"the server refused the session: {quote(line)}")
    if status != b"OK":
        raise NegotiationError(f"{what} is not an IMAP greeting: {quote(line)}")
    match = _CAPABILITY_CODE.search(text)
    if match is None:
        return text + CRLF, None
    listed = match.group(0).strip(b"[] ").split(None, 1)
    cleaned = text[: match.start()] + text[match.end() :]
    return cleaned.rstrip() + CRLF, listed[1] if len(listed) > 1 else b""


def _has_starttls(capabilities: bytes) -> bool:
    return b"STARTTLS" in capabilities.upper().split()


class ClientState(enum.Enum):
    CONNECTING = "connecting to the server"
    GREETING = "waiting for the server's greeting"
    CAPABILITY = "waiting for the reply to CAPABILITY"
    STARTTLS = "waiting for the reply to STARTTLS"
    HANDSHAKE = "in the TLS handshake"


class ClientMode(StartTLSClientMode):
    """``client = yes``: the tunnel is the IMAP client up to STARTTLS."""

    CONNECTING = ClientState.CONNECTING
    GREETING = ClientState.GREETING
    HANDSHAKE = ClientState.HANDSHAKE
    FAILURE = CLIENT_MODE_FAILURE

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.capabilities = b""
        self.lines = 0  # lines of the reply being read (bounded)

    def _command(self, tag: bytes, command: bytes, state: ClientState) -> list[Event]:
        self.lines = 0
        return self.expect(state, Send(Side.SERVER, tag + b" " + command + CRLF))

    def _check_capabilities(self, capabilities: bytes) -> list[Event]:
        if not _has_starttls(capabilities):
            return self.fail(
                f"the server does not offer STARTTLS (its capabilities: {quote(capabilities)})"
            )
        return self._command(STARTTLS_TAG, b"STARTTLS", ClientState.STARTTLS)

    def _tagged(self, line: bytes, tag: bytes, what: str) -> bytes | None:
        """The status word of ``tag``'s completion line; None for an untagged line.
        Raises ``NegotiationError`` for anything else."""
        self.lines += 1
        if self.lines > MAX_REPLY_LINES:
            raise NegotiationError(f"{what} is longer than {MAX_REPLY_LINES} lines")
        words = strip_eol(line).split(None, 2)
        if words and words[0] == b"*":
            return None
        if len(words) >= 2 and words[0] == tag:
            return words[1].upper()
        raise NegotiationError(f"{what} is not an IMAP response: {quote(line)}")

    def _on_greeting(self, line: bytes) -> list[Event]:
        self.greeting, capabilities = _greeting(line)
        if capabilities is not None:
            return self._check_capabilities(capabilities)
        return self._command(CAPABILITY_TAG, b"CAPABILITY", ClientState.CAPABILITY)

    def _on_capability(self, line: bytes) -> list[Event]:
        status = self._tagged(line, CAPABILITY_TAG, "the reply to CAPABILITY")
        if status is None:
            words = strip_eol(line).split(None, 2)
            if len(words) > 1 and words[1].upper() == b"CAPABILITY":
                self.capabilities += b" " + (words[2] if len(words) > 2 else b"")
            return self.expect(ClientState.CAPABILITY)
        if status != b"OK":
            return self.fail(f"the server refused CAPABILITY: {quote(line)}")
        return self._check_capabilities(self.capabilities.strip())

    def _on_starttls(self, line: bytes) -> list[Event]:
        status = self._tagged(line, STARTTLS_TAG, "the reply to STARTTLS")
        if status is None:
            return self.expect(ClientState.STARTTLS)
        if status != b"OK":
            return self.fail(f"the server refused STARTTLS: {quote(line)}")
        return self.server_agreed()

    TABLE: ClassVar[Mapping[enum.Enum, tuple[Side, LineHandler]]] = {
        ClientState.GREETING: (Side.SERVER, _on_greeting),
        ClientState.CAPABILITY: (Side.SERVER, _on_capability),
        ClientState.STARTTLS: (Side.SERVER, _on_starttls),
    }


class ServerState(enum.Enum):
    CONNECTING = "connecting to the server"
    GREETING = "waiting for the server's greeting"
    COMMAND = "waiting for the client's STARTTLS"
    HANDSHAKE = "in the TLS handshake"


class ServerMode(StartTLSServerMode):
    """``client = no``: the tunnel is the IMAP server up to STARTTLS."""

    CONNECTING = ServerState.CONNECTING
    GREETING = ServerState.GREETING
    COMMAND = ServerState.COMMAND
    HANDSHAKE = ServerState.HANDSHAKE
    FAILURE = SERVER_MODE_FAILURE
    TLS_COMMAND = "STARTTLS"
    TOO_MANY = b"* BYE Too many commands before STARTTLS\r\n"

    def _on_greeting(self, line: bytes) -> list[Event]:
        greeting, _capabilities = _greeting(line)
        return self.pass_greeting(greeting)

    def _on_command(self, line: bytes) -> list[Event]:
        # ``refuse`` logs the command's name only: LOGIN's arguments carry a password.
        words = strip_eol(line).split(None, 2)
        tag = words[0] if words else b""
        if not _valid_tag(tag) or len(words) < 2:
            return self.refuse(b"", b"* BAD Missing tag or command")
        command = words[1].upper()
        arguments = len(words) > 2 and bool(words[2].strip())
        if command == b"CAPABILITY" and not arguments:
            return self.answer(
                b"* CAPABILITY " + PRE_TLS_CAPABILITIES, tag + b" OK CAPABILITY completed"
            )
        if command == b"NOOP" and not arguments:
            return self.answer(tag + b" OK NOOP completed")
        if command == b"LOGOUT":
            return self.fail(
                "the client logged out before STARTTLS",
                Send(Side.CLIENT, b"* BYE Logging out\r\n" + tag + b" OK LOGOUT completed\r\n"),
            )
        if command == b"STARTTLS" and not arguments:
            return self.accept_tls(tag + b" OK Begin TLS negotiation now")
        if command in (b"LOGIN", b"AUTHENTICATE"):
            return self.refuse(command, tag + b" NO [PRIVACYREQUIRED] Use STARTTLS first")
        return self.refuse(command, tag + b" BAD Only STARTTLS is allowed before TLS")

    TABLE: ClassVar[Mapping[enum.Enum, tuple[Side, LineHandler]]] = {
        ServerState.GREETING: (Side.SERVER, _on_greeting),
        ServerState.COMMAND: (Side.CLIENT, _on_command),
    }


CLIENT_MODE = ClientMode
SERVER_MODE = ServerMode
