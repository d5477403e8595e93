"""The patterns of the TCP-wrappers language (hosts_access(5)), compiled and matched.

``net/hosts_access.py`` reads the files and decides; this module holds what one
pattern means.  Patterns are compiled once per file version, so a connection only
compares strings and integers.  Each is one of libwrap's forms, tried in libwrap's
order, every comparison ignoring ASCII case:

=====================  =============================================================
``@group``             an NIS netgroup: never matches (no NIS here; warned at load)
``/path``              any host pattern listed in that file (``PatternFile``)
``KNOWN`` (host)       the address is known and the name is known (needs the name)
``LOCAL``              the name has no dot (needs the name)
``n.n.n.n/m.m.m.m``    IPv4 ``address & mask == net``; also ``n.n.n.n/len``
``[v6]/len``           the first ``len`` bits equal
``.suffix``            the string ends with it (``.example.com``)
``ALL``                anything
``KNOWN`` (string)     the string is not ``unknown`` (daemon and user patterns)
``prefix.``            the string starts with it (``192.168.``)
``*`` and ``?``        shell-style wildcards
``[v6]``               the same IPv6 address (compared as numbers)
anything else          the same string
=====================  =============================================================

A host pattern that is not a mask is compared with the client's address first, and
-- when the pattern is not made only of digits, dots and slashes, as libwrap's
``NOT_INADDR`` says -- with the client's host name next.  That is the only point that
needs a name (``KNOWN``, ``LOCAL``, ``UNKNOWN``, ``PARANOID`` and host names get there
through it), so matching raises ``NeedName`` the first time it gets there without one;
the caller looks the name up and runs the (deterministic, cheap) match again.
``UNKNOWN`` and ``PARANOID`` work through the same string comparison: a name that
could not be found is ``unknown``, one whose forward lookup does not give the address
back is ``paranoid``.

``daemon@host`` (daemon patterns) compares ``host`` with where the client connected
to; ``user@host`` (client patterns) compares ``user`` with the client's user name,
which is always ``unknown`` here: tlstunnel does not ask IDENT (RFC 1413), like
libwrap facing a client that runs no identd.  ``a b EXCEPT c d EXCEPT e`` matches
when ``a`` or ``b`` matches and ``c d EXCEPT e`` does not: ``EXCEPT`` nests to the
right (``PatternList``).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

UNKNOWN = "unknown"
PARANOID = "paranoid"
Side = Literal["client", "server"]

# libwrap's list separators (``sep`` in hosts_access.c); not Python's \s.
_LIST_SEPARATORS = re.compile(r"[, \t\r\n]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_INADDR_CHARS = frozenset("0123456789./")
_LEADING_INTEGER = re.compile(r"[+-]?[0-9]+")  # what C's atoi reads
_MAX_FILE_DEPTH = 8  # /file patterns naming /file patterns: stop loops


def fold(text: str) -> str:
    """ASCII lower case, as C's strcasecmp compares (other characters are kept)."""
    return text.translate(_ASCII_LOWER)


# --- who is asking ---------------------------------------------------------------------


def normalise_address(address: str) -> tuple[str, bytes | None]:
    """An address as libwrap prints it (``inet_ntop``), and its packed bytes.

    IPv4-mapped IPv6 (``::ffff:192.0.2.7``) becomes IPv4, a scope (``%eth0``) is
    dropped; something that is not an IP address stays as written, unpacked."""
    text = address.split("%", 1)[0]
    try:
        if ":" in text:
            packed = socket.inet_pton(socket.AF_INET6, text)
            if packed[:12] == b"\0" * 10 + b"\xff\xff":
                packed = packed[12:]
                return socket.inet_ntop(socket.AF_INET, packed), packed
            return socket.inet_ntop(socket.AF_INET6, packed), packed
        packed = socket.inet_pton(socket.AF_INET, text)
        return text, packed
    except (OSError, ValueError):  # ValueError: NUL or undecodable characters
        return fold(address), None


@dataclass(frozen=True, slots=True)
class Host:
    """One end of the connection as the patterns see it.

    ``address`` is the text form (``unknown`` when there is none, e.g. a Unix socket),
    ``packed`` its 4 or 16 bytes.  ``name`` is None until it has been looked up; then
    the verified host name (folded), ``unknown`` or ``paranoid``."""

    address: str = UNKNOWN
    packed: bytes | None = None
    name: str | None = None

    @classmethod
    def at(cls, address: str | None) -> Host:
        if address is None:
            return cls()
        text, packed = normalise_address(address)
        return cls(text, packed)


@dataclass(frozen=True, slots=True)
class Request:
    """A (daemon, client) pair to judge; ``server`` is where the client connected to."""

    daemon: str
    client: Host = field(default_factory=Host)
    server: Host = field(default_factory=Host)
    user: str = UNKNOWN  # no IDENT lookups: always unknown

    def __post_init__(self) -> None:
        object.__setattr__(self, "daemon", fold(self.daemon))

    def named(self, side: Side, name: str) -> Request:
        """This request once ``side``'s host name is known."""
        host = self.client if side == "client" else self.server
        named = Host(host.address, host.packed, fold(name) if name else UNKNOWN)
        if side == "client":
            return Request(self.daemon, named, self.server, self.user)
        return Request(self.daemon, self.client, named, self.user)


class NeedName(Exception):
    """Matching reached a pattern that needs ``side``'s host name, not looked up yet."""

    def __init__(self, side: Side) -> None:
        super().__init__(side)
        self.side = side


# --- patterns ----------------------------------------------------------------------------

# string_match kinds, in libwrap's order of tests.
_SUFFIX, _ALL, _KNOWN, _PREFIX, _WILDCARD, _IPV6, _EXACT = range(7)


@dataclass(frozen=True, slots=True)
class _StringPattern:
    """libwrap's ``string_match``: daemon names, user names, addresses and host names."""

    kind: int
    text: str  # folded
    regex: re.Pattern[str] | None = None
    packed: bytes | None = None  # _IPV6: the address; None if it does not parse

    @classmethod
    def compile(cls, token: str) -> _StringPattern:
        text = fold(token)
        if text.startswith("."):
            return cls(_SUFFIX, text)
        if text == "all":
            return cls(_ALL, text)
        if text == "known":
            return cls(_KNOWN, text)
        if text.endswith("."):
            return cls(_PREFIX, text)
        if "*" in text or "?" in text:
            regex = "".join(
                ".*" if char == "*" else "." if char == "?" else re.escape(char) for char in text
            )
            return cls(_WILDCARD, text, re.compile(regex, re.ASCII | re.DOTALL))
        if text.startswith("[") and text.endswith("]"):
            return cls(_IPV6, text, packed=_ipv6(text[1:-1]))
        return cls(_EXACT, text)

    def match(self, value: str) -> bool:
        """``value`` must already be folded."""
        kind = self.kind
        if kind == _EXACT:
            return value == self.text
        if kind == _SUFFIX:
            return len(value) > len(self.text) and value.endswith(self.text)
        if kind == _ALL:
            return True
        if kind == _KNOWN:
            return value != UNKNOWN
        if kind == _PREFIX:
            return value.startswith(self.text)
        if kind == _WILDCARD:
            assert self.regex is not None
            return self.regex.fullmatch(value) is not None
        # _IPV6: a bracketed address equals an IPv6 address however it is written.
        return self.packed is not None and _ipv6(value) == self.packed


def _ipv6(text: str) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET6, text)
    except (OSError, ValueError):
        return None


def _ipv4_quad(text: str) -> int | None:
    """libwrap's ``dot_quad_addr``: four dotted parts, as inet_addr reads them."""
    if len([part for part in text.split(".") if part]) != 4:
        return None
    try:
        value = int.from_bytes(socket.inet_aton(text), "big")
    except (OSError, ValueError):
        return None
    return None if value == 0xFFFFFFFF else value  # INADDR_NONE is not an address


def _prefix_length(text: str, low: int, high: int) -> int | None:
    """A prefix length as libwrap reads it: leading digits (atoi), within range."""
    found = _LEADING_INTEGER.match(text)
    if found is None:
        return None
    length = int(found.group())
    return length if low <= length <= high else None


# host_match kinds.
_NETGROUP, _FILE, _HOST_KNOWN, _LOCAL, _MASK4, _MASK6, _BAD_MASK, _HOST_STRING = range(8)


@dataclass(frozen=True, slots=True)
class HostPattern:
    """libwrap's ``host_match``: a pattern for an address and, maybe, a host name."""

    kind: int
    string: _StringPattern | None = None
    compares_name: bool = False  # libwrap's NOT_INADDR: also try the host name
    net: int = 0
    mask: int = 0
    path: str = ""

    @property
    def netgroup(self) -> str | None:
        """The ``@group`` this pattern names, if it is a netgroup."""
        return self.path if self.kind == _NETGROUP else None

    @property
    def file(self) -> str | None:
        """The path of a ``/path`` pattern."""
        return self.path if self.kind == _FILE else None

    @classmethod
    def compile(cls, token: str) -> HostPattern:
        if token.startswith("@"):
            return cls(_NETGROUP, path=token)
        if token.startswith("/"):
            return cls(_FILE, path=token)
        upper = fold(token)
        if upper == "known":
            return cls(_HOST_KNOWN)
        if upper == "local":
            return cls(_LOCAL)
        net_text, slash, mask_text = split_outside_brackets(token, "/")
        if slash:
            return cls._mask(net_text, mask_text)
        string = _StringPattern.compile(token)
        # A bracketed IPv6 pattern is never a host name: no lookup for it.
        compares_name = string.kind != _IPV6 and not set(token) <= _INADDR_CHARS
        return cls(_HOST_STRING, string, compares_name)

    @classmethod
    def _mask(cls, net_text: str, mask_text: str) -> HostPattern:
        if net_text.startswith("[") and net_text.endswith("]"):
            packed = _ipv6(net_text[1:-1])
            length = _prefix_length(mask_text, 0, 128)
            if packed is None or length is None:
                return cls(_BAD_MASK)
            mask = ((1 << length) - 1) << (128 - length)
            return cls(_MASK6, net=int.from_bytes(packed, "big") & mask, mask=mask)
        net = _ipv4_quad(net_text)
        mask_value = _ipv4_quad(mask_text)
        if mask_value is None:
            length = _prefix_length(mask_text, 1, 32)
            mask_value = None if length is None else ((1 << length) - 1) << (32 - length)
        if net is None or mask_value is None:
            return cls(_BAD_MASK)
        return cls(_MASK4, net=net, mask=mask_value)  # the net is not masked: libwrap's rule

    def match(self, host: Host, side: Side, files: Mapping[str, PatternFile], depth: int) -> bool:
        kind = self.kind
        if kind == _HOST_STRING:
            assert self.string is not None
            if self.string.match(host.address):
                return True
            return self.compares_name and self.string.match(_name_of(host, side))
        if kind == _MASK4:
            packed = host.packed
            return (
                packed is not None
                and len(packed) == 4
                and int.from_bytes(packed, "big") & self.mask == self.net
            )
        if kind == _MASK6:
            packed = host.packed
            return (
                packed is not None
                and len(packed) == 16
                and int.from_bytes(packed, "big") & self.mask == self.net
            )
        if kind == _HOST_KNOWN:
            return host.address != UNKNOWN and _name_of(host, side) not in (UNKNOWN, PARANOID)
        if kind == _LOCAL:
            name = _name_of(host, side)
            return "." not in name and name not in (UNKNOWN, PARANOID)
        if kind == _FILE:
            listed = files.get(self.path)
            if listed is None or depth >= _MAX_FILE_DEPTH:
                return False
            return any(p.match(host, side, files, depth + 1) for p in listed.patterns)
        return False  # _NETGROUP, _BAD_MASK


def _name_of(host: Host, side: Side) -> str:
    if host.name is None:
        raise NeedName(side)
    return host.name


@dataclass(frozen=True, slots=True)
class DaemonPattern:
    """``daemon`` or ``daemon@host`` (the host the client connected to)."""

    daemon: _StringPattern
    server: HostPattern | None

    @classmethod
    def compile(cls, token: str) -> DaemonPattern:
        at = token.find("@", 1)
        if at < 0:
            return cls(_StringPattern.compile(token), None)
        return cls(_StringPattern.compile(token[:at]), HostPattern.compile(token[at + 1 :]))

    def match(self, request: Request, files: Mapping[str, PatternFile]) -> bool:
        if not self.daemon.match(request.daemon):
            return False
        return self.server is None or self.server.match(request.server, "server", files, 0)


@dataclass(frozen=True, slots=True)
class ClientPattern:
    """``host`` or ``user@host``."""

    host: HostPattern
    user: _StringPattern | None

    @classmethod
    def compile(cls, token: str) -> ClientPattern:
        at = token.find("@", 1)
        if at < 0:
            return cls(HostPattern.compile(token), None)
        return cls(HostPattern.compile(token[at + 1 :]), _StringPattern.compile(token[:at]))

    def match(self, request: Request, files: Mapping[str, PatternFile]) -> bool:
        if not self.host.match(request.client, "client", files, 0):
            return False
        return self.user is None or self.user.match(request.user)


P = TypeVar("P", DaemonPattern, ClientPattern)


@dataclass(frozen=True, slots=True)
class PatternList(Generic[P]):
    """``items EXCEPT exceptions``; the exceptions are a list of their own (nesting)."""

    items: tuple[P, ...]
    exceptions: PatternList[P] | None

    @classmethod
    def compile(cls, tokens: list[str], make: Callable[[str], P]) -> PatternList[P]:
        upper = [fold(token) for token in tokens]
        if "except" not in upper:
            return cls(tuple(make(token) for token in tokens), None)
        cut = upper.index("except")
        return cls(
            tuple(make(token) for token in tokens[:cut]),
            cls.compile(tokens[cut + 1 :], make),
        )

    def match(self, request: Request, files: Mapping[str, PatternFile]) -> bool:
        if not any(item.match(request, files) for item in self.items):
            return False
        return self.exceptions is None or not self.exceptions.match(request, files)

    def walk(self) -> list[P]:
        """Every pattern, exceptions included."""
        found: list[P] = []
        part: PatternList[P] | None = self
        while part is not None:
            found.extend(part.items)
            part = part.exceptions
        return found


@dataclass(frozen=True, slots=True)
class PatternFile:
    """The host patterns of a file named by a ``/path`` pattern."""

    patterns: tuple[HostPattern, ...] = ()

    @property
    def pattern_files(self) -> frozenset[str]:
        return frozenset(p.path for p in self.patterns if p.kind == _FILE)


def split_outside_brackets(text: str, delimiter: str) -> tuple[str, str, str]:
    """libwrap's ``split_at``: cut at the first ``delimiter`` not inside ``[...]``."""
    depth = 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == delimiter and depth == 0:
            return text[:index], delimiter, text[index + 1 :]
    return text, "", ""


def list_tokens(text: str) -> list[str]:
    return [token for token in _LIST_SEPARATORS.split(text) if token]


def parse_pattern_file(text: str) -> PatternFile:
    """A file named by a ``/path`` pattern: host patterns separated by blanks or
    commas; lines starting with ``#`` are comments.  ``EXCEPT`` has no meaning there
    (libwrap reads it as a host name)."""
    patterns = [
        HostPattern.compile(token)
        for line in text.split("\n")
        if not line.startswith("#")
        for token in list_tokens(line)
    ]
    return PatternFile(tuple(patterns))
