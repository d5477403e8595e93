"""Real peers for the revocation tests: OCSP responders and TLS servers on loopback.

* ``OpenSSLResponder``: ``openssl ocsp`` as a responder (``-index``, ``-CA``, ``-rsigner``,
  ``-port 0``): the port comes from its ``ACCEPT [::]:PORT`` line.
* ``ReplayResponder``: an HTTP server that answers every POST with the same bytes (a
  response recorded from ``openssl ocsp``: a replay attack), and keeps the requests.
* ``HangingResponder``: accepts connections and never answers (``TIMEOUTocsp``).
* ``closed_port``: a port where nothing listens (connection refused).
* ``RecordingTLSServer``: a TLS server (Python ssl, blocking, one thread per connection)
  that records every byte it receives: the backend of a client-mode tunnel.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Self

from cryptography import x509


class OpenSSLResponder:
    """``openssl ocsp`` answering for the certificates in ``index`` issued by ``ca``."""

    def __init__(
        self,
        directory: Path,
        ca: Path,
        signer: Path,
        index_lines: list[str],
        *,
        extra: tuple[str, ...] = (),
        port: int = 0,
    ) -> None:
        self.index = directory / f"index-{os.getpid()}-{time.monotonic_ns()}.txt"
        self.index.write_text("".join(index_lines), encoding="ascii")
        command = [
            "openssl", "ocsp", "-port", str(port), "-index", str(self.index), "-CA", str(ca),
            "-rsigner", str(signer), "-ignore_err", "-nmin", "10", *extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode("ascii", "replace")
        match = re.search(r"ACCEPT \S*:(\d+)", line)
        if match is None:
            self.close()
            raise AssertionError(f"openssl ocsp did not start: {line!r}")
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}/"

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> OpenSSLResponder:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _LoopbackServer:
    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/ocsp"
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.held:
            conn.close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class HangingResponder(_LoopbackServer):
    """Accepts, reads nothing, answers nothing, closes nothing."""

    def handle(self, conn: socket.socket) -> None:
        self.held.append(conn)


class ReplayResponder(_LoopbackServer):
    """Answers every request with ``answer`` as an HTTP/1.0 200; keeps the request bodies."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append(body)
            conn.sendall(
                b"HTTP/1.0 200 OK\r\nContent-Type: application/ocsp-response\r\n"
                + f"Content-Length: {len(self.answer)}\r\n\r\n".encode()
                + self.answer
            )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def fetch_ocsp_response(url: str, cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """One DER response from ``url``, asked with ``openssl ocsp`` (no nonce)."""
    from cryptography.hazmat.primitives import serialization

    directory = Path(os.environ.get("TMPDIR", "/tmp"))
    stem = directory / f"ocsp-{os.getpid()}-{time.monotonic_ns()}"
    cert_file, issuer_file, out = (stem.with_suffix(s) for s in (".crt", ".ca", ".der"))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    issuer_file.write_bytes(issuer.public_bytes(serialization.Encoding.PEM))
    try:
        subprocess.run(
            ["openssl", "ocsp", "-url", url, "-issuer", str(issuer_file), "-cert",
             str(cert_file), "-no_nonce", "-noverify", "-respout", str(out)],
            check=True, capture_output=True, timeout=10,
        )  # fmt: skip
        return out.read_bytes()
    finally:
        for path in (cert_file, issuer_file, out):
            path.unlink(missing_ok=True)


class RecordingTLSServer:
    """A TLS server on 127.0.0.1 that records what each client sends, then echoes it."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.received = bytearray()
        self.handshakes = 0
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.handshakes += 1
                while data := tls.recv(65536):
                    self.received += data
                    tls.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)

    def __enter__(self) -> RecordingTLSServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def talk(port: int, cert: Path, ca: Path) -> bytes:
    """Connect with a client certificate, send a line, return what comes back
    (b"" when the tunnel refused us: alert, reset or close)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(ca))
    context.check_hostname = False
    context.load_cert_chain(str(cert))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=15) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(b"hello\n")
            return tls.recv(100)
    except (ssl.SSLError, OSError):
        return b""


def plain_talk(port: int) -> bytes:
    """Through a client-mode tunnel: send a line in plaintext, return the answer
    (b"" when the tunnel refused the server and closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        try:
            sock.sendall(b"secret\n")
            return sock.recv(100)
        except OSError:
            return b""
