"""The two kinds of socket a tunnel joins: plain TCP and TLS we drive ourselves.

Both are ``asyncio.Protocol``s with the same small face towards the relay:
``send(data)``, ``send_eof()``, ``pause_reading()``, ``resume_reading()``, ``close()``
and ``abort()``; what they read they hand to ``peer.send``.

Why TLS is not the event loop's: asyncio's SSL transport cannot half-close (it has no
``write_eof``), and a tunnel must forward EOF each way independently — a client that
has finished sending may still be receiving megabytes.  So ``TLSEndpoint`` runs an
``ssl.SSLObject`` over two ``ssl.MemoryBIO``s on a plain TCP transport: bytes from the
socket go into the incoming BIO, OpenSSL turns them into plaintext (or handshake
replies), and whatever OpenSSL wants to send is drained from the outgoing BIO after
every step.  EOF towards a TLS peer is a close_notify alert followed by a TCP
half-close; a close_notify from the peer is EOF in that direction, and we can keep
writing after it.

Before an endpoint is linked to its peer (during the handshake and while the upstream
leg connects), plaintext it receives is held, not dropped: uvloop may deliver data
before ``pause_reading`` takes effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Protocol, cast

from tlstunnel.tls.errors import describe_tls_error

# Two scratch buffers per process, so an idle connection holds none of its own.
# Sockets are read straight into _RECEIVE (asyncio's BufferedProtocol): the loop calls
# get_buffer, reads, and calls buffer_updated with no other callback in between, so one
# buffer serves every connection.  Decrypted records are gathered in _DECRYPT and copied
# out once per socket read; that copy is what lets a transport keep what we pass to
# write() while the buffer is reused.
_RECEIVE = memoryview(bytearray(256 * 1024))
_DECRYPT_BUFFER = bytearray(256 * 1024)
_DECRYPT_VIEW = memoryview(_DECRYPT_BUFFER)
_RECORD_MAX = 16 * 1024
# Data that arrives before the other leg exists is held; past this much, reading pauses
# until it is linked (no pause below it: pausing and resuming cost two system calls on
# every connection, and most clients send little before their first answer).
_HOLD_LIMIT = 64 * 1024
# SO_LINGER on with a zero timeout: close() sends RST instead of FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)


class RelayEvents(Protocol):
    """What an endpoint tells the relay that owns it."""

    def activity(self) -> None: ...

    def read_finished(self, endpoint: Endpoint) -> None: ...

    def lost(self, endpoint: Endpoint, exc: BaseException | None) -> None: ...

    def failed(self, endpoint: Endpoint, reason: str) -> None: ...


def _write_eof(transport: asyncio.WriteTransport) -> None:
    """Half-close; a peer that has already closed entirely (the standard loop's
    shutdown(SHUT_WR) then fails with ENOTCONN) leaves nothing to half-close."""
    try:
        transport.write_eof()
    except OSError as exc:
        if exc.errno != errno.ENOTCONN:
            raise


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    """Disable Nagle: asyncio only does it for sockets it created with IPPROTO_TCP, and
    without it every close_notify waits ~40 ms behind a delayed ACK.  uvloop does it for
    every TCP transport, so there this costs nothing but a type check."""
    if type(transport).__module__.startswith("uvloop"):
        return
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Endpoint(asyncio.BufferedProtocol):
    """State shared by both kinds: the peer, held data, EOF flags, byte counts.

    ``send(data)`` may be given a view of a shared buffer: it is valid only during the
    call, so an endpoint that keeps data past it must copy it.
    """

    __slots__ = (
        "_held",
        "_held_eof",
        "_on_connected",
        "_reader",
        "_reading_paused",
        "bytes_sent",
        "closed",
        "lost_exc",
        "peer",
        "read_done",
        "relay",
        "reset_on_abort",
        "transport",
        "write_done",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Endpoint | None = None
        self.relay: RelayEvents | None = None
        self._held: list[bytes] = []
        self._held_eof = False
        self._reading_paused = False
        self._on_connected: Callable[[Endpoint], None] | None = None
        self._reader: asyncio.Future[None] | None = None  # a negotiator waits for data
        self.read_done = False  # this side sent EOF (or close_notify)
        self.write_done = False  # we sent EOF to this side
        self.closed = False  # connection_lost has run
        self.lost_exc: BaseException | None = None
        self.bytes_sent = 0  # plaintext bytes written to this side
        # stunnel's ``reset = yes``: a connection that fails ends with a TCP RST, so the
        # peer cannot mistake it for a clean end of data.
        self.reset_on_abort = True

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        set_nodelay(self.transport)
        if self._on_connected is not None:
            callback, self._on_connected = self._on_connected, None
            callback(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost_exc = exc
        if self.relay is not None:
            self.relay.lost(self, exc)
        else:
            self._wake_reader()
            self._lost_before_link(exc)

    def when_connected(self, callback: Callable[[Endpoint], None]) -> None:
        """Run ``callback(self)`` from ``connection_made`` (used for accepted sockets)."""
        self._on_connected = callback

    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()

    # -- the relay's side ------------------------------------------------------------

    def link(self, peer: Endpoint, relay: RelayEvents) -> None:
        """Start forwarding to ``peer``: first whatever was held, then live data."""
        self.peer = peer
        self.relay = relay
        held, self._held = self._held, []
        for chunk in held:
            peer.send(chunk)
        if self.closed:
            relay.lost(self, self.lost_exc)
        elif self._held_eof:
            self._finish_read()
        else:
            self.resume_reading()

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            if not self.transport.is_closing():
                self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now, unsent data included (an error or a deadline)."""
        transport = self.transport
        if transport is None:
            return
        if self.reset_on_abort and not transport.is_closing():
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECEIVE

    def buffer_updated(self, nbytes: int) -> None:
        raise NotImplementedError

    def send(self, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def send_eof(self) -> None:
        raise NotImplementedError

    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    # -- before the relay: a negotiator's reads and writes ----------------------------

    async def read_some(self) -> bytes:
        """What arrived since the last call (waiting for something if nothing has);
        ``b""`` once the peer has closed.  Only before ``link``."""
        while True:
            if self._held:
                data = b"".join(self._held)
                self._held = []
                self.resume_reading()
                return data
            if self._held_eof or self.closed:
                return b""
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None

    def take_held(self) -> bytes:
        """Forget and return whatever arrived but was not read yet (before ``link``)."""
        data = b"".join(self._held)
        self._held = []
        self.resume_reading()
        return data

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of what was received, to be read (or relayed) again."""
        if data:
            self._held.insert(0, data)

    def send_before_relay(self, data: bytes) -> None:
        """Write a negotiator's message; not counted in the relay's byte totals."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    # -- delivering what we read -----------------------------------------------------

    def _deliver(self, data: bytes | memoryview) -> None:
        peer = self.peer
        if peer is None:
            self._held.append(bytes(data))
            if sum(map(len, self._held)) > _HOLD_LIMIT:
                self.pause_reading()
            if self._reader is not None:
                self._wake_reader()
            return
        peer.send(data)
        relay = self.relay
        if relay is not None:
            relay.activity()

    def _finish_read(self) -> None:
        if self.read_done:
            return
        if self.peer is None:
            self._held_eof = True
            self._wake_reader()
            return
        self.read_done = True
        if self.relay is not None:
            self.relay.read_finished(self)

    def _lost_before_link(self, exc: BaseException | None) -> None:
        """Hook for endpoints that have something waiting on them before linking."""


class PlainEndpoint(Endpoint):
    """A plain TCP socket: the backend in server mode, the client in client mode."""

    __slots__ = ()

    def buffer_updated(self, nbytes: int) -> None:
        self._deliver(_RECEIVE[:nbytes])

    def eof_received(self) -> bool:
        self._finish_read()
        return True  # keep the socket open: we may still have to write to it

    def send(self, data: bytes | memoryview) -> None:
        transport = self.transport
        if transport is None or self.write_done:
            return
        self.bytes_sent += len(data)
        transport.write(data if isinstance(data, bytes) else bytes(data))

    def send_eof(self) -> None:
        if self.write_done:
            return
        self.write_done = True
        transport = self.transport
        if transport is not None and not transport.is_closing() and transport.can_write_eof():
            _write_eof(transport)


class HandshakeFailed(Exception):
    """The TLS handshake did not complete; the message says why, for a person."""

    def __init__(self, reason: str, cause: BaseException | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cause = cause


class TLSEndpoint(Endpoint):
    """A TCP socket carrying TLS that we encrypt and decrypt ourselves."""

    __slots__ = ("_established", "_incoming", "_outgoing", "_started", "handshake", "sslobj")

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
        deferred: bool = False,
    ) -> None:
        """``deferred``: the connection starts in plaintext (STARTTLS-style protocols,
        a PROXY header first); TLS begins at ``start_tls``."""
        super().__init__()
        self._started = not deferred
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )
        # Resolved when the handshake ends (or fails); the waiter may cancel it on a
        # deadline, so completion is tracked separately in ``_established``.
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._established = False

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._started and not self.sslobj.server_side:
            self._step_handshake()  # a client speaks first: send the ClientHello

    def start_tls(self, initial: bytes = b"") -> int:
        """Begin the handshake on a deferred endpoint.  ``initial`` is TLS data that
        arrived with the plaintext part (after a PROXY header); any other plaintext
        not yet read is dropped, and its length returned, so it can be logged."""
        dropped = len(self.take_held())
        self._held_eof = False
        self._started = True
        if initial:
            self._incoming.write(initial)
        if self.transport is not None and (initial or not self.sslobj.server_side):
            self._step_handshake()
        return dropped

    def send_before_relay(self, data: bytes) -> None:
        if not self._started:
            super().send_before_relay(data)
            return
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.sslobj.write(data)
            transport.write(self._outgoing.read())

    def buffer_updated(self, nbytes: int) -> None:
        if not self._started:
            self._deliver(_RECEIVE[:nbytes])  # plaintext before STARTTLS
            return
        self._incoming.write(_RECEIVE[:nbytes])
        if not self._established:
            self._step_handshake()
            if not self._established:
                return
        self._read_plaintext()

    def eof_received(self) -> bool:
        if not self._started:
            self._finish_read()
            return True
        if not self._established:
            self._fail_handshake("the peer closed the connection during the TLS handshake")
            return False
        # TCP EOF without close_notify: the peer (or a middlebox) cut the stream.  We
        # forward it as EOF all the same; the data that did arrive is complete records.
        self._finish_read()
        return True

    def _lost_before_link(self, exc: BaseException | None) -> None:
        if self._started and not self.handshake.done():
            if exc is None:
                reason = "the peer closed the connection during the TLS handshake"
            else:
                reason = f"the connection failed during the TLS handshake: {exc}"
            self.handshake.set_exception(HandshakeFailed(reason, exc))

    # -- handshake -------------------------------------------------------------------

    def _step_handshake(self) -> None:
        if self.handshake.done():
            return  # failed, or its waiter gave up (TIMEOUTbusy): nothing more to do
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except ssl.SSLError as exc:
            self._flush()  # send OpenSSL's alert, if it wrote one
            self._fail_handshake(None, exc)
            return
        self._flush()
        self._established = True
        if not self.handshake.done():
            self.handshake.set_result(None)

    def _fail_handshake(self, reason: str | None, exc: BaseException | None = None) -> None:
        if not self.handshake.done():
            server_side = self.sslobj.server_side
            text = reason or describe_tls_error(
                exc or Exception("unknown"), server_side=server_side
            )
            self.handshake.set_exception(HandshakeFailed(text, exc))
        if self.transport is not None:
            self.transport.close()

    # -- data ------------------------------------------------------------------------

    def _read_plaintext(self) -> None:
        read = self.sslobj.read
        view = _DECRYPT_VIEW
        limit = len(_DECRYPT_BUFFER) - _RECORD_MAX
        filled = 0
        finished = False
        try:
            while True:
                try:
                    count = cast(int, read(_RECORD_MAX, view[filled:]))  # into the buffer
                except ssl.SSLWantReadError:
                    break
                if count == 0:
                    finished = True  # close_notify (or EOF) from the peer
                    break
                filled += count
                if filled > limit:
                    self._deliver(bytes(view[:filled]))
                    filled = 0
        except ssl.SSLZeroReturnError:
            finished = True
        except ssl.SSLError as exc:
            if filled:
                self._deliver(bytes(view[:filled]))
            self._flush()
            if self.relay is not None:
                why = describe_tls_error(
                    exc, server_side=self.sslobj.server_side, in_handshake=False
                )
                self.relay.failed(self, why)
            else:
                self.abort()
            return
        if filled:
            self._deliver(bytes(view[:filled]))
        if self._outgoing.pending:
            self._flush()  # post-handshake messages: key updates, ticket replies
        if finished:
            self._finish_read()

    def send(self, data: bytes | memoryview) -> None:
        transport = self.transport
        if transport is None or self.write_done:
            return
        self.bytes_sent += len(data)
        self.sslobj.write(data)  # copies: the view may be reused once we return
        transport.write(self._outgoing.read())

    def send_eof(self) -> None:
        """Send close_notify, then half-close TCP; the peer may go on sending to us."""
        if self.write_done:
            return
        self.write_done = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            self.sslobj.unwrap()
        except ssl.SSLWantReadError:
            pass  # normal: our close_notify is out, the peer's has not arrived yet
        except ssl.SSLError:
            pass  # the session is already broken; closing is all that is left
        self._flush()
        if transport.can_write_eof():
            _write_eof(transport)

    def _flush(self) -> None:
        if self._outgoing.pending and self.transport is not None:
            self.transport.write(self._outgoing.read())
