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
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
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
        if self._sock is None:
            return
        message = f"<{self._facility * 8 + level}>{self._ident}[{os.getpid()}]: {text}"
        # A full or absent syslog must never stall or stop the tunnel.
        with contextlib.suppress(OSError):
            self._sock.send(message.encode("utf-8", "replace"))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Log:
    """The process-wide log.  ``configure`` picks destinations; ``reopen`` rotates."""

    def __init__(self) -> None:
        self.level = NOTICE
        self._configured = False
        self._stderr: IO[str] | None = sys.stderr
        self._file: IO[str] | None = None
        self._file_path: str | None = None
        self._file_mode = LogMode.APPEND
        self._syslog: _SyslogWriter | None = None
        self._stamp_second = -1
        self._stamp = ""
        # (level, ident, text, timestamp) of every line logged before ``configure``.
        self._early: list[tuple[int, str, str, str]] = []

    # -- configuration -------------------------------------------------------------

    def configure(self, settings: GlobalConfig, *, use_syslog: bool = True) -> None:
        """Switch from early ``[!]`` lines to stunnel's full format and destinations.

        Raises ``OSError`` when the ``output`` file cannot be opened; the caller
        reports it like a configuration error.
        """
        new_file: IO[str] | None = None
        if settings.output:
            mode = "w" if settings.log_mode is LogMode.OVERWRITE else "a"
            new_file = open(settings.output, mode, encoding="utf-8", buffering=1)  # noqa: SIM115
        self._close_file()
        self._file = new_file
        self._file_path = settings.output
        self._file_mode = settings.log_mode
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None
        if settings.syslog and use_syslog:
            # stunnel's ``service`` option names the process in syslog ("stunnel").
            self._syslog = _SyslogWriter(settings.log_level.facility, settings.service_name)
        foreground_to_stderr = settings.foreground.value == "yes"
        self._stderr = sys.stderr if foreground_to_stderr else None
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
                self._write_stream(self._stderr, f"{early_prefix(level)} {text}\n")

    def reopen(self) -> None:
        """Close and reopen the ``output`` file (SIGUSR1, for log rotation)."""
        if self._file_path is None:
            return
        self._close_file()
        mode = "w" if self._file_mode is LogMode.OVERWRITE else "a"
        try:
            self._file = open(self._file_path, mode, encoding="utf-8", buffering=1)  # noqa: SIM115
        except OSError as exc:
            self._file = None
            self.write(ERR, "ui", f"Cannot reopen log file {self._file_path}: {exc.strerror}")

    def close(self) -> None:
        self._close_file()
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

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

    def _emit(self, level: int, ident: str, text: str, stamp: str) -> None:
        body = f"LOG{level}[{ident}]: {text}"
        if self._syslog is not None:
            self._syslog.write(level, body)
        if self._file is None and self._stderr is None:
            return
        line = f"{stamp} {body}\n"
        self._write_stream(self._file, line)
        self._write_stream(self._stderr, line)

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%Y.%m.%d %H:%M:%S", time.localtime(now))
        return self._stamp

    @staticmethod
    def _write_stream(stream: IO[str] | None, line: str) -> None:
        if stream is None:
            return
        try:
            stream.write(line)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken log destination must not take the tunnel down


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
