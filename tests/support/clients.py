"""Real clients for tunnels under test: Python's ssl on blocking sockets."""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path


def client_context(
    ca: Path | None,
    *,
    cert: Path | None = None,
    version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        context.load_verify_locations(str(ca))
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(str(cert))
    if version is not None:
        context.minimum_version = version
        context.maximum_version = version
    return context


def tls_connect(
    port: int,
    ca: Path | None,
    *,
    host: str = "127.0.0.1",
    cert: Path | None = None,
    version: ssl.TLSVersion | None = None,
    server_hostname: str = "localhost",
    timeout: float = 10.0,
) -> ssl.SSLSocket:
    raw = socket.create_connection((host, port), timeout=timeout)
    context = client_context(ca, cert=cert, version=version)
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


class HalfClosingTLSClient:
    """A TLS client that can half-close: close_notify + TCP FIN, then keep reading.

    Python's ``SSLSocket`` cannot do this (``unwrap`` waits for the peer's alert), so
    this drives an ``SSLObject`` over memory BIOs on a blocking socket.
    """

    def __init__(self, port: int, ca: Path | None, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=20)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.tls = client_context(ca).wrap_bio(self._in, self._out, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        if self._out.pending:
            self.sock.sendall(self._out.read())

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def half_close(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self._flush()
        self.sock.shutdown(socket.SHUT_WR)

    def receive_all(self) -> tuple[bytes, bool]:
        """Read until the server's close_notify (True) or a bare TCP EOF (False)."""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                if not self._fill():
                    return b"".join(chunks), False
                continue
            except ssl.SSLZeroReturnError:
                return b"".join(chunks), True
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)

    def close(self) -> None:
        self.sock.close()
