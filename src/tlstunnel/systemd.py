"""systemd integration: readiness and status notifications, the watchdog, socket activation.

This module speaks systemd's documented protocols itself (sd_notify(3),
sd_watchdog_enabled(3), sd_listen_fds(3)): no libsystemd, nothing beyond the standard
library, and on a platform without Unix sockets (Windows) every part does nothing.

Notifications
-------------
With ``Type=notify`` the service manager puts a Unix datagram socket in
``NOTIFY_SOCKET``: a path, or ``@name`` in Linux's abstract namespace.  Each message is
one datagram of newline-separated ``KEY=VALUE`` lines.  The server sends ``READY=1`` once
every listener accepts, ``RELOADING=1`` with ``MONOTONIC_USEC`` when a SIGHUP reload
starts and ``READY=1`` again when it is over (whatever the outcome; ``STATUS=`` says
which), and ``STOPPING=1`` when a stop begins.  Sending never blocks and never raises: a
tunnel must not stall or die because its supervisor is slow, full or gone.

Watchdog
--------
``WATCHDOG_USEC`` (meant for us when ``WATCHDOG_PID`` is unset or is our pid) asks for
``WATCHDOG=1`` more often than that.  The pings are timer callbacks on the event loop,
every half period, so a stuck loop (a blocking call, a busy loop) stops pinging and
systemd restarts the service.  Pinging from a thread would hide exactly the failure the
watchdog exists to catch.

Socket activation
-----------------
``LISTEN_FDS`` descriptors, numbered from 3, are ours when ``LISTEN_PID`` is our pid;
``LISTEN_FDNAMES`` names them.  stunnel configurations do not name descriptors, so, like
stunnel, a service adopts the inherited listening socket bound to exactly the address its
``accept`` resolves to (family, address and port; ``0.0.0.0`` matches only ``0.0.0.0``;
port 0 matches nothing).  The variables leave our environment once read, the descriptors
become close-on-exec, and the caller closes what no service claimed, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

LISTEN_FDS_START = 3
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
# What a program we start (``exec =``) must not inherit: they speak for this process,
# and a per-connection program that notified systemd would confuse it.  NOTIFY_SOCKET
# and WATCHDOG_* stay in our own environment (reloads notify too); LISTEN_* is removed
# from it as soon as it has been read.
SERVICE_MANAGER_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", *LISTEN_VARIABLES)


def _environment() -> MutableMapping[str, str]:
    return os.environ


# -- notifications -----------------------------------------------------------------------


def under_notify_supervision(environ: Mapping[str, str] | None = None) -> bool:
    """True when a service manager waits for our notifications (``Type=notify``).

    Such a manager tracks the process it started: forking into the background would make
    it lose us, so ``foreground = no`` is not honoured then.
    """
    env = _environment() if environ is None else environ
    return bool(env.get("NOTIFY_SOCKET"))


def notify_address(value: str) -> bytes | None:
    """The socket address a ``NOTIFY_SOCKET`` value names, or None if we cannot use it."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])  # the abstract namespace
    if value.startswith("/"):
        return os.fsencode(value)
    return None  # relative paths are invalid; vsock: addresses are not supported


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock ``MONOTONIC_USEC`` is read against."""
    if sys.platform == "win32":
        return time.monotonic_ns() // 1000
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Sends sd_notify(3) datagrams; does nothing at all when ``NOTIFY_SOCKET`` is unset."""

    def __init__(self, address: bytes | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._connected = False
        family = getattr(socket, "AF_UNIX", None)
        if address is None or family is None:
            return
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM)  # close-on-exec, like every socket
        except OSError:
            return
        sock.setblocking(False)
        self._sock = sock
        # Connected now, the socket reaches the manager after a chroot hides the path
        # (and after setuid).  If nobody listens yet, each send looks the address up.
        with contextlib.suppress(OSError):
            sock.connect(address)
            self._connected = True

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = _environment() if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        return cls(notify_address(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *fields: str) -> bool:
        """Send one message; False when it could not be sent (never raises, never waits)."""
        if self._sock is None or self.address is None:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        if self._connected:
            try:
                self._sock.send(message)
            except (BlockingIOError, InterruptedError):
                return False  # the manager's queue is full: drop it, never wait
            except OSError:
                pass  # the socket we connected to is gone: look the address up again
            else:
                return True
        try:
            self._sock.sendto(message, self.address)
        except OSError:
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"MAINPID={os.getpid()}", _status(status))

    def reloading(self, status: str) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", _status(status))

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", _status(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    return "STATUS=" + " ".join(text.split("\n"))


# -- watchdog ----------------------------------------------------------------------------


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None."""
    env = _environment() if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != (os.getpid() if pid is None else pid)):
        return None  # the watchdog is meant for another process (our parent, say)
    return int(usec) / 2_000_000


class Watchdog:
    """``WATCHDOG=1`` from the running event loop every ``interval`` seconds."""

    def __init__(self, notifier: Notifier, interval: float) -> None:
        self.notifier = notifier
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def from_environment(
        cls, notifier: Notifier, environ: Mapping[str, str] | None = None
    ) -> Watchdog | None:
        interval = watchdog_interval(environ)
        if interval is None or not notifier.enabled:
            return None
        return cls(notifier, interval)

    def start(self) -> None:
        """Ping now and then every interval; call from the event loop."""
        if self._handle is None:
            self._ping()

    def _ping(self) -> None:
        self.notifier.send("WATCHDOG=1")
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._ping)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


# -- socket activation -------------------------------------------------------------------


@dataclass(eq=False)
class InheritedSocket:
    """One descriptor systemd passed us; ``sock`` is None when it is not a usable socket."""

    fd: int
    name: str
    sock: socket.socket | None
    problem: str = ""
    claimed: bool = False

    def describe(self) -> str:
        return f"FD={self.fd} ({self.name})" if self.name else f"FD={self.fd}"


def _address_key(family: int, sockaddr: tuple[Any, ...]) -> tuple[int, bytes, int, int]:
    """(family, packed address, port, IPv6 scope): what makes two bound addresses equal."""
    host = str(sockaddr[0]).split("%", 1)[0]
    scope = int(sockaddr[3]) if family == socket.AF_INET6 and len(sockaddr) > 3 else 0
    return (family, socket.inet_pton(family, host), int(sockaddr[1]), scope)


def inspect_descriptor(fd: int, name: str) -> InheritedSocket:
    """What descriptor ``fd`` is, made close-on-exec; ``problem`` says why we cannot use it."""
    try:
        os.set_inheritable(fd, False)  # no child of ours inherits it
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return InheritedSocket(fd, name, None, f"not an open socket ({reason})")
    entry = InheritedSocket(fd, name, sock)
    accepting = getattr(socket, "SO_ACCEPTCONN", None)
    try:
        listening = accepting is None or bool(sock.getsockopt(socket.SOL_SOCKET, accepting))
    except OSError:
        listening = False
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        entry.problem = "not a TCP socket"
    elif not listening:
        entry.problem = "not a listening socket (Accept=yes is not supported)"
    return entry


class InheritedSockets:
    """The descriptors systemd passed us, for ``take`` to hand out by bound address."""

    def __init__(self, sockets: list[InheritedSocket]) -> None:
        self.sockets = sockets

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> InheritedSockets:
        """Read and unset ``LISTEN_*``; empty unless they are meant for this process."""
        env = _environment() if environ is None else environ
        values = {name: env.pop(name, "") for name in LISTEN_VARIABLES}
        pid, count = values["LISTEN_PID"], values["LISTEN_FDS"]
        if sys.platform == "win32" or not (pid.isdigit() and count.isdigit()):
            return cls([])
        if int(pid) != os.getpid():
            return cls([])  # meant for another process: not ours to touch
        names = values["LISTEN_FDNAMES"].split(":") if values["LISTEN_FDNAMES"] else []
        found: list[InheritedSocket] = []
        for index in range(int(count)):
            name = names[index] if index < len(names) else ""
            found.append(inspect_descriptor(LISTEN_FDS_START + index, name))
        return cls(found)

    def take(self, host: str, port: int) -> InheritedSocket | None:
        """Claim the listening socket bound to what ``host``:``port`` resolves to."""
        free = [s for s in self.sockets if s.sock is not None and not s.problem and not s.claimed]
        if port == 0 or not free:
            return None
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            family, _type, _proto, _name, sockaddr = infos[0]  # what binding would use
            wanted = _address_key(family, sockaddr)
        except (OSError, ValueError):
            return None  # binding will report the address
        for entry in free:
            assert entry.sock is not None
            try:
                bound = _address_key(entry.sock.family, entry.sock.getsockname())
            except (OSError, ValueError):
                continue
            if bound == wanted:
                entry.claimed = True
                entry.sock.setblocking(False)
                return entry
        return None

    def close_unclaimed(self) -> list[str]:
        """Close every descriptor no service took; one warning line for each."""
        warnings: list[str] = []
        for entry in self.sockets:
            if entry.claimed:
                continue
            if entry.sock is not None:
                try:
                    where = _display(entry.sock)
                except OSError:
                    where = "its address"
                why = entry.problem or f"no service accepts on {where}"
                entry.sock.close()
            else:
                why = entry.problem
                with contextlib.suppress(OSError):
                    os.close(entry.fd)
            warnings.append(f"Closing {entry.describe()} received from systemd: {why}")
        self.sockets = [s for s in self.sockets if s.claimed]
        return warnings


def _display(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    if sock.family == socket.AF_INET:
        return f"{name[0]}:{name[1]}"
    return str(name)
