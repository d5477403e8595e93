"""``protocol = ldap``: the LDAP StartTLS extended operation (RFC 4511 4.14, RFC 4513 3,
formerly RFC 2830), client mode only -- as in stunnel, which refuses ``ldap`` in
server mode.

Theory of operation
-------------------

A plain LDAP client connects to the tunnel; the tunnel connects to the directory
server and, before relaying a byte of the client's, asks the server to start TLS:

    tunnel -> server   LDAPMessage { messageID 1,
                                     extendedReq { requestName 1.3.6.1.4.1.1466.20037 } }
    server -> tunnel   LDAPMessage { messageID 1,
                                     extendedResp { resultCode, matchedDN,
                                                    diagnosticMessage, [responseName] } }

resultCode 0 (success) starts the TLS handshake on the server side; then the client's
plaintext is relayed inside it.  Anything else fails the connection with the result
code's name, its number and the server's diagnostic message -- the line an operator
needs to see that, say, slapd has no certificate configured.  A response with
messageID 0 is an unsolicited notification (RFC 4511 4.4), usually the server's
Notice of Disconnection: it is reported as such.

The response is read with ``ber.frame_size`` so at most ``max_line`` bytes are ever
buffered, and parsed strictly (``ber.parse``/``ber.children``).  Bytes the server
sends after its response, before the handshake, could only be injected plaintext
(the CVE-2011-0411 class): they are dropped with a note, never relayed.

The request is byte-for-byte the one stunnel sends (messageID 1, no controls).

The states, and the one call each accepts::

    CONNECTING       --connected(None)-->  send the request, AWAITING_RESPONSE
    AWAITING_RESPONSE --received(SERVER)-> (whole response, success) STARTING_TLS
    STARTING_TLS     --tls_started-------> Done
"""

from __future__ import annotations

import enum

from tlstunnel.protocols import ber
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

STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
NOTICE_OF_DISCONNECTION_OID = b"1.3.6.1.4.1.1466.20036"
MESSAGE_ID = 1

# LDAP's application and context tags (RFC 4511 appendix B).
EXTENDED_REQUEST = 0x40 | ber.CONSTRUCTED | 23  # [APPLICATION 23]
EXTENDED_RESPONSE = 0x40 | ber.CONSTRUCTED | 24  # [APPLICATION 24]
REQUEST_NAME = 0x80  # [0] LDAPOID, primitive
REFERRAL = 0x80 | ber.CONSTRUCTED | 3  # [3] Referral
RESPONSE_NAME = 0x80 | 10  # [10] LDAPOID
RESPONSE_VALUE = 0x80 | 11  # [11] OCTET STRING

# What other operations a confused server might answer with, for a readable error.
_OPERATION_NAMES = {
    0x61: "a BindResponse",
    0x64: "a SearchResultEntry",
    0x65: "a SearchResultDone",
    0x67: "a ModifyResponse",
}

# RFC 4511 4.1.9 and appendix A.
RESULT_CODES: dict[int, str] = {
    0: "success",
    1: "operationsError",
    2: "protocolError",
    3: "timeLimitExceeded",
    4: "sizeLimitExceeded",
    7: "authMethodNotSupported",
    8: "strongerAuthRequired",
    10: "referral",
    11: "adminLimitExceeded",
    12: "unavailableCriticalExtension",
    13: "confidentialityRequired",
    14: "saslBindInProgress",
    32: "noSuchObject",
    48: "inappropriateAuthentication",
    49: "invalidCredentials",
    50: "insufficientAccessRights",
    51: "busy",
    52: "unavailable",
    53: "unwillingToPerform",
    54: "loopDetect",
    80: "other",
}

# How much of a diagnostic message goes into the log line.
_DIAGNOSTIC_LIMIT = 200


def start_tls_request(message_id: int = MESSAGE_ID) -> bytes:
    """The LDAPMessage carrying an ExtendedRequest for StartTLS."""
    operation = ber.encode(EXTENDED_REQUEST, ber.encode(REQUEST_NAME, STARTTLS_OID))
    message_id_element = ber.encode(ber.INTEGER, message_id.to_bytes(1, "big"))
    return ber.encode(ber.SEQUENCE, message_id_element + operation)


START_TLS_REQUEST = start_tls_request()


def result_name(code: int) -> str:
    return f"{RESULT_CODES.get(code, 'resultCode')} ({code})"


def printable(raw: bytes, limit: int = _DIAGNOSTIC_LIMIT) -> str:
    """A peer's text made safe for one log line: decoded, control characters replaced,
    cut at ``limit`` characters."""
    text = raw.decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else "?" for ch in text).strip()
    return text if len(text) <= limit else text[:limit] + "..."


class State(enum.Enum):
    CONNECTING = "connecting"
    AWAITING_RESPONSE = "awaiting the StartTLS response"
    STARTING_TLS = "starting TLS"
    FINISHED = "finished"


class LDAPStartTLSClient(Negotiator):
    """Client mode: ask the directory server for StartTLS, then hand over."""

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.state = State.CONNECTING
        self._response = bytearray()

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise NegotiationError(f"internal: called while {self.state.value}")

    def start(self) -> list[Event]:
        return [Connect()]

    def connected(self, error: str | None) -> list[Event]:
        self._expect(State.CONNECTING)
        if error is not None:
            self.state = State.FINISHED
            return [Failed(error)]
        self.state = State.AWAITING_RESPONSE
        return [
            Note(7, "Requesting LDAP Start TLS"),
            Send(Side.SERVER, START_TLS_REQUEST),
            Receive(Side.SERVER),
        ]

    def received(self, side: Side, data: bytes) -> list[Event]:
        self._expect(State.AWAITING_RESPONSE)
        if side is not Side.SERVER:
            raise NegotiationError(f"internal: data from the {side.value} while waiting")
        if not data:
            self.state = State.FINISHED
            return [Failed("the server closed the connection instead of answering StartTLS")]
        self._response += data
        if self._response[0] != ber.SEQUENCE:
            # Not even the start of an LDAPMessage: say what it looked like (a banner
            # of some other protocol, most often) instead of waiting for more.
            start = printable(bytes(self._response[:80]).split(b"\n")[0], 80)
            raise NegotiationError(f"the server's answer is not an LDAP message: {start!r}")
        try:
            size = ber.frame_size(self._response, self.max_line)
            if size is None or len(self._response) < size:
                return [Receive(Side.SERVER)]
            message = bytes(self._response[:size])
            extra = len(self._response) - size
            self._response.clear()
            self._check_response(message)
        except ber.BERError as exc:
            raise NegotiationError(f"the server's answer is not valid BER: {exc}") from None
        self.state = State.STARTING_TLS
        events: list[Event] = []
        if extra:
            events.append(
                Note(
                    4,
                    f"{extra} byte(s) the server sent after its StartTLS response were discarded",
                )
            )
        events.append(Note(6, "LDAP Start TLS successfully negotiated"))
        events.append(StartTLS(Side.SERVER))
        return events

    def tls_started(self, side: Side) -> list[Event]:
        self._expect(State.STARTING_TLS)
        self.state = State.FINISHED
        return [Done()]

    # -- reading the ExtendedResponse ---------------------------------------------------

    def _check_response(self, message: bytes) -> None:
        """Raise ``NegotiationError`` saying what is wrong unless ``message`` is a
        successful StartTLS response."""
        envelope = ber.parse(message)
        if envelope.tag != ber.SEQUENCE:
            raise NegotiationError(
                f"the server's answer is not an LDAP message (identifier 0x{envelope.tag:02x})"
            )
        parts = ber.children(envelope)
        if len(parts) < 2 or parts[0].tag != ber.INTEGER:
            raise NegotiationError("the server's answer is not an LDAP message")
        message_id = ber.integer(parts[0])
        operation = parts[1]
        if operation.tag != EXTENDED_RESPONSE:
            what = _OPERATION_NAMES.get(operation.tag, f"operation 0x{operation.tag:02x}")
            raise NegotiationError(
                f"the server answered StartTLS with {what}, not an ExtendedResponse"
            )
        code, diagnostic, name = _read_extended_response(operation)
        said = f": {diagnostic}" if diagnostic else ""
        if message_id == 0:
            what = (
                "a notice of disconnection"
                if name == NOTICE_OF_DISCONNECTION_OID
                else "an unsolicited notification"
            )
            raise NegotiationError(f"the server sent {what}: {result_name(code)}{said}")
        if message_id != MESSAGE_ID:
            raise NegotiationError(
                f"the server answered message {message_id}; StartTLS was message {MESSAGE_ID}"
            )
        if code != 0:
            raise NegotiationError(f"the server refused StartTLS: {result_name(code)}{said}")
        if name is not None and name != STARTTLS_OID:
            raise NegotiationError(
                f"the server's StartTLS response names another operation: {printable(name)}"
            )


def _read_extended_response(operation: ber.Element) -> tuple[int, str, bytes | None]:
    """``(resultCode, diagnosticMessage, responseName)`` of an ExtendedResponse."""
    fields = ber.children(operation)
    if len(fields) < 3:
        raise NegotiationError("the server's ExtendedResponse lacks its LDAPResult")
    result_code, matched_dn, diagnostic = fields[:3]
    if (
        result_code.tag != ber.ENUMERATED
        or matched_dn.tag != ber.OCTET_STRING
        or diagnostic.tag != ber.OCTET_STRING
    ):
        raise NegotiationError("the server's ExtendedResponse has a malformed LDAPResult")
    name: bytes | None = None
    optional = fields[3:]
    if optional and optional[0].tag == REFERRAL:
        optional = optional[1:]
    if optional and optional[0].tag == RESPONSE_NAME:
        name = optional[0].contents
        optional = optional[1:]
    if optional and optional[0].tag == RESPONSE_VALUE:
        optional = optional[1:]
    if optional:
        raise NegotiationError(
            f"the server's ExtendedResponse has an unexpected field 0x{optional[0].tag:02x}"
        )
    return ber.integer(result_code), printable(diagnostic.contents), name


CLIENT_MODE = LDAPStartTLSClient
SERVER_MODE = None  # stunnel: "The 'ldap' protocol is not supported in the server mode"
