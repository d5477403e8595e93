"""Unix domain sockets for ``accept = /path`` (POSIX only).

Binding replaces a stale socket file left by an earlier run (but never a file that is
not a socket), applies the service-level ``setuid``/``setgid`` as the file's owner, as
stunnel does, and the file is removed again when the listener closes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Sequence

from tlstunnel.config.model import SocketOption
from tlstunnel.net.sockopts import apply_socket_options


def bind_unix_socket(
    path: str,
    options: Sequence[SocketOption],
    backlog: int,
    *,
    user: str | None = None,
    group: str | None = None,
) -> socket.socket:
    """Create, bind and listen on ``path``; raises OSError (or KeyError for an unknown
    user or group) with the reason."""
    if not hasattr(socket, "AF_UNIX"):
        raise OSError(f"{path}: Unix domain sockets are not available on this platform")
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        apply_socket_options(sock, options, "a")
        sock.bind(path)
        if user is not None or group is not None:
            os.chown(path, _uid(user), _gid(group))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def remove_socket_file(path: str) -> None:
    """Remove the socket file of a closed listener (only if it still is a socket)."""
    with contextlib.suppress(OSError):
        _remove_stale_socket(path)


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; refusing to replace it")
    os.unlink(path)


def _uid(user: str | None) -> int:
    if user is None:
        return -1
    import pwd

    return int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid


def _gid(group: str | None) -> int:
    if group is None:
        return -1
    import grp

    return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
