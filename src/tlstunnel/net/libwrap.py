"""``libwrap = yes``: a service's clients checked against hosts.allow and hosts.deny.

stunnel, linked with libwrap, asks ``hosts_access(3)`` about each client with the
service's name as the daemon name, before any TLS work.  tlstunnel does the same
without the C library: ``net/hosts_access.py`` parses and matches; this module owns
the I/O around it.

Theory of operation
-------------------
*Files.*  Like libwrap, the files are consulted per connection, so an edit takes
effect at the next client without a reload.  Reading and parsing them every time
would be waste, so ``TableCache`` keeps each parsed version with the file's
signature (inode, size, modification and change times in nanoseconds) and only
``stat``\\ s the file per connection.  File times are only as fine as the kernel's
clock tick, so a file modified less than ``RACY_SECONDS`` before it was read is
"racy": it is read again at each use until it has aged, and a second edit within
the same tick cannot go unnoticed (git's trick for its index).  Problems found in a
version (a rule without a colon, an option tlstunnel does not carry out) are logged
once, when that version is first read.  A missing file is an empty table.  A file
that exists but cannot be read is logged; libwrap's rule then applies -- an
unreadable hosts.allow matches nothing, an unreadable hosts.deny refuses everyone.
The files named by ``/path`` patterns are cached the same way.  One cache serves the
whole process, so services sharing the files share the work.  With ``chroot`` the
paths are looked up inside it, as with stunnel.

*Names.*  Only a rule that needs the client's host name causes a lookup, and only
once the rule's daemon list has matched (``hosts_access.NeedName``).  The lookup
is libwrap's: the address's name (reverse DNS, or /etc/hosts), then that name's
addresses, which must include the client's -- else the name is ``paranoid``.  No
name at all is ``unknown``.  Both run in the loop's resolver threads
(``getnameinfo``, ``getaddrinfo``), bounded by ``TIMEOUTbusy``: a lookup that takes
longer counts as ``unknown``, as libwrap treats a DNS timeout.

*Logging.*  A refusal is logged as stunnel does, ``Service [NAME] REFUSED by
libwrap from ADDR:PORT`` (warning), an admission as ``Service [NAME] permitted by
libwrap from ADDR:PORT`` (debug); a ``severity`` option on the deciding rule sets the
level instead.  Which rule decided is logged at debug.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tlstunnel.log import DEBUG, INFO, WARNING
from tlstunnel.net.hosts_access import (
    PARANOID,
    UNKNOWN,
    Decision,
    Host,
    NeedName,
    PatternFile,
    Request,
    Table,
    decide,
    normalise_address,
    parse_pattern_file,
    parse_table,
)

__all__ = ["Libwrap", "TableCache", "lookup_name"]

LogFunction = Callable[[int, str], None]
RACY_SECONDS = 2.0
_NO_FILES: Mapping[str, PatternFile] = {}
Signature = tuple[int, int, int, int]


@dataclass(slots=True)
class _Entry:
    signature: Signature | None  # None: the file does not exist
    racy: bool
    text: str | None  # what was read (None: missing or unreadable)
    problem: str | None  # why it could not be read
    table: Table | None = None
    patterns: PatternFile | None = None


class TableCache:
    """Parsed files by path, re-read when their signature changes."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    def table(self, path: str, log: LogFunction) -> Table:
        entry = self._current(path, log)
        if entry.table is None:
            if entry.problem is not None:
                entry.table = Table(path, unreadable=entry.problem)
            else:
                entry.table = parse_table(entry.text or "", path)
                for warning in entry.table.warnings:
                    log(WARNING, f"libwrap: {warning}")
        return entry.table

    def pattern_file(self, path: str, log: LogFunction) -> PatternFile | None:
        entry = self._current(path, log)
        if entry.text is None:
            return None  # missing or unreadable: the pattern matches nothing, as in libwrap
        if entry.patterns is None:
            entry.patterns = parse_pattern_file(entry.text)
        return entry.patterns

    def pattern_files(
        self, tables: tuple[Table, ...], log: LogFunction
    ) -> Mapping[str, PatternFile]:
        """Every file the tables' ``/path`` patterns name, and those they name."""
        wanted = [path for table in tables for path in table.pattern_files]
        if not wanted:
            return _NO_FILES
        found: dict[str, PatternFile] = {}
        seen: set[str] = set()
        while wanted:
            path = wanted.pop()
            if path in seen:
                continue
            seen.add(path)
            patterns = self.pattern_file(path, log)
            if patterns is not None:
                found[path] = patterns
                wanted.extend(patterns.pattern_files)
        return found

    def _current(self, path: str, log: LogFunction) -> _Entry:
        entry = self._entries.get(path)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            signature: Signature | None = None
        except OSError as exc:
            return self._unreadable(path, entry, exc, log)
        else:
            signature = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if entry is not None and entry.signature == signature and not entry.racy:
            return entry
        if signature is None:
            fresh = _Entry(None, False, None, None)
        else:
            try:
                with open(path, "rb") as stream:
                    data = stream.read()
            except FileNotFoundError:
                fresh = _Entry(None, False, None, None)
            except OSError as exc:
                return self._unreadable(path, entry, exc, log)
            else:
                racy = time.time_ns() - signature[2] < RACY_SECONDS * 1e9
                fresh = _Entry(signature, racy, data.decode("ascii", "surrogateescape"), None)
        if entry is not None and entry.text == fresh.text and entry.problem is None:
            # Same content (a racy re-read, or a touch): keep what was parsed.
            entry.signature, entry.racy = fresh.signature, fresh.racy
            return entry
        self._entries[path] = fresh
        return fresh

    def _unreadable(
        self, path: str, entry: _Entry | None, exc: OSError, log: LogFunction
    ) -> _Entry:
        problem = exc.strerror or str(exc)
        if entry is None or entry.problem != problem:
            log(WARNING, f"libwrap: cannot read {path}: {problem}")
            entry = _Entry(None, True, None, problem)
            self._entries[path] = entry
        return entry


_CACHE = TableCache()


async def lookup_name(host: Host, timeout: float) -> str:
    """The host's verified name as libwrap finds it: ``unknown`` when the address
    has no name, ``paranoid`` when the name does not lead back to the address."""
    if host.packed is None:
        return UNKNOWN
    loop = asyncio.get_running_loop()
    family = socket.AF_INET if len(host.packed) == 4 else socket.AF_INET6
    try:
        async with asyncio.timeout(timeout):
            name, _port = await loop.getnameinfo((host.address, 0), socket.NI_NAMEREQD)
    except (OSError, TimeoutError):  # socket.gaierror is an OSError
        return UNKNOWN
    try:
        async with asyncio.timeout(timeout):
            found = await loop.getaddrinfo(
                name, None, family=family, type=socket.SOCK_STREAM, flags=socket.AI_CANONNAME
            )
    except (OSError, TimeoutError):
        return PARANOID  # libwrap: "can't verify hostname"
    canonical = found[0][3] if found else ""
    if canonical and canonical.lower() != name.lower() and name.lower() != "localhost":
        return PARANOID  # the name is an alias of another host's name
    for *_rest, address in found:
        if normalise_address(str(address[0]))[1] == host.packed:
            return name
    return PARANOID


class Libwrap:
    """One service's hosts.allow / hosts.deny check."""

    def __init__(
        self,
        service: str,
        allow_path: str,
        deny_path: str,
        lookup_timeout: float,
        cache: TableCache | None = None,
    ) -> None:
        self.service = service
        self.allow_path = allow_path
        self.deny_path = deny_path
        self.lookup_timeout = lookup_timeout
        self.cache = cache or _CACHE

    def preload(self, log: LogFunction) -> None:
        """Read the files now, so their problems are logged when the service starts."""
        tables = self._tables(log)
        self.cache.pattern_files(tables, log)

    def _tables(self, log: LogFunction) -> tuple[Table, Table]:
        return self.cache.table(self.allow_path, log), self.cache.table(self.deny_path, log)

    async def decide(
        self,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        log: LogFunction,
    ) -> Decision:
        """The verdict for a client at ``client`` that connected to ``server``."""
        allow, deny = self._tables(log)
        files = self.cache.pattern_files((allow, deny), log)
        request = Request(
            self.service,
            Host.at(client[0] if client is not None else None),
            Host.at(server[0] if server is not None else None),
        )
        while True:
            try:
                return decide(allow, deny, request, files)
            except NeedName as need:
                host = request.client if need.side == "client" else request.server
                name = await lookup_name(host, self.lookup_timeout)
                log(DEBUG, f"libwrap: {need.side} {host.address} is named {name}")
                request = request.named(need.side, name)

    async def admits(
        self,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
        log: LogFunction,
    ) -> bool:
        """Decide, and log the verdict in stunnel's words."""
        decision = await self.decide(client, server, log)
        peer = _format(client)
        log(DEBUG, f"libwrap: {decision.reason}")
        severity = decision.severity
        if decision.allowed:
            level = DEBUG if severity is None else severity
            log(level, f"Service [{self.service}] permitted by libwrap from {peer}")
            return True
        if decision.rule is not None and decision.rule.problem is not None:
            log(INFO, f"libwrap: refused because of {decision.reason}")
        level = WARNING if severity is None else severity
        log(level, f"Service [{self.service}] REFUSED by libwrap from {peer}")
        return False


def _format(address: tuple[str, int] | None) -> str:
    if address is None:
        return "unknown"
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
