"""Listening sockets: binding an ``accept`` address and running its accept loop.

A ``Listener`` outlives configurations: on reload a service whose ``accept`` address is
unchanged keeps its socket (no gap in which clients are refused, and no re-bind that a
dropped privilege could forbid) and the listener is simply pointed at the new settings.
Accepted sockets are handed to ``on_accept``, which returns the protocol for them.

Why the accept loop is ours
---------------------------
When the process runs out of descriptors (or the kernel out of memory) ``accept`` fails
and the waiting client stays in the listen queue.  Neither event loop handles it well,
as measured with RLIMIT_NOFILE lowered under a connection flood:

* uvloop (libuv) closes a spare descriptor, accepts every queued client and closes them
  at once: clients that a moment later could have been served are cut off (74 of 168
  in the measurement), and nothing is logged.  On ENOBUFS/ENOMEM, by its source, uvloop
  closes the listening socket for good, silently.
* The standard loop (3.11 up to the fix of CPython gh-151615) logs a traceback and
  schedules a retry for every remaining iteration of its accept batch -- our backlog,
  4096 -- so each retry multiplies: about 100,000 tracebacks in 3 s, the loop busy
  with nothing else.

So the listener accepts itself, in a reader callback on the non-blocking socket, and
on the errors in ``ACCEPT_CAPACITY_ERRNOS`` (trio's name) it stops reading the socket
for ``ACCEPT_BACKOFF`` seconds and tries again: queued clients wait in the kernel's
queue instead of being dropped, established connections go on being served, and the
log gets one line when the back-off starts and one when accepting works again.
Accepted sockets go to the loop through ``loop.connect_accepted_socket``.  Against
uvloop's accept, written in C, that costs 20-40 us of CPU per connection (a Python
socket object and a task per hand-off; measured with plain TCP connections): about 5%
of the tunnel's CPU per full TLS handshake in ``bench/run.py`` (0.70 -> 0.73-0.76 ms),
handshakes per second unchanged.  On the standard loop it costs nothing: that is how
its own accept hands sockets over.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence

from tlstunnel.config.model import Address, SocketOption
from tlstunnel.log import DEBUG, ERR, NOTICE, Log
from tlstunnel.log import log as process_log
from tlstunnel.net.sockopts import apply_socket_options

# Under connection storms the kernel's default queue (asyncio passes 100) overflows and
# clients see resets; ask for the system maximum (Linux caps it at net.core.somaxconn).
LISTEN_BACKLOG = max(getattr(socket, "SOMAXCONN", 128), 4096)

# accept() errors that mean "out of resources for now": back off and retry, as trio does.
ACCEPT_CAPACITY_ERRNOS = frozenset(
    {
        errno.EMFILE,  # this process is at RLIMIT_NOFILE
        errno.ENFILE,  # the whole system is out of file descriptors
        errno.ENOMEM,
        errno.ENOBUFS,
    }
)
# accept() errors that concern one queued client only (Linux passes on errors pending
# on the new socket, and a firewall hook may refuse it): skip it and go on.
_CLIENT_ERRNO_NAMES = (
    "EPROTO EPERM ENETDOWN ENOPROTOOPT EHOSTDOWN ENONET EHOSTUNREACH EOPNOTSUPP ENETUNREACH"
)
ACCEPT_CLIENT_ERRNOS = frozenset(
    getattr(errno, name) for name in _CLIENT_ERRNO_NAMES.split() if hasattr(errno, name)
)
# How long the socket goes unread after such an error before accept() is tried again.
ACCEPT_BACKOFF = 0.1
# Connections accepted per readiness callback at most, so one busy listener cannot keep
# the loop from the handshakes of the connections it has just accepted.
ACCEPT_BATCH = 256


def listen_host(address: Address) -> str:
    """stunnel's rule: ``accept = PORT`` listens on every IPv4 address."""
    return address.host if address.host is not None else "0.0.0.0"


def bind_socket(address: Address, options: Sequence[SocketOption]) -> socket.socket:
    """Create, configure, bind and listen; raises OSError with the system's reason."""
    infos = socket.getaddrinfo(
        listen_host(address), address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _type, _proto, _name, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if sys.platform == "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        apply_socket_options(sock, options, "a")
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_address(sock: socket.socket) -> str:
    """The address actually bound (port 0 becomes the real port), stunnel-style."""
    name = sock.getsockname()
    if isinstance(name, str | bytes):  # a Unix socket's path
        return os.fsdecode(name)
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


class Listener:
    """One bound socket; ``on_accept`` is looked up at each accept, so it can change."""

    def __init__(self, address: Address, sock: socket.socket, log: Log | None = None) -> None:
        self.address = address
        self.sock = sock
        self.display = bound_address(sock)
        self.on_accept: Callable[[], asyncio.BaseProtocol] | None = None
        self.log = log if log is not None else process_log
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._backoff: asyncio.TimerHandle | None = None
        self._backoff_started = 0.0
        self._backoff_retries = 0
        self._handoffs: set[asyncio.Task[object]] = set()

    def key(self) -> tuple[str, int]:
        return (listen_host(self.address), self.address.port)

    @property
    def started(self) -> bool:
        """True from ``start`` to ``close`` (also while backing off)."""
        return self._fd >= 0

    async def start(self) -> None:
        """Begin accepting (once; later calls do nothing)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.sock.setblocking(False)  # systemd may pass a blocking socket
        self._fd = self.sock.fileno()
        self._loop.add_reader(self._fd, self._accept_ready)

    def close(self) -> None:
        """Stop accepting; connections already accepted are not affected."""
        if self._backoff is not None:
            self._backoff.cancel()
            self._backoff = None
        if self._loop is not None and self._fd >= 0 and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._fd = -1
        self.sock.close()

    # -- the accept loop ---------------------------------------------------------------

    def _accept_ready(self) -> None:
        """The socket is readable: accept what is queued, up to ``ACCEPT_BATCH``."""
        accept = self.sock.accept
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _address = accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued: take the next one
            except OSError as exc:
                if exc.errno in ACCEPT_CLIENT_ERRNOS:
                    continue
                # Out of resources -- or something unforeseen: pausing is what keeps an
                # error that repeats from spinning the loop and flooding the log.
                self._back_off(exc)
                return
            if self._backoff_retries:
                self._report_recovered()
            self._hand_off(conn)

    def _hand_off(self, conn: socket.socket) -> None:
        factory = self.on_accept
        loop = self._loop
        if factory is None or loop is None:
            conn.close()
            return
        try:
            task: asyncio.Task[object] = loop.create_task(
                loop.connect_accepted_socket(factory, conn)
            )
        except BaseException:
            conn.close()
            raise
        self._handoffs.add(task)
        task.add_done_callback(functools.partial(self._handed_off, conn))

    def _handed_off(self, conn: socket.socket, task: asyncio.Task[object]) -> None:
        self._handoffs.discard(task)
        if task.cancelled():
            conn.close()
            return
        exc = task.exception()
        if exc is not None:
            conn.close()  # may be closed already; a factory that raised left it open
        if isinstance(exc, OSError):
            # The transport could not be set up (the client reset at once, say): the
            # loop has closed the socket and the connection never started.
            self.log(DEBUG, f"Accept on {self.display}: {_describe(exc)}")
        elif exc is not None:
            self.log(ERR, f"Accept on {self.display}: internal error: {type(exc).__name__}: {exc}")

    # -- back-off ---------------------------------------------------------------------

    def _back_off(self, exc: OSError) -> None:
        loop = self._loop
        assert loop is not None
        loop.remove_reader(self._fd)
        if self._backoff_retries == 0:
            self._backoff_started = time.monotonic()
            self.log(
                ERR,
                f"Accept on {self.display}: {_describe(exc)}: not accepting new connections "
                f"for {ACCEPT_BACKOFF * 1000:.0f} ms at a time until it clears; "
                "connections already open go on",
            )
        self._backoff_retries += 1
        self._backoff = loop.call_later(ACCEPT_BACKOFF, self._retry)

    def _retry(self) -> None:
        self._backoff = None
        if self._loop is None or self._fd < 0:
            return
        self._loop.add_reader(self._fd, self._accept_ready)

    def _report_recovered(self) -> None:
        waited = time.monotonic() - self._backoff_started
        self.log(
            NOTICE,
            f"Accept on {self.display}: accepting again after {waited:.1f} s "
            f"({self._backoff_retries} pause(s))",
        )
        self._backoff_retries = 0


def _describe(exc: OSError) -> str:
    if exc.errno is None:
        return str(exc)
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{exc.strerror or os.strerror(exc.errno)} ({name})"
