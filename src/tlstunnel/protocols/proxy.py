"""``protocol = proxy``: tell the backend who the client is, with a PROXY header.

stunnel's behaviour (server mode only; its client mode refuses the protocol, and so
do we: ``CLIENT_MODE = None``): accept TLS from the client, connect the backend, and
write one PROXY header naming the client's address and the address it connected to
before the first byte of the client's data.  The backend (HAProxy with
``accept-proxy``, nginx ``proxy_protocol``, Postfix, Dovecot...) then logs and
filters on the real client instead of on the tunnel.

``proxyVersion = 1`` (the default, and all stunnel can do) sends the text line
``PROXY TCP4 SRC DST SPORT DPORT\\r\\n`` (``PROXY UNKNOWN\\r\\n`` for a client on a
Unix socket).  ``proxyVersion = 2`` sends the binary header with what hitch and
ghostunnel add: ``PP2_TYPE_ALPN`` (the agreed protocol), ``PP2_TYPE_AUTHORITY`` (the
SNI name), and ``PP2_TYPE_SSL`` with the TLS version, cipher and, when the client
presented a verified certificate, its common name.

Theory of operation: the negotiator walks one table, ``_NEXT``, from ``START`` to
``DONE``; each call of the driver is legal in exactly one state:

=============  =====================  ==========================================
state          driver calls           negotiator answers, next state
=============  =====================  ==========================================
START          start()                StartTLS(CLIENT)            → HANDSHAKING
HANDSHAKING    tls_started(CLIENT)    Connect()                   → CONNECTING
CONNECTING     connected(None)        Send(SERVER, header), Done  → DONE
CONNECTING     connected(error)       Failed(error)               → DONE
=============  =====================  ==========================================

The header is built in ``connected``, after the handshake, from ``ConnectionFacts``
(which the driver has filled with the TLS session's facts, and which name the real
client when ``acceptProxy`` read a header in front of this connection).  Nothing is
read from either side, so there is no plaintext to drop and no buffer to bound.
"""

from __future__ import annotations

import enum

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
    Send,
    Side,
    StartTLS,
    TLSFacts,
)
from tlstunnel.protocols.proxy_header import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_SUBTYPE_SSL_CIPHER,
    PP2_SUBTYPE_SSL_CN,
    PP2_SUBTYPE_SSL_VERSION,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    TLV,
    SSLInfo,
    encode_v1,
    encode_v2,
    header_for,
)

# The SSL TLV's verify field: 0 means "a certificate was presented and verified"; any
# other value means it was not (the specification asks for non-zero when there was no
# certificate at all, where HAProxy sends OpenSSL's X509_V_OK, 0).
VERIFY_NO_CERTIFICATE = 1


class State(enum.Enum):
    START = "start"
    HANDSHAKING = "handshaking"  # TLS with the client
    CONNECTING = "connecting"  # to the backend
    DONE = "done"


# (state, driver call) → next state.  Every other combination is a driver bug.
_NEXT: dict[tuple[State, str], State] = {
    (State.START, "start"): State.HANDSHAKING,
    (State.HANDSHAKING, "tls_started"): State.CONNECTING,
    (State.CONNECTING, "connected"): State.DONE,
}


class ProxyServer(Negotiator):
    """Server mode: TLS from the client, then the PROXY header to the backend."""

    def __init__(self, settings: ProtocolSettings, facts: ConnectionFacts) -> None:
        super().__init__(settings, facts)
        self.state = State.START

    def _advance(self, call: str) -> None:
        try:
            self.state = _NEXT[(self.state, call)]
        except KeyError:
            raise NegotiationError(f"{call} while {self.state.value}") from None

    def start(self) -> list[Event]:
        self._advance("start")
        return [StartTLS(Side.CLIENT)]

    def received(self, side: Side, data: bytes) -> list[Event]:
        # Never asked for: the driver only reads a side after a Receive step.
        return [Failed(f"unexpected data from the {side.value} while {self.state.value}")]

    def tls_started(self, side: Side) -> list[Event]:
        if side is not Side.CLIENT:
            return [Failed(f"TLS started on the {side.value}")]
        self._advance("tls_started")
        return [Connect()]

    def connected(self, error: str | None) -> list[Event]:
        self._advance("connected")
        if error is not None:
            return [Failed(error)]
        header = self.header()
        version = self.settings.proxy_version
        return [
            Send(Side.SERVER, header),
            Note(7, f"PROXY v{version} header sent ({_describe(header)})"),
            Done(),
        ]

    def header(self) -> bytes:
        """The header for this connection, in the configured version."""
        facts = self.facts
        if self.settings.proxy_version == 2:
            tlvs = tls_tlvs(facts.tls) if facts.tls.version else ()
            return encode_v2(header_for(facts.client_address, facts.local_address, tlvs))
        return encode_v1(header_for(facts.client_address, facts.local_address))


def tls_tlvs(tls: TLSFacts) -> tuple[TLV, ...]:
    """The TLVs describing the client's TLS session, as hitch and ghostunnel send them."""
    tlvs: list[TLV] = []
    if tls.alpn:
        tlvs.append(TLV(PP2_TYPE_ALPN, tls.alpn.encode("ascii", "replace")))
    if tls.sni:
        tlvs.append(TLV(PP2_TYPE_AUTHORITY, tls.sni.encode("utf-8")))
    flags = PP2_CLIENT_SSL
    sub = [TLV(PP2_SUBTYPE_SSL_VERSION, tls.version.encode("ascii", "replace"))]
    verify = VERIFY_NO_CERTIFICATE
    if tls.peer_cert_der is not None:
        # The handshake succeeded with the certificate, so OpenSSL verified it (a service
        # that does not verify never asks for one).  Python's ssl cannot tell whether a
        # resumed session's certificate was sent again: both flags say "presented".
        flags |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
        verify = 0
        if tls.peer_cn:
            sub.append(TLV(PP2_SUBTYPE_SSL_CN, tls.peer_cn.encode("utf-8")))
    if tls.cipher:
        sub.append(TLV(PP2_SUBTYPE_SSL_CIPHER, tls.cipher.encode("ascii", "replace")))
    tlvs.append(SSLInfo(flags, verify, tuple(sub)).to_tlv())
    return tuple(tlvs)


def _describe(header: bytes) -> str:
    if header.startswith(b"PROXY"):
        return header.rstrip(b"\r\n").decode("ascii")
    return f"{len(header)} bytes"


SERVER_MODE = ProxyServer
CLIENT_MODE = None  # stunnel: "The 'proxy' protocol is not supported in the client mode"
