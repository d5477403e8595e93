"""``protocol = smtp``: STARTTLS for SMTP (RFC 3207), in both modes.

Theory of operation
-------------------
**Client mode** (``client = yes``: plaintext SMTP in, STARTTLS out).  The tunnel
connects, reads the server's ``220`` greeting, says ``EHLO protocolHost`` (default
``localhost``, as stunnel), checks that the reply offers ``STARTTLS``, sends it and
waits for ``220``, then runs the handshake.  With ``protocolUsername`` and
``protocolPassword`` it then says ``EHLO`` again *inside TLS* and logs in with
``AUTH PLAIN`` (RFC 4616) or ``AUTH LOGIN`` (``protocolAuthentication``), as stunnel
does; credentials never travel in plaintext.  Only then does the local client get
the server's greeting, and from there on it talks to the server through TLS (its own
``EHLO`` gets the server's post-TLS extensions).  Holding the greeting back until TLS
is up means a failure can still be told to the client as a proper ``421`` greeting.

**Server mode** (``client = no``: STARTTLS in, plaintext SMTP out).  As stunnel, the
tunnel connects to the backend first and passes its ``220`` greeting to the client.
Then it plays the server's part up to STARTTLS: ``EHLO`` gets ``250-<name>`` and
``250 STARTTLS`` (the name is the first word of the backend's greeting), ``HELO``,
``NOOP`` and ``RSET`` get ``250``, ``QUIT`` gets ``221`` and ends the connection, and
anything else gets ``530 Must issue a STARTTLS command first`` (at most
``lines.MAX_REFUSED`` times).  ``STARTTLS`` gets ``220`` and the handshake starts.  After
it the client's commands (its new ``EHLO`` first) go to the backend, which has said
its greeting and waits for exactly that.  No byte the client sends before TLS
reaches the backend.

The states and which side each one reads are in ``ClientMode.TABLE`` and
``ServerMode.TABLE``.  Plaintext pipelined behind ``STARTTLS`` (by the client in
server mode, by the server in client mode) is discarded, never forwarded: that is
``LineNegotiator.start_tls`` (CVE-2011-0411).  The steps every mail protocol
shares (connect, greeting, handshake, the refused-command count) are
``lines.StartTLSClientMode`` and ``lines.StartTLSServerMode``.

Not done (stunnel does it): in server mode stunnel waits 200 ms and, if the client
speaks first, assumes implicit TLS (SMTPS) instead of STARTTLS.  A sans-IO negotiator
has no clock; a service for port 465 simply has no ``protocol``.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Mapping
from typing import ClassVar

from tlstunnel.protocols.base import (
    ConnectionFacts,
    Event,
    ProtocolSettings,
    Send,
    Side,
)
from tlstunnel.protocols.lines import (
    CRLF,
    LineHandler,
    NumericReply,
    StartTLSClientMode,
    StartTLSServerMode,
    first_word,
    quote,
    strip_eol,
)

DEFAULT_EHLO_NAME = "localhost"

# What the local client is told when the tunnel gives up (client mode: in place of
# the greeting).  Fixed text: the server's own words are logged, never passed on.
CLIENT_MODE_FAILURE = b"421 4.7.0 tlstunnel: could not set up TLS with the mail server\r\n"
SERVER_MODE_FAILURE = b"421 4.3.0 tlstunnel: the mail server is not available\r\n"


def _keywords(ehlo: NumericReply) -> dict[bytes, bytes]:
    """EHLO extensions (RFC 5321 4.1.1.1): keyword → its parameters.  The first line
    is the server's name, not an extension.  ``AUTH=PLAIN`` (old Microsoft form)
    counts as ``AUTH PLAIN``."""
    found: dict[bytes, bytes] = {}
    for text in ehlo.texts()[1:]:
        keyword, _, params = text.replace(b"=", b" ", 1).partition(b" ")
        if keyword:
            found.setdefault(keyword.upper(), b"")
            found[keyword.upper()] = (found[keyword.upper()] + b" " + params.upper()).strip()
    return found


class ClientState(enum.Enum):
    CONNECTING = "connecting to the server"
    GREETING = "waiting for the server's greeting"
    EHLO = "waiting for the reply to EHLO"
    STARTTLS = "waiting for the reply to STARTTLS"
    HANDSHAKE = "in the TLS handshake"
    EHLO_TLS = "waiting for the reply to EHLO inside TLS"
    AUTH_PLAIN = "waiting for the reply to AUTH PLAIN"
    AUTH_LOGIN = "waiting for the server to ask for the user name (AUTH LOGIN)"
    LOGIN_USER = "waiting for the server to ask for the password (AUTH LOGIN)"
    LOGIN_PASSWORD = "waiting for the reply to the password (AUTH LOGIN)"


class ClientMode(StartTLSClientMode):
    """``client = yes``: the tunnel is the SMTP client up to TLS (and AUTH)."""

    CONNECTING = ClientState.CONNECTING
    GREETING = ClientState.GREETING
    HANDSHAKE = ClientState.HANDSHAKE
    FAILURE = CLIENT_MODE_FAILURE

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.reply = NumericReply("the server's greeting")
        self.ehlo_name = (self.settings.host or DEFAULT_EHLO_NAME).encode("ascii", "replace")

    # -- steps ---------------------------------------------------------------------------

    def on_tls(self, side: Side) -> list[Event]:
        """Inside TLS: log in first when there are credentials, then ``welcome``."""
        if self.settings.username is None or self.settings.password is None:
            return self.welcome()
        return self._command(b"EHLO " + self.ehlo_name, ClientState.EHLO_TLS, "EHLO")

    def _command(self, line: bytes, state: ClientState, name: str) -> list[Event]:
        self.reply = NumericReply(f"the reply to {name}")
        return self.expect(state, Send(Side.SERVER, line + CRLF))

    def _complete(self, line: bytes) -> NumericReply | None:
        """Feed a reply line; the whole reply once it is complete."""
        return self.reply if self.reply.feed(line) else None

    # -- line handlers -------------------------------------------------------------------

    def _on_greeting(self, line: bytes) -> list[Event]:
        reply = self._complete(line)
        if reply is None:
            return self.expect(ClientState.GREETING)
        if reply.code != 220:
            return self.fail(f"the server refused the session: {reply.shown()}")
        self.greeting = reply.raw()
        return self._command(b"EHLO " + self.ehlo_name, ClientState.EHLO, "EHLO")

    def _on_ehlo(self, line: bytes) -> list[Event]:
        reply = self._complete(line)
        if reply is None:
            return self.expect(ClientState.EHLO)
        if reply.code != 250:
            return self.fail(f"the server refused EHLO: {reply.shown()}")
        if b"STARTTLS" not in _keywords(reply):
            return self.fail(
                f"the server does not offer STARTTLS (its EHLO reply ends {reply.shown()})"
            )
        return self._command(b"STARTTLS", ClientState.STARTTLS, "STARTTLS")

    def _on_starttls(self, line: bytes) -> list[Event]:
        reply = self._complete(line)
        if reply is None:
            return self.expect(ClientState.STARTTLS)
        if reply.code != 220:
            return self.fail(f"the server refused STARTTLS: {reply.shown()}")
        return self.server_agreed()

    def _on_ehlo_tls(self, line: bytes) -> list[Event]:
        reply = self._complete(line)
        if reply is None:
            return self.expect(ClientState.EHLO_TLS)
        if reply.code != 250:
            return self.fail(f"the server refused EHLO inside TLS: {reply.shown()}")
        mechanism = (self.settings.authentication or "plain").upper().encode()
        offered = _keywords(reply).get(b"AUTH")
        if offered is None:
            return self.fail("the server does not offer AUTH inside TLS")
        if mechanism not in offered.split():
            return self.fail(
                f"the server does not offer AUTH {mechanism.decode()} (it offers {quote(offered)})"
            )
        user = (self.settings.username or "").encode()
        password = (self.settings.password or "").encode()
        if mechanism == b"PLAIN":
            token = base64.b64encode(b"\0" + user + b"\0" + password)
            return self._command(b"AUTH PLAIN " + token, ClientState.AUTH_PLAIN, "AUTH PLAIN")
        return self._command(b"AUTH LOGIN", ClientState.AUTH_LOGIN, "AUTH LOGIN")

    def _on_auth_plain(self, line: bytes) -> list[Event]:
        return self._verdict(line, ClientState.AUTH_PLAIN, "PLAIN")

    def _on_auth_login(self, line: bytes) -> list[Event]:
        return self._challenge(line, ClientState.AUTH_LOGIN, self.settings.username or "")

    def _on_login_user(self, line: bytes) -> list[Event]:
        return self._challenge(line, ClientState.LOGIN_USER, self.settings.password or "")

    def _on_login_password(self, line: bytes) -> list[Event]:
        return self._verdict(line, ClientState.LOGIN_PASSWORD, "LOGIN")

    def _challenge(self, line: bytes, state: ClientState, answer: str) -> list[Event]:
        """AUTH LOGIN: a ``334`` challenge is answered with the next credential."""
        reply = self._complete(line)
        if reply is None:
            return self.expect(state)
        if reply.code != 334:
            return self.fail(f"LOGIN authentication failed: {reply.shown()}")
        following = (
            ClientState.LOGIN_USER
            if state is ClientState.AUTH_LOGIN
            else ClientState.LOGIN_PASSWORD
        )
        self.reply = NumericReply("the reply to AUTH LOGIN")
        return self.expect(following, Send(Side.SERVER, base64.b64encode(answer.encode()) + CRLF))

    def _verdict(self, line: bytes, state: ClientState, mechanism: str) -> list[Event]:
        reply = self._complete(line)
        if reply is None:
            return self.expect(state)
        if reply.code != 235:
            return self.fail(f"{mechanism} authentication failed: {reply.shown()}")
        return self.welcome()

    TABLE: ClassVar[Mapping[enum.Enum, tuple[Side, LineHandler]]] = {
        ClientState.GREETING: (Side.SERVER, _on_greeting),
        ClientState.EHLO: (Side.SERVER, _on_ehlo),
        ClientState.STARTTLS: (Side.SERVER, _on_starttls),
        ClientState.EHLO_TLS: (Side.SERVER, _on_ehlo_tls),
        ClientState.AUTH_PLAIN: (Side.SERVER, _on_auth_plain),
        ClientState.AUTH_LOGIN: (Side.SERVER, _on_auth_login),
        ClientState.LOGIN_USER: (Side.SERVER, _on_login_user),
        ClientState.LOGIN_PASSWORD: (Side.SERVER, _on_login_password),
    }


class ServerState(enum.Enum):
    CONNECTING = "connecting to the server"
    GREETING = "waiting for the server's greeting"
    COMMAND = "waiting for the client's STARTTLS"
    HANDSHAKE = "in the TLS handshake"


class ServerMode(StartTLSServerMode):
    """``client = no``: the tunnel is the SMTP server up to STARTTLS."""

    CONNECTING = ServerState.CONNECTING
    GREETING = ServerState.GREETING
    COMMAND = ServerState.COMMAND
    HANDSHAKE = ServerState.HANDSHAKE
    FAILURE = SERVER_MODE_FAILURE
    TLS_COMMAND = "STARTTLS"
    TOO_MANY = b"421 4.7.0 Too many commands before STARTTLS\r\n"

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.reply = NumericReply("the server's greeting")
        self.server_name = b"localhost"

    def _on_greeting(self, line: bytes) -> list[Event]:
        if not self.reply.feed(line):
            return self.expect(ServerState.GREETING)
        reply = self.reply
        if reply.code != 220:
            return self.fail(f"the server refused the session: {reply.shown()}")
        name = reply.texts()[0].split(None, 1)
        if name:
            self.server_name = name[0]
        return self.pass_greeting(reply.raw())

    def _on_command(self, line: bytes) -> list[Event]:
        command = first_word(line)
        if command == b"EHLO":
            return self.answer(b"250-" + self.server_name, b"250 STARTTLS")
        if command == b"HELO":
            return self.answer(b"250 " + self.server_name)
        if command in (b"NOOP", b"RSET"):
            return self.answer(b"250 2.0.0 OK")
        if command == b"QUIT":
            return self.fail(
                "the client quit before STARTTLS", Send(Side.CLIENT, b"221 2.0.0 Bye" + CRLF)
            )
        if command == b"STARTTLS":
            if strip_eol(line).strip().upper() != b"STARTTLS":
                return self.refuse(command, b"501 5.5.4 Syntax error (no parameters allowed)")
            return self.accept_tls(b"220 2.0.0 Ready to start TLS")
        return self.refuse(command, b"530 5.7.0 Must issue a STARTTLS command first")

    TABLE: ClassVar[Mapping[enum.Enum, tuple[Side, LineHandler]]] = {
        ServerState.GREETING: (Side.SERVER, _on_greeting),
        ServerState.COMMAND: (Side.CLIENT, _on_command),
    }


CLIENT_MODE = ClientMode
SERVER_MODE = ServerMode
