"""``exec``: a local program as one side of the tunnel, on a socket pair or a pty.

Theory of operation
-------------------
For each connection (or once, for ``exec`` + ``connect``) the program is started with
``execArgs`` as its argv (``$0`` first) and its standard input and output joined to
one end of a ``socket.socketpair()``; our end becomes an ordinary endpoint through
``loop.connect_accepted_socket``, so half-close and backpressure work exactly as for
TCP.  With ``pty = yes`` the program gets a pseudo-terminal instead: it runs in a new
session with the slave as its controlling terminal, and our side is the master,
driven by ``DescriptorTransport`` (``add_reader``/``add_writer``, which both the
standard loop and uvloop provide).  A terminal cannot half-close, so EOF towards the
program is the terminal's EOF character when the program reads lines, as a person
typing Ctrl-D would send it; a read error EIO from the master means every holder of
the slave is gone, which is the program's EOF.

The program's standard error goes into the tunnel too (stunnel does the same), except
when the log itself goes to stderr (``foreground = yes``): then it shares our stderr.

Environment, as stunnel sets it: ``REMOTE_HOST`` and ``REMOTE_PORT`` (the client's
address, numeric) and, when the client presented a verified certificate,
``SSL_CLIENT_DN`` and ``SSL_CLIENT_I_DN`` (subject and issuer in OpenSSL's one-line
form, ``C=PL, O="Ex, Inc.", CN=client``), on top of our own environment.

Children are reaped as soon as they exit (a pidfd watched by the loop on Linux, a
waiting thread elsewhere), and the exit is logged in stunnel's words ("Child process
N finished with code C").  Once the program has exited *and* everything it wrote has
been read, its side of the tunnel is closed, which ends the connection: a client is
not left waiting on a program that is gone.

``subprocess.Popen`` starts the program, not asyncio's subprocess API: uvloop ignores
``executable`` and so cannot give the program its own ``$0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

from tlstunnel.config.model import ServiceConfig
from tlstunnel.log import INFO, ConnectionLog
from tlstunnel.net.endpoint import Endpoint
from tlstunnel.systemd import SERVICE_MANAGER_VARIABLES

if sys.platform != "win32":  # imported now: after a chroot they could not be found
    import fcntl
    import termios

_HIGH_WATER = 64 * 1024
_LOW_WATER = 16 * 1024


# -- a transport over plain descriptors ------------------------------------------------


class DescriptorTransport(asyncio.Transport):
    """An ``asyncio.Transport`` over non-socket descriptors: a pty master (one
    descriptor both ways) or a pair of pipes (standard input and output).

    It feeds a ``BufferedProtocol`` (our endpoints) and owns its descriptors: they are
    closed when the transport is.  ``write_eof`` closes the write descriptor when it is
    separate; on a single descriptor (a terminal) it calls ``terminal_eof`` for the
    bytes that mean EOF there.  EIO on a read is end of file (a pty whose slave is
    closed), EIO or EPIPE on a write is a broken pipe.
    """

    def __init__(
        self,
        protocol: asyncio.BufferedProtocol,
        read_fd: int,
        write_fd: int,
        *,
        terminal_eof: Callable[[], bytes] | None = None,
        program_exited: asyncio.Future[None] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(dict(extra or {}))
        self._loop = asyncio.get_running_loop()
        self._protocol = protocol
        self._read_fd = read_fd
        self._write_fd: int | None = write_fd
        self._terminal_eof = terminal_eof
        self._program_exited = program_exited
        self._hung_up = False  # EIO: the program has closed every descriptor of the slave
        self._buffer = bytearray()
        self._reading = False
        self._paused_reading = False
        self._writing_paused = False
        self._eof_pending = False
        self._closing = False
        self._closed = False
        for fd in {read_fd, write_fd}:
            os.set_blocking(fd, False)
        # Connected at once (asyncio's own transports defer this a loop turn): whoever
        # creates one can use the endpoint as soon as the constructor returns.
        self._protocol.connection_made(self)
        if not self._closing and not self._paused_reading:
            self._add_reader()

    # -- reading ---------------------------------------------------------------------

    def _add_reader(self) -> None:
        if not self._reading and not self._closed:
            self._reading = True
            self._loop.add_reader(self._read_fd, self._read_ready)

    def _remove_reader(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._read_fd)

    def _read_ready(self) -> None:
        buffer = self._protocol.get_buffer(-1)
        try:
            count = os.readv(self._read_fd, [buffer])
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                self._finish(exc)
                return
            count = 0  # a pty master after the last holder of the slave closed it
            self._hung_up = True
        if count:
            self._protocol.buffer_updated(count)
            return
        self._remove_reader()
        if not self._protocol.eof_received():
            self.close()

    def pause_reading(self) -> None:
        self._paused_reading = True
        self._remove_reader()

    def resume_reading(self) -> None:
        if self._paused_reading:
            self._paused_reading = False
            if not self._closing:
                self._add_reader()

    def is_reading(self) -> bool:
        return self._reading

    # -- writing ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._write_fd is None or self._closed or self._eof_pending or not data:
            return
        if not self._buffer:
            try:
                written = os.write(self._write_fd, data)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError as exc:
                self._finish(_broken(exc))
                return
            data = memoryview(data)[written:]
            if not data:
                return
            self._loop.add_writer(self._write_fd, self._write_ready)
        self._buffer += data
        if not self._writing_paused and len(self._buffer) > _HIGH_WATER:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _write_ready(self) -> None:
        assert self._write_fd is not None
        try:
            written = os.write(self._write_fd, self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(_broken(exc))
            return
        del self._buffer[:written]
        if self._writing_paused and len(self._buffer) <= _LOW_WATER:
            self._writing_paused = False
            self._protocol.resume_writing()
        if self._buffer:
            return
        self._loop.remove_writer(self._write_fd)
        if self._eof_pending:
            self._eof_pending = False
            self._do_write_eof()
        if self._closing:
            self._finish(None)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        if self._write_fd is None or self._eof_pending:
            return
        if self._buffer:
            self._eof_pending = True
        else:
            self._do_write_eof()

    def _do_write_eof(self) -> None:
        if self._write_fd is None:
            return
        if self._write_fd != self._read_fd:
            os.close(self._write_fd)
            self._write_fd = None
        elif self._terminal_eof is not None:
            self.write(self._terminal_eof())

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (_LOW_WATER, _HIGH_WATER)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Fixed limits: accepted for the interface, not changed."""

    # -- ending ----------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing or self._closed

    def close(self) -> None:
        if self._closing or self._closed:
            return
        self._closing = True
        self._remove_reader()
        if not self._buffer:
            self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        self._finish(None)

    def _finish(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = self._closing = True
        self._remove_reader()
        if self._buffer and self._write_fd is not None:
            self._loop.remove_writer(self._write_fd)
        self._buffer.clear()
        fds = {fd for fd in (self._read_fd, self._write_fd) if fd is not None}
        self._write_fd = None
        exiting = self._program_exited
        if self._hung_up and exiting is not None and not exiting.done():
            # The program closed the terminal and is on its way out (in its exit handlers,
            # say): closing the master now would hang it up and kill it with SIGHUP.
            exiting.add_done_callback(lambda _: _close_all(fds))
        else:
            _close_all(fds)
        self._loop.call_soon(self._protocol.connection_lost, exc)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = cast(asyncio.BufferedProtocol, protocol)


def _close_all(fds: set[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _broken(exc: OSError) -> OSError:
    if exc.errno in (errno.EIO, errno.EPIPE):
        return BrokenPipeError(errno.EPIPE, "the program is gone")
    return exc


# -- the program's side: close it once the program is gone and drained ---------------


class _ProgramSide(asyncio.BufferedProtocol):
    """Sits between a transport and the endpoint for the program: forwards every call,
    and closes the transport once the program has exited and its output was read."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: asyncio.BaseTransport | None = None
        self._eof = False
        self._exited = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.endpoint.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)) and not self._eof:
            # A program that exits without reading all its input leaves a reset on the
            # socket pair (and a write into it fails).  It has ended, not broken: what it
            # wrote was read first, so pass its end on as EOF, as stunnel does.
            self._eof = True
            self.endpoint.eof_received()
        self.endpoint.connection_lost(exc)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.endpoint.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.endpoint.buffer_updated(nbytes)

    def eof_received(self) -> bool | None:
        self._eof = True
        keep_open = self.endpoint.eof_received()
        if self._exited:
            asyncio.get_running_loop().call_soon(self._close)
        return keep_open

    def pause_writing(self) -> None:
        self.endpoint.pause_writing()

    def resume_writing(self) -> None:
        self.endpoint.resume_writing()

    def program_exited(self) -> None:
        self._exited = True
        if self._eof:
            self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# -- starting programs -----------------------------------------------------------------


class Launcher:
    """Starts a service's ``exec`` program and watches it until it has been reaped."""

    # Set once at start from ``foreground = yes``: the program's stderr then stays ours
    # (the log's terminal) instead of going into the tunnel.
    stderr_to_terminal: ClassVar[bool] = False

    def __init__(self, config: ServiceConfig) -> None:
        if config.exec_path is None:
            raise ValueError("a Launcher needs exec")
        self.config = config
        self.program = config.exec_path
        self._watchers: set[asyncio.Future[None]] = set()

    async def start(
        self, endpoint: Endpoint, log: ConnectionLog, environment: Mapping[str, str]
    ) -> Endpoint:
        """Start the program with ``environment`` added to ours, and connect ``endpoint``
        to its standard input and output.  Raises OSError if it cannot be started."""
        loop = asyncio.get_running_loop()
        side = _ProgramSide(endpoint)
        exited: asyncio.Future[None] = loop.create_future()
        if self.config.pty:
            master, process = self._spawn_on_pty(environment)
            DescriptorTransport(
                side,
                master,
                master,
                terminal_eof=lambda: _terminal_eof(master),
                program_exited=exited,
            )
        else:
            ours, process = self._spawn_on_socketpair(environment)
            try:
                await loop.connect_accepted_socket(lambda: side, ours)
            except BaseException:
                ours.close()
                raise
        log(INFO, f"Local mode child started (PID={process.pid})")
        self._watch(process, side, log, exited)
        return endpoint

    def _spawn_on_socketpair(
        self, environment: Mapping[str, str]
    ) -> tuple[socket.socket, subprocess.Popen[bytes]]:
        ours, theirs = socket.socketpair()
        try:
            process = self._popen(theirs.fileno(), environment, None)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours, process

    def _spawn_on_pty(self, environment: Mapping[str, str]) -> tuple[int, subprocess.Popen[bytes]]:
        if sys.platform == "win32":
            raise OSError("pty needs a Unix system")
        master, slave = os.openpty()

        def take_terminal() -> None:  # in the child, before exec
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        try:
            process = self._popen(slave, environment, take_terminal)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return master, process

    def _popen(
        self,
        fd: int,
        environment: Mapping[str, str],
        preexec: Callable[[], None] | None,
    ) -> subprocess.Popen[bytes]:
        # Not systemd's variables: a per-connection program must not talk to the service
        # manager on our behalf (READY/STOPPING would be honoured under NotifyAccess=all).
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_MANAGER_VARIABLES}
        env.update(environment)
        ignored = _ignored_signals()
        # An ignored signal stays ignored across exec (a handled one does not), and so
        # does a blocked one (seen on Python 3.13): give the program stunnel's defaults.
        setup = preexec

        def reset_signals() -> None:
            if hasattr(signal, "pthread_sigmask"):
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
            for signum in ignored:
                signal.signal(signum, signal.SIG_DFL)
            if setup is not None:
                setup()

        return subprocess.Popen(
            list(self.config.exec_args),
            executable=self.program,
            stdin=fd,
            stdout=fd,
            stderr=None if self.stderr_to_terminal else fd,
            env=env,
            close_fds=True,
            preexec_fn=reset_signals,  # noqa: PLW1509 -- pty (setsid, terminal), ignored signals
        )

    def _watch(
        self,
        process: subprocess.Popen[bytes],
        side: _ProgramSide,
        log: ConnectionLog,
        exited: asyncio.Future[None],
    ) -> None:
        self._watchers.add(exited)

        def reaped() -> None:
            self._watchers.discard(exited)
            if not exited.done():
                exited.set_result(None)
            code = process.returncode
            if code is not None and code < 0:
                log(INFO, f"Child process {process.pid} terminated on signal {-code}")
            else:
                log(INFO, f"Child process {process.pid} finished with code {code}")
            side.program_exited()

        _when_exited(process, reaped)

    async def wait_all(self) -> None:
        """Wait until every program this launcher started has been reaped."""
        while self._watchers:
            await asyncio.wait(list(self._watchers))


# What stunnel resets in its children (SIGPIPE Popen restores itself).
_CHILD_DEFAULT_SIGNALS = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2")


def _ignored_signals() -> list[int]:
    """The signals we ignore right now (at start, or inherited, as under nohup)."""
    numbers = (getattr(signal, name, None) for name in _CHILD_DEFAULT_SIGNALS)
    return [n for n in numbers if n is not None and signal.getsignal(n) is signal.SIG_IGN]


def _when_exited(process: subprocess.Popen[bytes], callback: Callable[[], None]) -> None:
    """Reap ``process`` as soon as it exits and then run ``callback`` on the loop."""
    loop = asyncio.get_running_loop()
    pidfd_open = getattr(os, "pidfd_open", None)
    pidfd = -1
    if pidfd_open is not None:
        with contextlib.suppress(OSError):  # kernels before 5.3
            pidfd = pidfd_open(process.pid)
    if pidfd >= 0:

        def readable() -> None:
            if process.poll() is None:
                return  # woken early; the pidfd stays readable until it is reaped
            loop.remove_reader(pidfd)
            os.close(pidfd)
            callback()

        loop.add_reader(pidfd, readable)
        return

    def wait_in_thread() -> None:
        process.wait()
        with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
            loop.call_soon_threadsafe(callback)

    threading.Thread(target=wait_in_thread, name=f"reap {process.pid}", daemon=True).start()


def _terminal_eof(master: int) -> bytes:
    """What EOF is on this terminal now: its EOF character while the program reads
    lines (canonical mode), nothing in raw mode, where every byte is data."""
    if sys.platform == "win32":
        return b""
    try:
        attributes = termios.tcgetattr(master)
    except termios.error:
        return b""
    if not attributes[3] & termios.ICANON:
        return b""
    eof = attributes[6][termios.VEOF]
    character = eof if isinstance(eof, bytes) else bytes([eof])
    # A first EOF character ends a line in progress, a second one is read as EOF.
    return character * 2


# -- the environment -------------------------------------------------------------------


def program_environment(client: Endpoint | None, tls: ssl.SSLObject | None) -> dict[str, str]:
    """stunnel's variables for the program: the client's address and, when a client
    certificate was verified, its subject and issuer."""
    environment: dict[str, str] = {}
    transport = client.transport if client is not None else None
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        if host.startswith("::ffff:") and "." in host:
            host = host[len("::ffff:") :]
        environment["REMOTE_HOST"] = host
        environment["REMOTE_PORT"] = str(peer[1])
    if tls is not None:
        certificate = tls.getpeercert()
        if certificate:
            environment["SSL_CLIENT_DN"] = one_line_name(certificate.get("subject", ()))
            environment["SSL_CLIENT_I_DN"] = one_line_name(certificate.get("issuer", ()))
    return environment


# OpenSSL's short names, for the long ones Python's ssl module reports.
_SHORT_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "domainComponent": "DC",
    "userId": "UID",
    "streetAddress": "street",
    "surname": "SN",
    "givenName": "GN",
    "jurisdictionCountryName": "jurisdictionC",
    "jurisdictionStateOrProvinceName": "jurisdictionST",
    "jurisdictionLocalityName": "jurisdictionL",
}
_SPECIAL = frozenset(',+"\\<>;')


def one_line_name(rdns: Any) -> str:
    """A distinguished name as stunnel prints it: OpenSSL's one-line form without
    spaces around '=' and with UTF-8 kept (``XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB &
    ~XN_FLAG_SPC_EQ``): ``C=PL, O="Ex, Inc.", CN=host``.  ``rdns`` is the ``subject``
    or ``issuer`` of ``SSLObject.getpeercert()``."""
    parts = []
    for rdn in rdns:
        parts.append(
            " + ".join(f"{_SHORT_NAMES.get(name, name)}={_value(value)}" for name, value in rdn)
        )
    return ", ".join(parts)


def _value(text: str) -> str:
    # OpenSSL's rules with ASN1_STRFLGS_ESC_QUOTE: a value holding an RFC 2253 special
    # character (or starting with a space or '#', or ending with a space) is quoted,
    # and the specials themselves are then written as they are; control characters
    # become \XX.
    escaped = "".join(f"\\{ord(ch):02X}" if ord(ch) < 0x20 or ch == "\x7f" else ch for ch in text)
    needs_quotes = any(ch in _SPECIAL for ch in text) or text[:1] in (" ", "#") or text[-1:] == " "
    return f'"{escaped}"' if needs_quotes else escaped
