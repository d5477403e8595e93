"""Connections that no listener accepts: inetd mode, and ``exec`` + ``connect``.

inetd mode
    A file with no ``[section]`` and no ``accept``: whoever started us (inetd, xinetd,
    tcpserver, systemd with ``Accept=yes``) already accepted the connection and handed
    it over as standard input and output.  We serve exactly that one connection, as a
    service's accepted client would be served (TLS on it in server mode), and return
    when it has ended.  A socket on stdin is used as a socket (half-close, the client's
    address in logs and ``REMOTE_HOST``); anything else (pipes) is driven as two
    descriptors.  Descriptors 0 and 1 are pointed at /dev/null once taken, so that our
    close really is the last one and nothing of ours ever writes there: the log never
    goes to stdout.

exec + connect
    A service with both and no ``accept`` runs its program at start, the program's
    standard input and output standing where an accepted client would, and connects
    out for it; stunnel's classic use is pppd over TLS.  With ``retry = yes`` the
    program is started again a second after each tunnel ends.  Such tunnels belong to
    the runtime they started with: a reload does not restart them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from typing import TYPE_CHECKING, cast

from tlstunnel.log import ERR, ConnectionLog
from tlstunnel.net.endpoint import Endpoint
from tlstunnel.net.exec import DescriptorTransport, Launcher

if TYPE_CHECKING:
    from tlstunnel.connection import Connection
    from tlstunnel.server import Server
    from tlstunnel.service import ServiceRuntime

RETRY_DELAY = 1.0  # stunnel waits a second before starting the program again
CHILD_EXIT_GRACE = 1.0  # inetd mode: how long to wait to log the program's exit


# -- inetd mode ----------------------------------------------------------------------------


async def serve_stdio(runtime: ServiceRuntime) -> None:
    """Serve the one connection on standard input and output through ``runtime``."""
    endpoint = cast(Endpoint, runtime.accept())
    loop = asyncio.get_running_loop()
    sock = _stdio_socket()
    if sock is not None:
        _retire_stdio()
        await loop.connect_accepted_socket(lambda: endpoint, sock)
    else:
        read_fd, write_fd = os.dup(0), os.dup(1)
        _retire_stdio()
        DescriptorTransport(endpoint, read_fd, write_fd)
    connection = _connection_of(runtime, endpoint)
    if connection is not None and connection.task is not None:
        await asyncio.wait([connection.task])
    if runtime.launcher is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CHILD_EXIT_GRACE):
                await runtime.launcher.wait_all()


def _stdio_socket() -> socket.socket | None:
    """Standard input as a stream socket, when it is one and standard output is the
    same socket (inetd, xinetd, systemd ``Accept=yes``); otherwise None."""
    try:
        stdin, stdout = os.fstat(0), os.fstat(1)
    except OSError:
        return None
    if not stat.S_ISSOCK(stdin.st_mode) or (stdin.st_dev, stdin.st_ino) != (
        stdout.st_dev,
        stdout.st_ino,
    ):
        return None
    sock = socket.socket(fileno=os.dup(0))
    if sock.type != socket.SOCK_STREAM:
        sock.close()
        return None
    return sock


def _retire_stdio() -> None:
    """Point descriptors 0 and 1 at /dev/null: ours are the duplicates now."""
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
    finally:
        if devnull > 1:
            os.close(devnull)


def _connection_of(runtime: ServiceRuntime, endpoint: Endpoint) -> Connection | None:
    """The connection ``runtime`` started for ``endpoint`` (None if it refused it)."""
    return next((c for c in runtime.connections if c.client is endpoint), None)


# -- exec + connect ------------------------------------------------------------------------


def starts_at_once(runtime: ServiceRuntime) -> bool:
    """exec + connect without accept: a tunnel that starts with the server."""
    config = runtime.config
    return config.exec_path is not None and bool(config.connect) and not config.accept


async def run_program_tunnel(runtime: ServiceRuntime) -> None:
    """Start the program, tunnel it to ``connect``; again after each end if ``retry``."""
    config = runtime.config
    launcher = Launcher(config)
    log = ConnectionLog(runtime.log, "ui", config.log_level.level)
    while True:
        endpoint = cast(Endpoint, runtime.accept())
        try:
            await launcher.start(endpoint, log, {})
        except OSError as exc:
            log(ERR, f"Service [{config.name}]: cannot start {launcher.program}: {exc}")
        else:
            connection = _connection_of(runtime, endpoint)
            if connection is not None and connection.task is not None:
                # wait(), not await: cancelling us must not cancel the connection (the
                # server closes it on the way out, and logs how it ended).
                await asyncio.wait([connection.task])
        if not config.retry:
            return
        await asyncio.sleep(RETRY_DELAY)


async def serve_with_program_tunnels(server: Server) -> None:
    """``server.serve()``, plus the exec + connect tunnels that need no client."""
    tunnels = [
        asyncio.create_task(run_program_tunnel(runtime), name=f"exec [{name}]")
        for name, runtime in server.runtimes.items()
        if starts_at_once(runtime)
    ]
    try:
        await server.serve()
    finally:
        for task in tunnels:
            task.cancel()
        await asyncio.gather(*tunnels, return_exceptions=True)
