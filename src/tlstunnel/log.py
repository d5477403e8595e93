"""Logging in stunnel's format, to stderr, a file and syslog.

Every line people grep keeps stunnel's shape::

    2026.11.25 09:54:44 LOG5[0]: Service [echo] accepted connection from 127.0.0.1:58774

``LOG5`` is the syslog level (0 emerg .. 7 debug) and the bracket holds who speaks:
``ui`` for the process itself, a sequential number for each connection.

Like stunnel, lines logged before the configuration is known (the banner, "Reading
configuration", "Initializing service") are kept: ``configure`` replays those its
``debug`` level allows to the configured destinations, so the log file starts with the
banner and ``debug = 3`` really hides notices.  When there is no configuration to
apply (it failed, or ``--check``), ``flush_early`` writes them to stderr in stunnel's
short form: ``[!]`` for errors and warnings, ``[.]`` for notices, ``[ ]`` for the rest.

Each destination is chosen by the global options: ``output`` (a file, ``log =
append|overwrite``), ``syslog`` (the local syslog socket, where there is one) and
stderr when ``foreground = yes``.  Filtering happens in the callers through
``enabled``: a service's own ``debug`` level decides what its connections log.

Never blocking the event loop
-----------------------------
A log file on a slow disk, or stderr piped into a journal that stops reading, must not
stall the tunnel.  So once the event loop runs, lines for the file and stderr go into a
bounded queue drained by one writer thread, which writes whatever has gathered as one
batch and flushes once per batch.  The loop thread only formats the line and puts it on
the queue.  When ``QUEUE_LIMIT`` lines are already waiting, new lines are dropped and
counted, and a later line says ``N log line(s) dropped`` -- the loop never waits for
the disk.  Destination changes travel through the same queue, so ordering holds: a
``reopen`` (SIGUSR1) is done by the writer after every line logged before it, and a
reload's ``configure`` switches files at the same point.  ``close`` writes out what is
queued (waiting at most ``CLOSE_TIMEOUT``).

Before the loop exists (start-up, a failed configuration, ``--check``) and after
``close``, lines are written synchronously, as they always were: they must be on the
terminal before the process exits or daemonizes, and ``fork`` must not find a thread.
Syslog datagrams are sent from the calling thread on a non-blocking socket (a full
syslog drops them).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import queue
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from tlstunnel.config.model import GlobalConfig, LogMode

EMERG, ALERT, CRIT, ERR, WARNING, NOTICE, INFO, DEBUG = range(8)

LEVEL_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")

SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19,
    "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}  # fmt: skip

SYSLOG_SOCKET_PATHS = ("/dev/log", "/var/run/syslog", "/var/run/log")

# Lines waiting for the writer thread.  About 2 MB of text at most; past it lines are
# dropped (and counted) rather than letting a stuck destination grow memory or block.
QUEUE_LIMIT = 10_000
# Lines joined into one write (and one flush) at most.
BATCH_LINES = 2_000
# How long ``close`` waits for the writer to write out what is queued.
CLOSE_TIMEOUT = 5.0


def early_prefix(level: int) -> str:
    """stunnel's marker for lines written before logging is configured."""
    if level <= WARNING:
        return "[!]"
    if level == NOTICE:
        return "[.]"
    return "[ ]"


class _SyslogWriter:
    """Datagrams to the local syslog socket; never blocks, drops lines it cannot send."""

    def __init__(self, facility: str, ident: str) -> None:
        self._facility = SYSLOG_FACILITIES.get(facility, SYSLOG_FACILITIES["daemon"])
        self._ident = ident
        self._sock: socket.socket | None = None
        if not hasattr(socket, "AF_UNIX"):
            return
        for path in SYSLOG_SOCKET_PATHS:
            if not os.path.exists(path):
                continue
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                continue
            sock.setblocking(False)
            self._sock = sock
            return

    def write(self, level: int, text: str) -> None:
        sock = self._sock  # once: the log writer thread may report through us too
        if sock is None:
            return
        message = f"<{self._facility * 8 + level}>{self._ident}[{os.getpid()}]: {text}"
        # A full or absent syslog must never stall or stop the tunnel.
        with contextlib.suppress(OSError):
            sock.send(message.encode("utf-8", "replace"))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _Sink:
    """Where text lines go: the ``output`` file and stderr (either may be absent)."""

    __slots__ = ("file", "stderr")

    def __init__(self, file: IO[str] | None, stderr: IO[str] | None) -> None:
        self.file = file
        self.stderr = stderr

    def write(self, text: str) -> None:
        # The file first: once a line shows on stderr, it is in the file too.
        _write_stream(self.file, text)
        _write_stream(self.stderr, text)

    def close_file(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError, ValueError):
                self.file.close()
            self.file = None


def _write_stream(stream: IO[str] | None, text: str) -> None:
    if stream is None:
        return
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass  # a closed or broken log destination must not take the tunnel down


def _open_output(path: str, mode: LogMode) -> IO[str]:
    # backslashreplace: one line that cannot be encoded must not lose its whole batch.
    mode_text = "w" if mode is LogMode.OVERWRITE else "a"
    return open(path, mode_text, encoding="utf-8", errors="backslashreplace")


@dataclass(frozen=True, slots=True)
class _Switch:
    """Writer command: lines after this go to ``sink`` (the old file is closed)."""

    sink: _Sink


@dataclass(frozen=True, slots=True)
class _Reopen:
    """Writer command: close the file and open ``path`` again (SIGUSR1)."""

    path: str
    mode: LogMode
    syslog: _SyslogWriter | None


@dataclass(frozen=True, slots=True)
class _Stop:
    """Writer command: write out what came before, close the file, end the thread."""


_Item = str | _Switch | _Reopen | _Stop


class _Writer:
    """The thread that owns the sink while the loop runs: batches, writes, flushes."""

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self.queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="tlstunnel-log", daemon=True)

    def _run(self) -> None:
        get, get_nowait = self.queue.get, self.queue.get_nowait
        lines: list[str] = []
        while True:
            item = get()
            while True:
                if isinstance(item, str):
                    lines.append(item)
                    if len(lines) >= BATCH_LINES:
                        self._write(lines)
                else:
                    self._write(lines)
                    if not self._apply(item):
                        return
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        if lines:
            self.sink.write("".join(lines))
            lines.clear()

    def _apply(self, command: _Switch | _Reopen | _Stop) -> bool:
        """Carry out a command; False when the thread should end."""
        if isinstance(command, _Stop):
            self.sink.close_file()
            return False
        if isinstance(command, _Switch):
            old, self.sink = self.sink, command.sink
            if old.file is not command.sink.file:
                old.close_file()
            return True
        self.sink.close_file()
        try:
            self.sink.file = _open_output(command.path, command.mode)
        except OSError as exc:
            text = f"Cannot reopen log file {command.path}: {exc.strerror}"
            if command.syslog is not None:
                command.syslog.write(ERR, f"LOG{ERR}[ui]: {text}")
            self.sink.write(f"{_format_stamp(time.time())} LOG{ERR}[ui]: {text}\n")
        return True


def _format_stamp(now: float) -> str:
    return time.strftime("%Y.%m.%d %H:%M:%S", time.localtime(now))


class Log:
    """The process-wide log.  ``configure`` picks destinations; ``reopen`` rotates."""

    def __init__(self) -> None:
        self.level = NOTICE
        self._configured = False
        self._stderr: IO[str] | None = sys.stderr
        self._sink = _Sink(None, None)  # written here only while there is no writer
        self._file_path: str | None = None
        self._file_mode = LogMode.APPEND
        self._syslog: _SyslogWriter | None = None
        self._writer: _Writer | None = None
        self._synchronous = False  # after close: no new writer thread
        self._dropped = 0  # lines the full queue turned away since the last notice
        self._stamp_second = -1
        self._stamp = ""
        # (level, ident, text, timestamp) of every line logged before ``configure``.
        self._early: list[tuple[int, str, str, str]] = []
        if hasattr(os, "register_at_fork"):
            forget = weakref.WeakMethod(self._forget_writer)
            os.register_at_fork(after_in_child=lambda: _call_if_alive(forget))

    # -- configuration -------------------------------------------------------------

    def configure(self, settings: GlobalConfig, *, use_syslog: bool = True) -> None:
        """Switch from early ``[!]`` lines to stunnel's full format and destinations.

        Raises ``OSError`` when the ``output`` file cannot be opened; the caller
        reports it like a configuration error.
        """
        new_file = _open_output(settings.output, settings.log_mode) if settings.output else None
        foreground_to_stderr = settings.foreground.value == "yes"
        self._stderr = sys.stderr if foreground_to_stderr else None
        sink = _Sink(new_file, self._stderr)
        if self._writer is not None:
            self._writer.queue.put(_Switch(sink))  # the writer closes the old file
        else:
            self._sink.close_file()
        self._sink = sink
        self._file_path = settings.output
        self._file_mode = settings.log_mode
        self._synchronous = False
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None
        if settings.syslog and use_syslog:
            # stunnel's ``service`` option names the process in syslog ("stunnel").
            self._syslog = _SyslogWriter(settings.log_level.facility, settings.service_name)
        self.level = settings.log_level.level
        self._configured = True
        early, self._early = self._early, []
        for level, ident, text, stamp in early:
            if level <= self.level:
                self._emit(level, ident, text, stamp)

    def flush_early(self, threshold: int = INFO) -> None:
        """Write the lines kept since start to stderr as ``[!]``/``[.]``/``[ ]`` lines.

        For when the configuration is never applied: it failed, or ``--check``.  Debug
        lines stay out unless ``threshold`` asks for them.  Does nothing once
        ``configure`` has replayed them.
        """
        early, self._early = self._early, []
        for level, _ident, text, _stamp in early:
            if level <= threshold:
                _write_stream(self._stderr, f"{early_prefix(level)} {text}\n")

    def reopen(self) -> None:
        """Close and reopen the ``output`` file (SIGUSR1, for log rotation).

        With the writer running it does this after the lines already queued, so they
        land in the old file and later ones in the new file.
        """
        if self._file_path is None:
            return
        if self._writer is not None:
            self._writer.queue.put(_Reopen(self._file_path, self._file_mode, self._syslog))
            return
        self._sink.close_file()
        try:
            self._sink.file = _open_output(self._file_path, self._file_mode)
        except OSError as exc:
            self.write(ERR, "ui", f"Cannot reopen log file {self._file_path}: {exc.strerror}")

    def close(self) -> None:
        """Write out every queued line, close the file and syslog; later lines are
        written synchronously (to stderr, when it is a destination)."""
        self._synchronous = True
        self._stop_writer()
        self._sink.close_file()
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None

    def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        with contextlib.suppress(ValueError):  # not registered (atexit already ran)
            atexit.unregister(self._stop_writer)
        if self._dropped:
            writer.queue.put(self._dropped_notice())
        writer.queue.put(_Stop())
        writer.thread.join(CLOSE_TIMEOUT)
        if not writer.thread.is_alive():
            self._sink = writer.sink  # the writer closed its file; stderr stays
        else:
            # A destination that never takes the lines (a FIFO nobody reads): give up
            # on them rather than hang the exit; the thread is a daemon.
            self._sink = _Sink(None, writer.sink.stderr)

    def _forget_writer(self) -> None:
        """In a forked child: the writer thread did not come along; start afresh."""
        if self._writer is not None:
            self._sink = self._writer.sink
            self._writer = None

    # -- writing ---------------------------------------------------------------------

    def enabled(self, level: int, threshold: int | None = None) -> bool:
        return level <= (self.level if threshold is None else threshold)

    def __call__(self, level: int, text: str, ident: str = "ui") -> None:
        """Log one process-level line, filtered by the global ``debug`` level."""
        if level <= self.level or not self._configured:
            self.write(level, ident, text)

    def write(self, level: int, ident: str, text: str) -> None:
        """Write a line with no filtering (callers already checked ``enabled``)."""
        if not self._configured:
            self._early.append((level, ident, text, self._timestamp()))
            return
        self._emit(level, ident, text, self._timestamp())

    @property
    def dropped(self) -> int:
        """Lines dropped since the last "dropped" notice (the queue was full)."""
        return self._dropped

    def _emit(self, level: int, ident: str, text: str, stamp: str) -> None:
        body = f"LOG{level}[{ident}]: {text}"
        if self._syslog is not None:
            self._syslog.write(level, body)
        sink = self._sink
        if sink.file is None and sink.stderr is None:
            return
        line = f"{stamp} {body}\n"
        writer = self._writer
        if writer is None:
            writer = self._start_writer()
            if writer is None:
                sink.write(line)
                return
        pending = writer.queue
        if pending.qsize() >= QUEUE_LIMIT:
            self._dropped += 1
            return
        if self._dropped:
            pending.put(self._dropped_notice())
        pending.put(line)

    def _dropped_notice(self) -> str:
        count, self._dropped = self._dropped, 0
        return (
            f"{self._timestamp()} LOG{WARNING}[ui]: {count} log line(s) dropped: the log "
            "file or stderr did not keep up\n"
        )

    def _start_writer(self) -> _Writer | None:
        """Start the writer thread if an event loop runs in this thread; else None."""
        if self._synchronous:
            return None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None  # start-up or exit: write synchronously
        writer = _Writer(self._sink)
        try:
            writer.thread.start()
        except RuntimeError:
            return None  # no thread to be had: synchronous it is
        self._writer = writer
        atexit.register(self._stop_writer)
        return writer

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = _format_stamp(now)
        return self._stamp


def _call_if_alive(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    bound = method()
    if bound is not None:
        bound()


class ConnectionLog:
    """The log as one connection sees it: its id and its service's ``debug`` level."""

    __slots__ = ("_log", "ident", "threshold")

    def __init__(self, log: Log, ident: str, threshold: int) -> None:
        self._log = log
        self.ident = ident
        self.threshold = threshold

    def enabled(self, level: int) -> bool:
        return level <= self.threshold

    def __call__(self, level: int, text: str) -> None:
        if level <= self.threshold:
            self._log.write(level, self.ident, text)


log = Log()
