"""Connecting to a service's ``connect`` addresses: resolution, failover and deadlines.

Names are resolved when the service starts (stunnel's default, ``delay = no``), so a
connection costs no DNS lookup; with ``delay = yes`` they are resolved per connection.
Every address a name resolves to is a separate target.  ``failover = prio`` tries the
targets in the order written; ``rr`` starts each connection one target further along.
Each attempt gets the full ``TIMEOUTconnect``; a refused or timed-out target is logged
and the next one is tried, and when none answers the error lists every attempt.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tlstunnel.config.model import Address, SocketOption
from tlstunnel.log import ERR, INFO, NOTICE, ConnectionLog
from tlstunnel.net.endpoint import Endpoint
from tlstunnel.net.sockopts import apply_socket_options


@dataclass(frozen=True, slots=True)
class Target:
    """One resolved address to connect to."""

    family: int
    sockaddr: tuple[str, int] | tuple[str, int, int, int] | str  # str: a Unix socket path

    def __str__(self) -> str:
        if isinstance(self.sockaddr, str):
            return self.sockaddr
        host, port = self.sockaddr[0], self.sockaddr[1]
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"


_AF_UNIX: int = getattr(socket, "AF_UNIX", -1)


class UpstreamFailed(Exception):
    """No target accepted the connection; ``attempts`` says what each one did."""

    def __init__(self, attempts: list[str]) -> None:
        super().__init__("; ".join(attempts) if attempts else "no address to connect to")
        self.attempts = attempts


def connect_host(address: Address) -> str:
    """stunnel's rule: a ``connect`` with only a port means localhost."""
    return address.host if address.host is not None else "localhost"


def resolve(addresses: Sequence[Address]) -> list[Target]:
    """Resolve every address now (blocking; used at start and reload, not per connection).

    Raises ``OSError`` naming the address that does not resolve.
    """
    targets: list[Target] = []
    for address in addresses:
        if address.path is not None:
            targets.append(Target(_AF_UNIX, address.path))
            continue
        host = connect_host(address)
        try:
            infos = socket.getaddrinfo(host, address.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise OSError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
        for family, _type, _proto, _name, sockaddr in infos:
            target = Target(family, sockaddr)  # type: ignore[arg-type]
            if target not in targets:
                targets.append(target)
    return targets


async def resolve_async(addresses: Sequence[Address]) -> list[Target]:
    """Resolve per connection (``delay = yes``) without blocking the loop."""
    loop = asyncio.get_running_loop()
    targets: list[Target] = []
    for address in addresses:
        if address.path is not None:
            targets.append(Target(_AF_UNIX, address.path))
            continue
        host = connect_host(address)
        try:
            infos = await loop.getaddrinfo(host, address.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UpstreamFailed([f"{host}:{address.port}: cannot resolve: {exc}"]) from exc
        for family, _type, _proto, _name, sockaddr in infos:
            target = Target(family, sockaddr)  # type: ignore[arg-type]
            if target not in targets:
                targets.append(target)
    return targets


def resolve_local(name: str) -> dict[int, str]:
    """``local = HOST``: the source address to bind, per address family.

    Raises ``OSError`` when the name does not resolve.
    """
    infos = socket.getaddrinfo(name, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    found: dict[int, str] = {}
    for family, _type, _proto, _name, sockaddr in infos:
        found.setdefault(family, str(sockaddr[0]))
    return found


def bind_local(local: Mapping[int, str]) -> Callable[[socket.socket, Target], None]:
    """``local = HOST``: bind each outgoing socket to the source address of its family."""

    def bind(sock: socket.socket, target: Target) -> None:
        source = local.get(target.family)
        if source is None:
            raise OSError(f"local has no address of the family of {target}")
        sock.bind((source, 0))

    return bind


def _close(sock: socket.socket | None) -> None:
    if sock is not None:
        sock.close()


async def connect_first(
    targets: Sequence[Target],
    start: int,
    make_endpoint: Callable[[Target], Endpoint],
    *,
    timeout: float,
    socket_options: Sequence[SocketOption],
    log: ConnectionLog,
    prepare_socket: Callable[[socket.socket, Target], None] | None = None,
) -> tuple[Endpoint, Target]:
    """Connect to the first target that answers, starting at index ``start``.

    ``make_endpoint(target)`` builds the protocol for the socket, so a TLS client can
    offer the session it cached for that very target.  ``prepare_socket(sock, target)``
    runs on the new socket before it connects (binding a source address: ``local``,
    ``transparent = source``).
    """
    loop = asyncio.get_running_loop()
    # Our own socket only when there is something to set before connecting, or an IPv6
    # scope id that a host string would lose.
    needs_own_socket = (
        prepare_socket is not None
        or any(option.side == "r" for option in socket_options)
        or any(
            isinstance(t.sockaddr, tuple) and len(t.sockaddr) == 4 and t.sockaddr[3]
            for t in targets
        )
    )
    attempts: list[str] = []
    count = len(targets)
    for step in range(count):
        target = targets[(start + step) % count]
        if log.enabled(INFO):
            log(INFO, f"s_connect: connecting {target}")
        sock: socket.socket | None = None
        try:
            endpoint = make_endpoint(target)
            async with asyncio.timeout(timeout):
                if isinstance(target.sockaddr, str):
                    await loop.create_unix_connection(lambda: endpoint, target.sockaddr)  # noqa: B023
                elif needs_own_socket:
                    sock = socket.socket(target.family, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    apply_socket_options(sock, socket_options, "r")
                    if prepare_socket is not None:
                        prepare_socket(sock, target)
                    await loop.sock_connect(sock, target.sockaddr)
                    await loop.create_connection(lambda: endpoint, sock=sock)  # noqa: B023
                else:
                    # The event loop makes and connects the socket itself: fewer steps.
                    host, port = target.sockaddr[0], target.sockaddr[1]
                    await loop.create_connection(lambda: endpoint, host, port)  # noqa: B023
        except TimeoutError:
            _close(sock)
            attempts.append(f"{target}: no answer within {timeout:g} s")
            log(ERR, f"s_connect: s_poll_wait {target}: TIMEOUTconnect exceeded")
            continue
        except OSError as exc:
            _close(sock)
            # asyncio puts "Connect call failed (...)" in strerror; say what errno means.
            why = f"{os.strerror(exc.errno)} ({exc.errno})" if exc.errno else str(exc)
            attempts.append(f"{target}: {why}")
            log(ERR, f"s_connect: connect {target}: {why}")
            continue
        except BaseException:
            _close(sock)
            raise
        if log.enabled(NOTICE):
            log(NOTICE, f"s_connect: connected {target}")
        return endpoint, target
    # One line that lists every attempt: what an operator needs when a backend is down.
    log(ERR, f"No more addresses to connect: {'; '.join(attempts) or 'none configured'}")
    raise UpstreamFailed(attempts)
