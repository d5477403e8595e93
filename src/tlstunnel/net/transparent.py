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
  ``IP_TRANSPARENT``); with REDIRECT the kernel keeps it behind ``SO_ORIGINAL_DST``
  (IPv4 and IPv6).  A client that dials the tunnel's own port was diverted by nothing:
  its "original destination" is the tunnel itself, so it is refused (``NotDiverted``)
  rather than the tunnel connecting to itself without end.
* **both**: the two together.

Everything needs CAP_NET_ADMIN (Linux accepts CAP_NET_RAW too); ``check_available``
says so plainly at start instead of failing on the first connection, and refuses
``source`` with ``setuid``, which gives the capability up.  Tests:
``tests/net/test_transparent.py``, in network namespaces.
"""

from __future__ import annotations

import errno
import ipaddress
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


def check_available(mode: Transparent, setuid: str | None = None) -> None:
    """Raise ``TransparentUnavailable`` with the reason when ``mode`` cannot work here.

    ``setuid`` is the global option: once it drops root, no new socket can be made
    transparent, so ``source`` (which needs that for every connection) cannot work.
    ``destination`` can: the listening socket is made transparent before the drop and
    the sockets it accepts inherit that.
    """
    if mode is Transparent.NONE:
        return
    if not sys.platform.startswith("linux"):
        raise TransparentUnavailable(f"transparent = {mode.value} needs Linux")
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    except PermissionError as exc:
        raise TransparentUnavailable(
            f"transparent = {mode.value} needs the CAP_NET_ADMIN capability (Linux also "
            "accepts CAP_NET_RAW; run as root or grant one): the kernel refused "
            "IP_TRANSPARENT"
        ) from exc
    finally:
        probe.close()
    if uses_source(mode) and setuid not in (None, "0", "root"):
        raise TransparentUnavailable(
            f"transparent = {mode.value} makes every connection to the backend leave from "
            f"the client's address, which needs CAP_NET_ADMIN each time; setuid = {setuid} "
            "gives it up after start: remove setuid (stunnel too needs root here)"
        )


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
    """Make ``sock`` leave from the client's address (transparent = source).

    A dual-stack listener (``accept = :::PORT``) sees an IPv4 client as
    ``::ffff:a.b.c.d``; towards an IPv4 backend that is the plain IPv4 address.
    """
    address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    if sock.family == socket.AF_INET6:
        if address.version == 4:
            raise OSError(
                errno.EAFNOSUPPORT,
                f"transparent = source cannot reach an IPv6 backend from the IPv4 "
                f"client address {client_ip}",
            )
        sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
    else:
        if isinstance(address, ipaddress.IPv6Address):
            if address.ipv4_mapped is None:
                raise OSError(
                    errno.EAFNOSUPPORT,
                    f"transparent = source cannot reach an IPv4 backend from the IPv6 "
                    f"client address {client_ip}",
                )
            client_ip = str(address.ipv4_mapped)
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.bind((client_ip, 0))


class NotDiverted(OSError):
    """The connection reached the tunnel's own address: no firewall rule diverted it."""


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the client meant to connect (transparent = destination), in the address
    family of ``sock`` (an IPv4 destination on a dual-stack socket comes back as
    ``::ffff:a.b.c.d``).

    REDIRECT and DNAT leave it in SO_ORIGINAL_DST (conntrack's record of the first
    packet); TPROXY leaves it as the socket's own address, and SO_ORIGINAL_DST, when
    conntrack is loaded at all, then repeats that address.

    Raises ``NotDiverted`` when the client dialled this host's own address directly:
    connecting "there" would reach the tunnel again, which would connect to itself
    again, and so on until it runs out of file descriptors.
    """
    own = sock.getsockname()
    here = (str(own[0]), int(own[1]))
    found = _conntrack_destination(sock)
    destination = found if found is not None else here
    if sock.family == socket.AF_INET6 and ":" not in destination[0]:
        destination = (f"::ffff:{destination[0]}", destination[1])
    if _same_address(destination, here) and _is_local(destination[0]):
        raise NotDiverted(
            errno.ELOOP,
            f"the client connected to this host's own address {_format(destination)}, "
            "not diverted by a TPROXY, REDIRECT or DNAT rule; transparent = destination "
            "would connect the tunnel to itself",
        )
    return destination


def _conntrack_destination(sock: socket.socket) -> tuple[str, int] | None:
    """SO_ORIGINAL_DST, or None where conntrack has no record of this connection."""
    attempts: list[tuple[int, int, int, int]] = [
        # (level, option, sockaddr size, family of the answer)
        (socket.SOL_IP, SO_ORIGINAL_DST, 16, socket.AF_INET)
    ]
    if sock.family == socket.AF_INET6:
        # IPv6 conntrack first; an IPv4 client of a dual-stack socket is in IPv4's.
        attempts.insert(0, (SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28, socket.AF_INET6))
    for level, option, size, family in attempts:
        try:
            raw = sock.getsockopt(level, option, size)
        except OSError:
            continue
        if len(raw) < size or struct.unpack_from("=H", raw, 0)[0] != family:
            continue
        port = struct.unpack_from("!H", raw, 2)[0]
        if family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    return None


def _same_address(a: tuple[str, int], b: tuple[str, int]) -> bool:
    return a[1] == b[1] and ipaddress.ip_address(a[0]) == ipaddress.ip_address(b[0])


def _is_local(host: str) -> bool:
    """Whether ``host`` is one of this host's own addresses (in this network namespace).

    The kernel routes a packet for a local address with that address as its source, so
    a connected UDP socket (which sends nothing) tells.  A bind test would not:
    ``ip_nonlocal_bind`` and ``IP_FREEBIND`` make any address bindable.
    """
    address = ipaddress.ip_address(host)
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    if mapped is not None:
        address = mapped
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((str(address), 9))
        except OSError:
            return False
        return ipaddress.ip_address(str(probe.getsockname()[0]).split("%", 1)[0]) == address


def _format(address: tuple[str, int]) -> str:
    """host:port as the log writes addresses: [v6]:port, and an IPv4 client of a
    dual-stack socket as plain IPv4."""
    host, port = address
    host = host.removeprefix("::ffff:") if "." in host else host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
