"""Listening sockets: binding an ``accept`` address and serving it with the event loop.

A ``Listener`` outlives configurations: on reload a service whose ``accept`` address is
unchanged keeps its socket (no gap in which clients are refused, and no re-bind that a
dropped privilege could forbid) and the listener is simply pointed at the new settings.
Accepted sockets are handed to ``on_accept``, which returns the protocol for them.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Callable, Sequence

from tlstunnel.config.model import Address, SocketOption
from tlstunnel.net.sockopts import apply_socket_options

# Under connection storms the kernel's default queue (asyncio passes 100) overflows and
# clients see resets; ask for the system maximum (Linux caps it at net.core.somaxconn).
LISTEN_BACKLOG = max(getattr(socket, "SOMAXCONN", 128), 4096)


def listen_host(address: Address) -> str:
    """stunnel's rule: ``accept = PORT`` listens on every IPv4 address."""
    return address.host if address.host is not None else "0.0.0.0"


def bind_socket(address: Address, options: Sequence[SocketOption]) -> socket.socket:
    """Create, configure, bind and listen; raises OSError with the system's reason."""
    infos = socket.getaddrinfo(
        listen_host(address), address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, _type, _proto, _name, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if sys.platform == "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        apply_socket_options(sock, options, "a")
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bound_address(sock: socket.socket) -> str:
    """The address actually bound (port 0 becomes the real port), stunnel-style."""
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


class Listener:
    """One bound socket; ``on_accept`` is looked up at each accept, so it can change."""

    def __init__(self, address: Address, sock: socket.socket) -> None:
        self.address = address
        self.sock = sock
        self.display = bound_address(sock)
        self.on_accept: Callable[[], asyncio.BaseProtocol] | None = None
        self._server: asyncio.base_events.Server | None = None

    def key(self) -> tuple[str, int]:
        return (listen_host(self.address), self.address.port)

    @property
    def started(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Begin accepting (once; later calls do nothing)."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()

        def make_protocol() -> asyncio.BaseProtocol:
            assert self.on_accept is not None
            return self.on_accept()

        self._server = await loop.create_server(
            make_protocol, sock=self.sock, backlog=LISTEN_BACKLOG
        )

    def close(self) -> None:
        """Stop accepting; connections already accepted are not affected."""
        if self._server is not None:
            self._server.close()
            self._server = None
        else:
            self.sock.close()
