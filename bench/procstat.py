"""What the benchmark reads from Linux's /proc: CPU time, resident memory, listening ports.

A program under test may be more than one process (tlstunnel can fork workers that share a
port; stunnel is one process with a thread per connection).  Every figure here is therefore
taken over the *process tree* rooted at the PID we started: CPU is user + system time of
each live process (threads included, the kernel sums them per process) plus the time of
children it has already reaped; memory is the sum of VmRSS.  Summing RSS counts pages
shared between forked workers more than once, but the benchmark only ever uses
*differences* of it, and the pages a new connection adds are private.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_TCP_LISTEN = "0A"


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU seconds (user + system) and resident KB of a process tree at one instant."""

    cpu_s: float
    rss_kb: int


def raise_nofile_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it).

    Returns the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    elif hard == resource.RLIM_INFINITY and soft < 1 << 20:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1 << 20, hard))
        soft = 1 << 20
    return soft


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 onwards), or None if gone."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself contain spaces and parentheses.
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants (an empty list once ``root`` has exited)."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    if _stat_fields(root) is None:
        return []
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of one process, in seconds (0.0 if it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After the name: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / _CLOCK_TICKS


def rss_kb(pid: int) -> int:
    """VmRSS of one process in KB (0 if it is gone or is a zombie)."""
    try:
        status = (_PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def usage(root: int) -> Usage:
    """CPU and RSS summed over the process tree rooted at ``root``."""
    tree = process_tree(root)
    return Usage(
        cpu_s=sum(cpu_seconds(pid) for pid in tree),
        rss_kb=sum(rss_kb(pid) for pid in tree),
    )


def thread_count(root: int) -> int:
    """Number of threads over the process tree rooted at ``root``."""
    total = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[17])  # num_threads, field 20
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    fields = [int(value) for value in (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def is_listening(port: int) -> bool:
    """True if some socket listens on TCP ``port`` (any address, IPv4 or IPv6).

    Read from /proc/net/tcp{,6} so that checking costs the program under test nothing:
    a probing connect() would make it accept, maybe hand-shake, and log an error.
    """
    wanted = f"{port:04X}"
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == _TCP_LISTEN and local.rsplit(":", 1)[1] == wanted:
                return True
    return False


def session_members(session: int) -> list[int]:
    """Live processes whose session id is ``session`` (what ``setsid`` children share)."""
    members = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            # After the name: state ppid pgrp session ...
            if fields is not None and int(fields[3]) == session and fields[0] != "Z":
                members.append(int(entry.name))
    return members
