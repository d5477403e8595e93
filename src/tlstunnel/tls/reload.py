"""Reloading certificates, keys, CAs and CRLs while connections run: ``reload``.

SIGHUP re-reads the whole configuration (``Server.reload``), which rebuilds every
service's TLS objects too.  This module adds the lighter, automatic path the global
``reload`` option asks for: ``reload = watch`` (look every 2 seconds) or
``reload = SECONDS``.  It looks at the files each service's TLS is built from (``cert``,
``key``, ``CAfile``, every file in ``CApath``, ``CRLfile``, every file in ``CRLpath``);
when any of them changed (modification time, size, inode — so an editor's
write-and-rename is seen as well as an in-place rewrite), it builds that service's TLS
objects anew from the same configuration and swaps them in:

* new connections handshake with the new certificate; live connections keep the
  ``SSLObject`` they have, so nothing is dropped, and the listening sockets are not
  touched (no re-bind);
* if the new files do not load (a key that does not match, half-written PEM, a CA file
  that is not one), the error is logged and the service keeps its current objects;
  the next change is tried again.

"watch" polls instead of using inotify: the standard library has no inotify, and a
``stat`` of a handful of files every 2 seconds costs nothing measurable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

WATCH_INTERVAL = 2.0

# (mtime_ns, size, inode) for a file; None when it is missing or unreadable.
Signature = tuple[int, int, int] | None


def tls_files(config: object) -> list[str]:
    """The files and folders a service's TLS objects are built from."""
    names = ("cert", "key", "ca_file", "ca_path", "crl_file", "crl_path")
    found: list[str] = []
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, str) and value and value not in found:
            found.append(value)
    return found


def _signature(path: str) -> Signature:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_mtime_ns, status.st_size, status.st_ino)


def snapshot(paths: Iterable[str]) -> dict[str, Signature]:
    """Signatures of ``paths``; a folder also contributes every file directly in it."""
    seen: dict[str, Signature] = {}
    for path in paths:
        seen[path] = _signature(path)
        if os.path.isdir(path):
            try:
                entries = sorted(os.listdir(path))
            except OSError:
                continue
            for entry in entries:
                full = os.path.join(path, entry)
                seen[full] = _signature(full)
    return seen


class FileWatch:
    """Remembers how a set of files looked; ``changed()`` says whether they moved on."""

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = list(paths)
        self._last = snapshot(self.paths)

    def changed(self) -> bool:
        current = snapshot(self.paths)
        if current == self._last:
            return False
        self._last = current
        return True
