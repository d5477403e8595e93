"""The TCP-wrappers access language (hosts_access(5), hosts_options(5)), without libwrap.

This module parses ``/etc/hosts.allow``-style text and decides whether a
(daemon, client) pair is admitted.  It is pure: no files, no sockets, no DNS.  The
caller (``net/libwrap.py``) reads the files and looks host names up; this module
only says *when* a name is needed.

Theory of operation
-------------------
*Reading a file.*  Lines ending in a backslash are joined to the next one (the
backslash and the newline vanish, as libwrap's ``xgets`` does).  A line that is blank
or starts with ``#`` in its first column is skipped.  Every other line is a rule::

    daemon_list : client_list [ : option : option ... ]

split at the first two colons that are not inside ``[...]`` (so ``[::1]`` can be
written).  Lists are split on blanks and commas.  Options are split at colons not
escaped by a backslash.  A line without a colon is reported and skipped, as libwrap
does.  Patterns are compiled once per file version (``Rule``), so a connection only
compares strings and integers.

*Matching* is ``net/hosts_patterns.py``'s: what each pattern means, ``EXCEPT``, and
when a host name is needed.  Matching raises ``NeedName`` the first time a pattern
needs a name the request does not have; the caller looks it up and runs the
(deterministic, cheap) match again.  Rules that only name addresses and networks
therefore never cause a DNS query, and a name is only looked up for a rule whose
daemon list matched.

*Deciding* (``decide``): the first matching rule of the allow table admits, else the
first matching rule of the deny table refuses, else the client is admitted.  Options
refine the matched rule (hosts_options(5)): ``allow`` and ``deny`` (only as the last
option) override the table's verdict, ``severity [facility.]level`` sets the level of
the decision's log line (the facility stays the service's).  Every other option
(``spawn``, ``twist``, ``aclexec``, ``banners``, ``keepalive``, ``linger``,
``rfc931``, ``setenv``, ``umask``, ``user``, ``nice``) is not carried out: a client
whose first matching rule has one is *refused*, and the rule is reported with its
file and line when the file is read.  A malformed option gets the same treatment;
both follow libwrap, which denies service when it cannot process a matched rule.

Where libwrap is stricter or looser than its manual, this follows libwrap 7.6 as
Debian ships it (``tests/net/test_hosts_access.py`` compares the two on random rule
sets), except that ``/file`` patterns are read with the table (and again when either
changes), not during each match.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tlstunnel.net.hosts_patterns import (
    PARANOID,
    UNKNOWN,
    ClientPattern,
    DaemonPattern,
    Host,
    NeedName,
    PatternFile,
    PatternList,
    Request,
    fold,
    list_tokens,
    normalise_address,
    parse_pattern_file,
    split_outside_brackets,
)

__all__ = [
    "PARANOID",
    "UNKNOWN",
    "Decision",
    "Host",
    "NeedName",
    "PatternFile",
    "Request",
    "Rule",
    "Table",
    "decide",
    "normalise_address",
    "parse_pattern_file",
    "parse_table",
]

_BLANKS = " \t\r\n"

# hosts_options(5) ``severity``: libwrap's names (no "panic", "error", "warn").
SEVERITY_LEVELS = {
    name: level
    for level, name in enumerate(
        ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
    )
}
SEVERITY_FACILITIES = frozenset(
    ["auth", "cron", "daemon", "kern", "lpr", "mail", "news", "user", "uucp"]
    + [f"local{n}" for n in range(8)]
)
# Options that libwrap would carry out and tlstunnel does not: a client matched by a
# rule with one of them is refused (see the module docstring).
UNSUPPORTED_OPTIONS = frozenset(
    [
        "aclexec",
        "banners",
        "group",
        "keepalive",
        "linger",
        "nice",
        "rfc931",
        "setenv",
        "spawn",
        "twist",
        "umask",
        "user",
    ]
)


# --- files -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule; ``problem`` says why a client it matches is refused whatever it says."""

    path: str
    line: int
    daemons: PatternList[DaemonPattern]
    clients: PatternList[ClientPattern]
    verdict: bool | None = None  # the allow / deny option
    severity: int | None = None  # the severity option's level
    problem: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def matches(self, request: Request, files: Mapping[str, PatternFile]) -> bool:
        return self.daemons.match(request, files) and self.clients.match(request, files)


@dataclass(frozen=True, slots=True)
class Table:
    """A parsed hosts.allow or hosts.deny.  ``unreadable`` says why the file exists
    but could not be read (a missing file is an empty table, as in libwrap)."""

    path: str
    rules: tuple[Rule, ...] = ()
    warnings: tuple[str, ...] = ()
    pattern_files: frozenset[str] = frozenset()
    unreadable: str | None = None


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) with continuations joined; a last line without a
    newline counts (Debian's libwrap applies it too).

    Only ``\\n`` ends a line, as for libwrap's ``fgets`` (``str.splitlines`` would
    also cut at ``\\r``, form feeds and more)."""
    pieces = text.split("\n")
    last = pieces.pop()  # after the final newline: "" or an unterminated line
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 1
    for number, body in enumerate(pieces, start=1):
        if not pending:
            start = number
        if body.endswith("\\"):
            pending.append(body[:-1])
            continue
        pending.append(body)
        lines.append((start, "".join(pending)))
        pending = []
    if pending or last:
        if not pending:
            start = len(pieces) + 1
        lines.append((start, "".join(pending) + last))
    return lines


def _split_options(text: str) -> list[str]:
    """Options are separated by colons; ``\\:`` is a colon inside an option."""
    options: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] == ":":
            current.append(":")
            index += 2
            continue
        if char == ":":
            options.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    options.append("".join(current))
    return options


@dataclass(slots=True)
class _Options:
    verdict: bool | None = None
    severity: int | None = None
    problem: str | None = None


def _parse_options(options: list[str]) -> _Options:
    """hosts_options(5) as libwrap reads it; the first problem found is kept."""
    parsed = _Options()
    for position, option in enumerate(options):
        stripped = option.strip(_BLANKS)
        found = re.match(r"([^\s=]*)\s*=?\s*(.*)", stripped, re.DOTALL)
        assert found is not None  # the pattern matches any string
        keyword, value = fold(found.group(1)), found.group(2).strip(_BLANKS)
        last = position == len(options) - 1
        if not keyword:
            return _Options(problem="an empty option")
        if keyword in ("allow", "deny"):
            if value:
                return _Options(problem=f'option "{keyword}" takes no value')
            if not last:
                return _Options(problem=f'option "{keyword}" must be the last one')
            parsed.verdict = keyword == "allow"
        elif keyword == "severity":
            level = _severity(value)
            if level is None:
                return _Options(problem=f'"severity {value}" is not [facility.]level')
            parsed.severity = level
        elif keyword in UNSUPPORTED_OPTIONS:
            return _Options(problem=f'option "{keyword}" is not supported by tlstunnel')
        else:
            return _Options(problem=f'unknown option "{keyword}"')
    return parsed


def _severity(value: str) -> int | None:
    facility, dot, level = fold(value).rpartition(".")
    if dot and facility not in SEVERITY_FACILITIES:
        return None
    return SEVERITY_LEVELS.get(level)


def parse_table(text: str, path: str) -> Table:
    """Parse a hosts.allow / hosts.deny file's text; problems become warnings that
    name ``path:line``.  Never raises."""
    rules: list[Rule] = []
    warnings: list[str] = []
    pattern_files: set[str] = set()
    for number, line in _logical_lines(text):
        if line.startswith("#") or not line.strip(_BLANKS):
            continue
        where = f"{path}:{number}"
        daemon_text, colon, rest = split_outside_brackets(line, ":")
        if not colon:
            warnings.append(f'{where}: missing ":" separator; the line is skipped')
            continue
        client_text, colon, options_text = split_outside_brackets(rest, ":")
        options = _parse_options(_split_options(options_text)) if colon else _Options()
        rule = Rule(
            path,
            number,
            PatternList.compile(list_tokens(daemon_text), DaemonPattern.compile),
            PatternList.compile(list_tokens(client_text), ClientPattern.compile),
            options.verdict,
            options.severity,
            options.problem,
        )
        if options.problem is not None:
            warnings.append(f"{where}: {options.problem}: a client this rule matches is refused")
        hosts = [p.host for p in rule.clients.walk()]
        hosts += [p.server for p in rule.daemons.walk() if p.server is not None]
        for host in hosts:
            if host.netgroup is not None:
                warnings.append(
                    f"{where}: {host.netgroup}: NIS netgroups are not supported; "
                    "the pattern never matches"
                )
            elif host.file is not None:
                pattern_files.add(host.file)
        rules.append(rule)
    return Table(path, tuple(rules), tuple(warnings), frozenset(pattern_files))


# --- the verdict ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict, the rule that gave it (None: no rule matched) and why."""

    allowed: bool
    rule: Rule | None
    reason: str

    @property
    def severity(self) -> int | None:
        return self.rule.severity if self.rule is not None else None


def decide(
    allow: Table,
    deny: Table,
    request: Request,
    files: Mapping[str, PatternFile] | None = None,
) -> Decision:
    """hosts_access(3): the first match in ``allow`` admits, then the first in ``deny``
    refuses, else admit.  Raises ``NeedName`` when a pattern needs a host name that
    ``request`` does not have yet.  An unreadable allow table matches nothing; an
    unreadable deny table refuses everyone (libwrap's rules)."""
    patterns = files if files is not None else {}
    if allow.unreadable is None:
        for rule in allow.rules:
            if rule.matches(request, patterns):
                return _verdict(rule, default=True)
    if deny.unreadable is not None:
        return Decision(False, None, f"{deny.path} cannot be read: {deny.unreadable}")
    for rule in deny.rules:
        if rule.matches(request, patterns):
            return _verdict(rule, default=False)
    return Decision(True, None, "no rule matched")


def _verdict(rule: Rule, *, default: bool) -> Decision:
    if rule.problem is not None:
        return Decision(False, rule, f"{rule.where}: {rule.problem}")
    allowed = default if rule.verdict is None else rule.verdict
    return Decision(allowed, rule, f"matched {rule.where}")
