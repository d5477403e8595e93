"""Real proxies and servers for the connect/socks tests, all on loopback.

* ``TinyProxy``: Debian's tinyproxy, an HTTP proxy that answers CONNECT (optionally
  with Basic authentication), run in the foreground from a temporary folder.
* ``MicroSocks``: Debian's microsocks, a small SOCKS 5 server (optionally with
  username/password authentication).
* ``TLSEchoServer``: a TLS server (Python's ssl on real sockets) that echoes and
  records the SNI name each client sent: the destination behind a proxy.
* ``ScriptedProxy``: an HTTP proxy on a real socket whose answer the test chooses
  (a status line, extra bytes after it); it records each request head and, after a
  2xx, relays to the host the request named.  For what a real proxy will not do on
  demand (echo our headers back, misbehave).
* ``HTTPServer``: a tiny HTTP/1.0 server for curl to fetch through a SOCKS tunnel;
  it counts connections, so a test can prove nothing reached it.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

from tests.support.backends import _ThreadedServer


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for programs that need one in advance)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before listening")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class _ProgramServer:
    """A server program in the foreground, stopped by ``close``."""

    def __init__(self, command: list[str], port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in close)
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        try:
            wait_listening(port, self.process)
        except BaseException:
            self.close()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class TinyProxy(_ProgramServer):
    def __init__(self, directory: Path, *, user: str | None = None, password: str = "") -> None:
        binary = shutil.which("tinyproxy")
        if binary is None:
            raise RuntimeError("tinyproxy is not installed (apt-get install tinyproxy-bin)")
        port = free_port()
        lines = [
            f"Port {port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            "Allow 127.0.0.1",
            "MaxClients 50",
            "LogLevel Info",
        ]
        if user is not None:
            lines.append(f"BasicAuth {user} {password}")
        config = directory / f"tinyproxy-{port}.conf"
        config.write_text("\n".join(lines) + "\n")
        super().__init__(
            [binary, "-d", "-c", str(config)], port, directory / f"tinyproxy-{port}.log"
        )


class MicroSocks(_ProgramServer):
    def __init__(self, directory: Path, *, user: str | None = None, password: str = "") -> None:
        binary = shutil.which("microsocks")
        if binary is None:
            raise RuntimeError("microsocks is not installed (apt-get install microsocks)")
        port = free_port()
        command = [binary, "-i", "127.0.0.1", "-p", str(port)]
        if user is not None:
            command += ["-u", user, "-P", password]
        super().__init__(command, port, directory / f"microsocks-{port}.log")


class TLSEchoServer(_ThreadedServer):
    """Echoes inside TLS; ``server_names`` lists each handshake's SNI (None: none)."""

    def __init__(self, cert_chain: Path, host: str = "127.0.0.1") -> None:
        self.server_names: list[str | None] = []
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert_chain))
        self.context.sni_callback = self._remember_name
        super().__init__(self._echo, host)

    def _remember_name(self, _sock: object, name: str | None, _context: object) -> None:
        self.server_names.append(name)

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with (
            self.context.wrap_socket(conn, server_side=True) as tls,
            contextlib.suppress(ssl.SSLError, OSError),
        ):
            while data := tls.recv(65536):
                tls.sendall(data)


class ScriptedProxy(_ThreadedServer):
    """Answers each CONNECT with ``status`` (+ ``extra`` bytes); relays after a 2xx."""

    def __init__(self, status: str = "HTTP/1.1 200 Connection established", extra: bytes = b""):
        self.status = status
        self.extra = extra
        self.heads: list[bytes] = []
        super().__init__(self._serve_request)

    def _serve_request(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        self.heads.append(head)
        conn.sendall(self.status.encode() + b"\r\n\r\n" + self.extra)
        if " 2" not in self.status[:13]:
            return
        authority = head.split(b" ")[1].decode()
        host, _, port = authority.rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10) as upstream:
            _relay(conn, upstream)


def _relay(a: socket.socket, b: socket.socket) -> None:
    def pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)

    other = threading.Thread(target=pump, args=(b, a), daemon=True)
    other.start()
    pump(a, b)
    other.join(10)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _ThreadingHTTPServer6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


class HTTPServer:
    """``GET /x`` answers ``hello from /x``; ``connections`` counts accepted sockets."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        server_class: type[http.server.ThreadingHTTPServer] = http.server.ThreadingHTTPServer
        if ":" in host:
            server_class = _ThreadingHTTPServer6
        self.connections = 0
        owner = self

        class Counting(_Handler):
            def setup(self) -> None:
                owner.connections += 1
                super().setup()

        self.server = server_class((host, 0), Counting)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
