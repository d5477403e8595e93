"""Socket options: stunnel's ``socket = a|l|r:NAME=VALUE`` and ``-sockets``.

The table lists every option name stunnel knows, with the socket level and constant
where this platform has one.  Sides: ``a`` the listening socket, ``l`` the accepted
(local) client socket, ``r`` the socket towards ``connect``.  Like stunnel we set
``SO_REUSEADDR`` on listening sockets and ``TCP_NODELAY`` on both connection sockets.
"""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass

from tlstunnel.config.model import SocketOption


@dataclass(frozen=True, slots=True)
class SocketOptionSpec:
    name: str
    level: int
    constant: int | None  # None: this platform does not have it
    kind: str  # "int", "linger", "time", "string"


# Constants the socket module of some Python versions lacks (IP_FREEBIND arrived in
# 3.12), with their values from the Linux headers.
_LINUX_FALLBACKS = {"IP_FREEBIND": 15}


def _const(name: str) -> int | None:
    value = getattr(socket, name, None)
    if value is None and sys.platform.startswith("linux"):
        value = _LINUX_FALLBACKS.get(name)
    return value if isinstance(value, int) else None


_SOL_TCP = getattr(socket, "IPPROTO_TCP", 6)
_SOL_IP = getattr(socket, "IPPROTO_IP", 0)
_SOL_IPV6 = getattr(socket, "IPPROTO_IPV6", 41)

SOCKET_OPTIONS: tuple[SocketOptionSpec, ...] = (
    SocketOptionSpec("SO_DEBUG", socket.SOL_SOCKET, _const("SO_DEBUG"), "int"),
    SocketOptionSpec("SO_DONTROUTE", socket.SOL_SOCKET, _const("SO_DONTROUTE"), "int"),
    SocketOptionSpec("SO_KEEPALIVE", socket.SOL_SOCKET, _const("SO_KEEPALIVE"), "int"),
    SocketOptionSpec("SO_LINGER", socket.SOL_SOCKET, _const("SO_LINGER"), "linger"),
    SocketOptionSpec("SO_OOBINLINE", socket.SOL_SOCKET, _const("SO_OOBINLINE"), "int"),
    SocketOptionSpec("SO_RCVBUF", socket.SOL_SOCKET, _const("SO_RCVBUF"), "int"),
    SocketOptionSpec("SO_SNDBUF", socket.SOL_SOCKET, _const("SO_SNDBUF"), "int"),
    SocketOptionSpec("SO_RCVLOWAT", socket.SOL_SOCKET, _const("SO_RCVLOWAT"), "int"),
    SocketOptionSpec("SO_SNDLOWAT", socket.SOL_SOCKET, _const("SO_SNDLOWAT"), "int"),
    SocketOptionSpec("SO_RCVTIMEO", socket.SOL_SOCKET, _const("SO_RCVTIMEO"), "time"),
    SocketOptionSpec("SO_SNDTIMEO", socket.SOL_SOCKET, _const("SO_SNDTIMEO"), "time"),
    SocketOptionSpec("SO_REUSEADDR", socket.SOL_SOCKET, _const("SO_REUSEADDR"), "int"),
    SocketOptionSpec("SO_BINDTODEVICE", socket.SOL_SOCKET, _const("SO_BINDTODEVICE"), "string"),
    SocketOptionSpec("TCP_KEEPCNT", _SOL_TCP, _const("TCP_KEEPCNT"), "int"),
    SocketOptionSpec("TCP_KEEPIDLE", _SOL_TCP, _const("TCP_KEEPIDLE"), "int"),
    SocketOptionSpec("TCP_KEEPINTVL", _SOL_TCP, _const("TCP_KEEPINTVL"), "int"),
    SocketOptionSpec("IP_TOS", _SOL_IP, _const("IP_TOS"), "int"),
    SocketOptionSpec("IP_TTL", _SOL_IP, _const("IP_TTL"), "int"),
    SocketOptionSpec("TCP_NODELAY", _SOL_TCP, _const("TCP_NODELAY"), "int"),
    SocketOptionSpec("IP_FREEBIND", _SOL_IP, _const("IP_FREEBIND"), "int"),
    SocketOptionSpec("IPV6_V6ONLY", _SOL_IPV6, _const("IPV6_V6ONLY"), "int"),
)

_BY_NAME = {spec.name.upper(): spec for spec in SOCKET_OPTIONS}

# What tlstunnel sets by itself, per side (shown by -sockets).
BUILT_IN_DEFAULTS = {("SO_REUSEADDR", "a"): "yes", ("TCP_NODELAY", "l"): "yes",
                     ("TCP_NODELAY", "r"): "yes"}  # fmt: skip


def lookup(name: str) -> SocketOptionSpec | None:
    return _BY_NAME.get(name.upper())


def apply_socket_options(sock: socket.socket, options: Iterable[SocketOption], side: str) -> None:
    """Set the options written for ``side`` on ``sock``; raises OSError on failure."""
    for option in options:
        if option.side != side:
            continue
        spec = lookup(option.name)
        if spec is None or spec.constant is None:
            raise OSError(f"socket option {option.name} is not available on this platform")
        if sock.family not in (socket.AF_INET6,) and spec.level == _SOL_IPV6:
            continue  # an IPv6-only option on an IPv4 socket: nothing to do
        sock.setsockopt(spec.level, spec.constant, _encode(spec, option.value))


def _encode(spec: SocketOptionSpec, value: int | tuple[int, int] | str) -> int | bytes:
    if spec.kind == "linger":
        onoff, seconds = value if isinstance(value, tuple) else (int(value), 0)
        return struct.pack("ii", int(onoff), int(seconds))
    if spec.kind == "time":
        seconds, micros = value if isinstance(value, tuple) else (int(value), 0)
        return struct.pack("ll", int(seconds), int(micros))
    if spec.kind == "string":
        return str(value).encode()
    if isinstance(value, tuple):
        raise OSError(f"socket option {spec.name} takes one number")
    return int(value)


def os_default(spec: SocketOptionSpec) -> str:
    """The value a fresh TCP socket has, as ``-sockets`` prints it."""
    if spec.constant is None:
        return "--"
    family = socket.AF_INET6 if spec.level == _SOL_IPV6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            if spec.kind == "linger":
                onoff, seconds = struct.unpack("ii", sock.getsockopt(spec.level, spec.constant, 8))
                return f"{onoff}:{seconds}"
            if spec.kind == "time":
                raw = sock.getsockopt(spec.level, spec.constant, struct.calcsize("ll"))
                seconds, micros = struct.unpack("ll", raw)
                return f"{seconds}:{micros}"
            if spec.kind == "string":
                return ""
            value = sock.getsockopt(spec.level, spec.constant)
    except OSError:
        return "--"
    numeric = ("SO_RCVBUF", "SO_SNDBUF", "SO_RCVLOWAT", "SO_SNDLOWAT")
    if spec.name in numeric or spec.name.startswith(("TCP_KEEP", "IP_TOS", "IP_TTL")):
        return str(value)
    return "yes" if value else "no"


def describe_defaults() -> list[str]:
    """The ``-sockets`` table, one line per option."""
    lines = [
        "    Option Name         |  Accept  |   Local  |  Remote  |OS default",
        "    --------------------+----------+----------+----------+----------",
    ]
    for spec in SOCKET_OPTIONS:
        cells = [BUILT_IN_DEFAULTS.get((spec.name, side), "--") for side in "alr"]
        shown = [f"{c:>10}" if c != "--" else "    --    " for c in cells]
        lines.append(f"    {spec.name:<20}|{'|'.join(shown)}|{os_default(spec):>10}")
    return lines
