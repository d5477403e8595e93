"""Transparent proxying (``transparent = source | destination | both``), Linux only.

* **source**: the connection to the backend leaves from the *client's* address, so the
  backend sees who really connected.  The upstream socket gets ``IP_TRANSPARENT`` (which
  lets it bind a non-local address) and is bound to the client's IP before connecting.
  Replies must be routed back to this host; that is the operator's firewall and policy
  routing (``-m socket`` mark + ``ip rule``), as with stunnel.
* **destination**: the client connected to some other address and the firewall
  diverted it here (iptables ``TPROXY`` or ``REDIRECT``); the tunnel connects to that
  original destination instead of ``connect``.  With TPROXY the accepted socket's own
  address *is* the original destination (the listening socket needs
  ``IP_TRANSPARENT``); with REDIRECT the kernel keeps it behind ``SO_ORIGINAL_DST``.
* **both**: the two together.

Everything needs CAP_NET_ADMIN; ``check_available`` says so plainly at start instead
of failing on the first connection.
"""

from __future__ import annotations

import socket
import struct
import sys

from tlstunnel.config.model import Transparent

# Linux constants the socket module does not always expose.
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
SOL_IPV6 = getattr(socket, "IPPROTO_IPV6", 41)


class TransparentUnavailable(OSError):
    """This platform or this process cannot do transparent proxying."""


def check_available(mode: Transparent) -> None:
    """Raise ``TransparentUnavailable`` with the reason when ``mode`` cannot work here."""
    if mode is Transparent.NONE:
        return
    if not sys.platform.startswith("linux"):
        raise TransparentUnavailable(f"transparent = {mode.value} needs Linux")
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    except PermissionError as exc:
        raise TransparentUnavailable(
            f"transparent = {mode.value} needs the CAP_NET_ADMIN capability (run as root "
            "or grant it): the kernel refused IP_TRANSPARENT"
        ) from exc
    finally:
        probe.close()


def uses_source(mode: Transparent) -> bool:
    return mode in (Transparent.SOURCE, Transparent.BOTH)


def uses_destination(mode: Transparent) -> bool:
    return mode in (Transparent.DESTINATION, Transparent.BOTH)


def make_listening_transparent(sock: socket.socket) -> None:
    """Let a listening socket accept connections addressed to non-local IPs (TPROXY)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)


def bind_as_client(sock: socket.socket, client_ip: str) -> None:
    """Make ``sock`` leave from the client's address (transparent = source)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.bind((client_ip, 0))


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the client meant to connect (transparent = destination).

    REDIRECT leaves it in SO_ORIGINAL_DST; TPROXY leaves it as the socket's own address
    (and SO_ORIGINAL_DST then fails or repeats it).
    """
    if sock.family == socket.AF_INET:
        try:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        except OSError:
            raw = b""
        if len(raw) >= 8:
            port = struct.unpack_from("!H", raw, 2)[0]
            address = socket.inet_ntop(socket.AF_INET, raw[4:8])
            return address, port
    name = sock.getsockname()
    return str(name[0]), int(name[1])
