"""Plaintext backends for tunnels to forward to: real TCP servers on loopback threads.

``EchoServer`` answers every byte; ``RecordingServer`` records what each connection
sent and then plays a scripted reply, so tests can check byte-exact delivery in both
directions and half-close ordering.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field


class _ThreadedServer:
    def __init__(self, handler: Callable[[socket.socket], None], host: str = "127.0.0.1") -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(512)
        self.port: int = self._sock.getsockname()[1]
        self.host = host
        self._handler = handler
        self._threads: list[threading.Thread] = []
        self._closing = False
        self.accepted = 0
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._handler(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._acceptor.join(timeout=5)


class EchoServer(_ThreadedServer):
    """Sends back everything it receives; half-closes after the client's EOF."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(self._echo, host)

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        while data := conn.recv(65536):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)


@dataclass
class Received:
    """What one connection delivered to a ``RecordingServer``."""

    size: int = 0
    digest: str = ""
    saw_eof: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class RecordingServer(_ThreadedServer):
    """Reads until EOF (recording size and SHA-256), then sends ``reply`` and closes.

    With ``reply_first`` it sends the reply *before* reading, which lets a test check
    that a half-closed client still receives everything.
    """

    def __init__(self, reply: bytes = b"", *, reply_first: bool = False) -> None:
        self.reply = reply
        self.reply_first = reply_first
        self.received: list[Received] = []
        super().__init__(self._record)

    def _record(self, conn: socket.socket) -> None:
        record = Received()
        self.received.append(record)
        if self.reply_first:
            conn.sendall(self.reply)
        digest = hashlib.sha256()
        while data := conn.recv(65536):
            digest.update(data)
            record.size += len(data)
        record.saw_eof = True
        record.digest = digest.hexdigest()
        if not self.reply_first:
            conn.sendall(self.reply)
        conn.shutdown(socket.SHUT_WR)
        record.done.set()


class EarlyCloser(_ThreadedServer):
    """Sends ``reply``, half-closes at once, then records everything the client sends.

    The client keeps sending after the tunnel has passed the backend's EOF on to it:
    the direction that is still open must carry every byte.
    """

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.received: list[Received] = []
        super().__init__(self._serve_early)

    def _serve_early(self, conn: socket.socket) -> None:
        record = Received()
        self.received.append(record)
        conn.sendall(self.reply)
        conn.shutdown(socket.SHUT_WR)
        digest = hashlib.sha256()
        while data := conn.recv(65536):
            digest.update(data)
            record.size += len(data)
        record.saw_eof = True
        record.digest = digest.hexdigest()
        record.done.set()
