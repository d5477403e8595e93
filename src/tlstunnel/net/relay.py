"""The relay: two linked endpoints, their EOFs, their deadlines, and how they end.

Theory of operation
-------------------
A tunnel is two byte streams running in opposite directions.  Each endpoint hands what
it reads straight to its peer's ``send`` (no queue of our own: the transports buffer),
so a byte costs one callback per socket read.  The directions are independent:

* **EOF travels.**  When one side finishes sending (TCP FIN, or a TLS close_notify) the
  relay forwards it to the other side (TCP half-close, or close_notify then half-close)
  and keeps carrying the opposite direction.  Only when both directions have finished
  are the sockets closed — after their buffered data has been written out.
* **Backpressure.**  When a transport's write buffer passes its high-water mark asyncio
  calls ``pause_writing`` on that endpoint, which pauses *reading* on its peer; the
  matching ``resume_writing`` resumes it.  Memory per connection stays bounded by the
  transports' limits however slow a reader is.
* **Deadlines, not per-read timeouts.**  One timer per relay.  While both directions
  are open the limit is ``TIMEOUTidle`` of silence; once one has finished it becomes
  ``TIMEOUTclose`` (stunnel's rule: how long to wait for the other side to finish).
  Activity only stamps the time; the timer, when it fires, re-arms itself for the rest
  of the span, so no timer is touched on the data path.
* **Ending.**  A clean end ("Connection closed") needs both EOFs.  A reset from either
  socket, a TLS error or a deadline aborts both sides ("Connection reset").  Either way
  ``done`` resolves once with the outcome and the per-connection task logs it.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass

from tlstunnel.net.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a relay ended.  ``reason`` is None for a clean close."""

    reason: str | None
    bytes_to_a: int
    bytes_to_b: int


class Relay:
    """Joins endpoint ``a`` (the accepted side) and ``b`` (the upstream side)."""

    __slots__ = (
        "_close_timeout",
        "_idle_timeout",
        "_last_activity",
        "_loop",
        "_reason",
        "_timer",
        "a",
        "b",
        "done",
    )

    def __init__(
        self,
        a: Endpoint,
        b: Endpoint,
        *,
        idle_timeout: float,
        close_timeout: float,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.a = a
        self.b = b
        self._idle_timeout = idle_timeout
        self._close_timeout = close_timeout
        self._last_activity = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._reason: str | None = None
        self.done: asyncio.Future[Outcome] = self._loop.create_future()

    def start(self) -> None:
        self._arm(self._idle_timeout)
        self.a.link(self.b, self)
        self.b.link(self.a, self)

    # -- events from the endpoints ---------------------------------------------------

    def activity(self) -> None:
        self._last_activity = self._loop.time()

    def read_finished(self, endpoint: Endpoint) -> None:
        """``endpoint`` has nothing more to send: pass its EOF on."""
        self.activity()
        peer = self.b if endpoint is self.a else self.a
        peer.send_eof()
        if self.a.read_done and self.b.read_done:
            self._close_both()
        else:
            self._arm(self._close_timeout)

    def lost(self, endpoint: Endpoint, exc: BaseException | None) -> None:
        if self.done.done():
            return
        peer = self.b if endpoint is self.a else self.a
        if endpoint.write_done and isinstance(exc, OSError) and exc.errno == errno.ENOTCONN:
            # Our half-close (shutdown) met a peer that had already closed its socket:
            # uvloop reports that as ENOTCONN.  Everything it sent had arrived before
            # its close, so this side ended; it did not break.
            exc = None
        gone_after_eof = (
            endpoint.read_done
            and peer.read_done
            and isinstance(exc, (BrokenPipeError, ConnectionResetError))
        )
        if exc is not None and not gone_after_eof:
            self._reason = self._reason or _describe_os_error(exc)
            self._abort_both()
            return
        # When both sides had finished sending, a peer that then closed its socket
        # entirely (so our last writes met EPIPE or RST) ended the connection rather
        # than broke it; stunnel logs this as closed too.  If the other side was still
        # sending, its bytes are lost: that stays a reset (above).
        # Closed without an error: whatever this side sent has been forwarded, but it
        # can no longer receive, so the tunnel ends once the peer has flushed.
        if not endpoint.read_done:
            endpoint.read_done = True
            peer.send_eof()
        if not peer.closed:
            self._close_both()
        self._maybe_finish()

    def failed(self, endpoint: Endpoint, reason: str) -> None:
        if self._reason is None:
            self._reason = reason
        self._abort_both()

    # -- ending ----------------------------------------------------------------------

    def shutdown(self, reason: str) -> None:
        """End the tunnel from outside (server stopping): close both sides now."""
        if self._reason is None:
            self._reason = reason
        self._abort_both()

    def _close_both(self) -> None:
        self.activity()
        self.a.close()
        self.b.close()
        # A peer that never reads would keep close() waiting on its buffer forever.
        self._arm(self._close_timeout)
        self._maybe_finish()

    def _abort_both(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.a.abort()
        self.b.abort()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.a.closed and self.b.closed and not self.done.done():
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.done.set_result(Outcome(self._reason, self.a.bytes_sent, self.b.bytes_sent))

    # -- deadlines -------------------------------------------------------------------

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(self._last_activity + seconds, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.done.done():
            return
        closing = self.a.read_done or self.b.read_done
        limit = self._close_timeout if closing else self._idle_timeout
        deadline = self._last_activity + limit
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            return
        if closing:
            self._reason = "TIMEOUTclose exceeded: closing"
        else:
            self._reason = "TIMEOUTidle exceeded: sending reset"
        self._abort_both()


def _describe_os_error(exc: BaseException) -> str:
    if isinstance(exc, ConnectionResetError):
        return "Connection reset by peer"
    if isinstance(exc, BrokenPipeError):
        return "Broken pipe"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
