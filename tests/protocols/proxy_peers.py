"""Real peers for the PROXY protocol tests: HAProxy, and a backend that keeps the
first bytes of each connection.

``HAProxy`` runs the Debian package's binary in the foreground (``-db``) on a
configuration written by the test, with ports picked free beforehand (HAProxy cannot
bind port 0 and report it).  ``HeaderBackend`` is a plain TCP server that records,
per connection, everything received until the client's marker arrives, then echoes the
rest: a test reads the exact PROXY header bytes a tunnel sent.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def haproxy_path() -> str:
    path = shutil.which("haproxy")
    if path is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return path


class HAProxy:
    """``haproxy -db -f CONFIG``; ``ports`` are waited for until they accept."""

    def __init__(self, directory: Path, config: str, ports: list[int]) -> None:
        self.config_path = directory / "haproxy.cfg"
        self.config_path.write_text(config, encoding="utf-8")
        self.log_path = directory / "haproxy.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [haproxy_path(), "-db", "-f", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
        try:
            for port in ports:
                self._wait_for(port)
        except BaseException:
            self.stop()
            raise

    def _wait_for(self, port: int) -> None:
        """Until HAProxy holds the port: found by failing to bind it, not by connecting
        (a probe connection would travel through to the servers under test)."""
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"haproxy exited:\n{self.log()}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    time.sleep(0.05)  # bound; listen() follows at once
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy never listened on {port}:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


HAPROXY_DEFAULTS = """\
global
    log stdout format raw local0 info
defaults
    log global
    timeout connect 2s
    timeout client 10s
    timeout server 10s
"""


class HeaderBackend:
    """Records what each connection sends up to and including ``marker``, then echoes
    everything after it.  ``headers`` holds one entry per connection, in order."""

    def __init__(self, marker: bytes = b"hello", host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.marker = marker
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self.received: list[bytes] = []
        self.connections = 0
        self._arrived = threading.Condition()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._arrived:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        try:
            with conn:
                conn.settimeout(10)
                while self.marker not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                with self._arrived:
                    self.received.append(data)
                    self._arrived.notify_all()
                if self.marker in data:
                    conn.sendall(data.split(self.marker, 1)[1] + b"ok\n")
                    while chunk := conn.recv(65536):
                        conn.sendall(chunk)
        except OSError:
            with self._arrived:
                if data not in self.received:
                    self.received.append(data)
                    self._arrived.notify_all()

    def wait(self, count: int = 1, timeout: float = 10) -> list[bytes]:
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"{len(self.received)} connection(s) reached the backend")
            return list(self.received)

    def close(self) -> None:
        self._sock.close()
