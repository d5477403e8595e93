"""``protocol = nntp``: STARTTLS for NNTP (RFC 4642, RFC 3977), client mode only.

Theory of operation
-------------------
stunnel has only the client side of NNTP (``client = yes``), and so has tlstunnel;
the configuration refuses ``protocol = nntp`` with ``client = no``.

The tunnel connects and reads the greeting: ``200`` (posting allowed) or ``201``
(no posting); ``400``/``502`` are refusals.  It asks ``CAPABILITIES`` (RFC 3977
5.2) and requires ``STARTTLS`` in the list; a server that does not know the command
(``500``/``501``: an RFC 977-era server) is sent ``STARTTLS`` anyway, which is all
stunnel ever does.  ``382`` to ``STARTTLS`` starts the handshake; ``580`` or
anything else is a refusal.  Then the local client gets the server's greeting and
talks through TLS (RFC 4642 2.2.2: it must ask ``CAPABILITIES`` again there).
Until then it has heard nothing, so a failure reaches it as a ``400`` greeting.

Plaintext the server pipelines behind its ``382`` is dropped, never forwarded
(CVE-2011-0411).  The states are ``ClientMode.TABLE``; the steps every mail
protocol shares (connect, greeting, handshake) are ``lines.StartTLSClientMode``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import ClassVar

from tlstunnel.protocols.base import ConnectionFacts, Event, ProtocolSettings, Send, Side
from tlstunnel.protocols.lines import (
    CRLF,
    DotBlock,
    LineHandler,
    NumericReply,
    StartTLSClientMode,
    quote,
)

CLIENT_MODE_FAILURE = b"400 tlstunnel: could not set up TLS with the news server\r\n"
# CAPABILITIES is unknown to servers older than RFC 3977: try STARTTLS regardless.
UNKNOWN_COMMAND = (500, 501)


class ClientState(enum.Enum):
    CONNECTING = "connecting to the server"
    GREETING = "waiting for the server's greeting"
    CAPABILITIES = "waiting for the reply to CAPABILITIES"
    CAPABILITY_LIST = "reading the server's capability list"
    STARTTLS = "waiting for the reply to STARTTLS"
    HANDSHAKE = "in the TLS handshake"


class ClientMode(StartTLSClientMode):
    """``client = yes``: the tunnel is the NNTP client up to STARTTLS."""

    CONNECTING = ClientState.CONNECTING
    GREETING = ClientState.GREETING
    HANDSHAKE = ClientState.HANDSHAKE
    FAILURE = CLIENT_MODE_FAILURE

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.capabilities = DotBlock("the capability list")

    @staticmethod
    def _reply(line: bytes, what: str) -> NumericReply:
        reply = NumericReply(what, multiline=False)
        reply.feed(line)
        return reply

    def _on_greeting(self, line: bytes) -> list[Event]:
        reply = self._reply(line, "the server's greeting")
        if reply.code not in (200, 201):
            return self.fail(f"the server refused the session: {reply.shown()}")
        self.greeting = reply.raw()
        return self.expect(ClientState.CAPABILITIES, Send(Side.SERVER, b"CAPABILITIES" + CRLF))

    def _on_capabilities(self, line: bytes) -> list[Event]:
        reply = self._reply(line, "the reply to CAPABILITIES")
        if reply.code == 101:
            return self.expect(ClientState.CAPABILITY_LIST)
        if reply.code in UNKNOWN_COMMAND:
            return self._starttls()
        return self.fail(f"the server refused CAPABILITIES: {reply.shown()}")

    def _on_capability_list(self, line: bytes) -> list[Event]:
        if not self.capabilities.feed(line):
            return self.expect(ClientState.CAPABILITY_LIST)
        keywords = self.capabilities.keywords()
        if b"STARTTLS" not in keywords:
            listed = b" ".join(sorted(keywords))
            return self.fail(
                f"the server does not offer STARTTLS (its capabilities: {quote(listed)})"
            )
        return self._starttls()

    def _starttls(self) -> list[Event]:
        return self.expect(ClientState.STARTTLS, Send(Side.SERVER, b"STARTTLS" + CRLF))

    def _on_starttls(self, line: bytes) -> list[Event]:
        reply = self._reply(line, "the reply to STARTTLS")
        if reply.code != 382:
            return self.fail(f"the server refused STARTTLS: {reply.shown()}")
        return self.server_agreed()

    TABLE: ClassVar[Mapping[enum.Enum, tuple[Side, LineHandler]]] = {
        ClientState.GREETING: (Side.SERVER, _on_greeting),
        ClientState.CAPABILITIES: (Side.SERVER, _on_capabilities),
        ClientState.CAPABILITY_LIST: (Side.SERVER, _on_capability_list),
        ClientState.STARTTLS: (Side.SERVER, _on_starttls),
    }


CLIENT_MODE = ClientMode
SERVER_MODE = None
