"""``alpn``: selection in server mode, offer in client mode, through a running tunnel.

Peers are OpenSSL's s_client and s_server, curl (HTTP/2 and HTTP/1.1 end to end, with a
small HTTP backend that understands just enough HTTP/2 to answer one request) and
Python's ssl module.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.backends import EchoServer
from tests.support.clients import client_context
from tests.support.tunnel import TunnelProcess, run_tlstunnel, start_tunnel
from tlstunnel.config import load_text

from .conftest import PKI

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _s_client(port: int, ca: Path, *extra: str) -> str:
    run = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca), *extra],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    return run.stdout + run.stderr


@pytest.fixture
def server_tunnel(tmp_path: Path, pki: PKI) -> Iterator[tuple[TunnelProcess, EchoServer]]:
    """Three services: our preference http/1.1 first, h2 only, and no alpn at all."""
    backend = EchoServer()
    common = f"cert = {pki.server}\nconnect = 127.0.0.1:{backend.port}\naccept = 127.0.0.1:0\n"
    tunnel = start_tunnel(
        tmp_path,
        f"[prefer_h1]\n{common}alpn = http/1.1\nalpn = h2\n"
        f"[h2_only]\n{common}alpn = h2\n"
        f"[plain]\n{common}",
    )
    try:
        yield tunnel, backend
    finally:
        tunnel.stop()
        backend.close()


@pytest.mark.interop
def test_server_mode_selects_its_own_first_choice_among_the_offered(
    server_tunnel: tuple[TunnelProcess, EchoServer], pki: PKI
) -> None:
    tunnel, _ = server_tunnel
    # The client prefers h2; the service's list puts http/1.1 first, and wins.
    out = _s_client(tunnel.port("prefer_h1"), pki.ca, "-alpn", "h2,http/1.1")
    assert "ALPN protocol: http/1.1" in out, out
    tunnel.wait_for_log(r"LOG6\[\d+\]: ALPN: http/1\.1")
    out = _s_client(tunnel.port("h2_only"), pki.ca, "-alpn", "http/1.1,h2")
    assert "ALPN protocol: h2" in out, out
    tunnel.wait_for_log(r"LOG6\[\d+\]: ALPN: h2")


@pytest.mark.interop
def test_no_common_protocol_means_no_alpn_not_a_failed_handshake(
    server_tunnel: tuple[TunnelProcess, EchoServer], pki: PKI
) -> None:
    tunnel, _ = server_tunnel
    out = _s_client(tunnel.port("h2_only"), pki.ca, "-alpn", "spdy/3")
    assert "No ALPN negotiated" in out, out
    assert "Verify return code: 0 (ok)" in out
    tunnel.wait_for_log(r"ALPN: none")


@pytest.mark.interop
def test_a_service_without_alpn_selects_nothing(
    server_tunnel: tuple[TunnelProcess, EchoServer], pki: PKI
) -> None:
    tunnel, _ = server_tunnel
    out = _s_client(tunnel.port("plain"), pki.ca, "-alpn", "h2")
    assert "No ALPN negotiated" in out, out


def test_python_client_sees_the_selected_protocol_and_data_flows(
    server_tunnel: tuple[TunnelProcess, EchoServer], pki: PKI
) -> None:
    tunnel, _ = server_tunnel
    context = client_context(pki.ca)
    context.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection(("127.0.0.1", tunnel.port("prefer_h1")), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "http/1.1"
        tls.sendall(b"ping")
        assert tls.recv(10) == b"ping"


# --- curl, end to end ----------------------------------------------------------------------


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
    )


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


class HTTPBackend:
    """Answers one request per connection over HTTP/1.1, or over HTTP/2 with prior
    knowledge (what arrives once TLS agreed on h2): SETTINGS, then a HEADERS frame
    with ``:status: 200`` (HPACK static index 8 = 0x88) and a DATA frame."""

    def __init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.protocols: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    start = _read_exactly(conn, len(H2_PREFACE))
                    if start == H2_PREFACE:
                        self.protocols.append("h2")
                        self._answer_h2(conn)
                    else:
                        self.protocols.append("http/1.1")
                        self._answer_h1(conn, start)
                except OSError:
                    continue

    @staticmethod
    def _answer_h1(conn: socket.socket, start: bytes) -> None:
        request = start
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        body = b"hello over http/1.1\n"
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
        )

    @staticmethod
    def _answer_h2(conn: socket.socket) -> None:
        conn.sendall(_frame(4, 0, 0))  # our SETTINGS
        while True:
            header = _read_exactly(conn, 9)
            length, kind, flags = int.from_bytes(header[:3], "big"), header[3], header[4]
            stream = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
            _read_exactly(conn, length)
            if kind == 4 and not flags & 1:
                conn.sendall(_frame(4, 1, 0))  # SETTINGS ACK
            if kind == 1:  # HEADERS: the request
                conn.sendall(
                    _frame(1, 0x4, stream, b"\x88")
                    + _frame(0, 0x1, stream, b"hello over h2\n")
                    + _frame(7, 0, 0, stream.to_bytes(4, "big") + bytes(4))  # GOAWAY
                )
                time.sleep(0.2)  # let curl read it all before the close
                return

    def close(self) -> None:
        self._sock.close()


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl binary")
def test_curl_speaks_http2_or_http1_through_the_tunnel(tmp_path: Path, pki: PKI) -> None:
    backend = HTTPBackend()
    try:
        with start_tunnel(
            tmp_path,
            f"[web]\ncert = {pki.server}\naccept = 127.0.0.1:0\n"
            f"connect = 127.0.0.1:{backend.port}\nalpn = h2, http/1.1\n",
        ) as tunnel:
            url = f"https://localhost:{tunnel.port('web')}/"
            curl = ["curl", "-sS", "-v", "--max-time", "10", "--cacert", str(pki.ca), url]
            h2 = subprocess.run([*curl, "--http2"], capture_output=True, text=True, check=False)
            assert h2.returncode == 0, h2.stderr
            assert h2.stdout == "hello over h2\n"
            assert re.search(r"ALPN.*accepted.*h2", h2.stderr), h2.stderr
            h1 = subprocess.run([*curl, "--http1.1"], capture_output=True, text=True, check=False)
            assert h1.returncode == 0, h1.stderr
            assert h1.stdout == "hello over http/1.1\n"
            assert re.search(r"ALPN.*accepted.*http/1\.1", h1.stderr), h1.stderr
            assert backend.protocols == ["h2", "http/1.1"]
            log = tunnel.wait_for_log(r"ALPN: http/1\.1")
            assert "ALPN: h2" in log
    finally:
        backend.close()


# --- client mode ---------------------------------------------------------------------------


@pytest.mark.interop
def test_client_mode_offers_its_list_to_openssl_s_server(tmp_path: Path, pki: PKI) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # s_server ends at EOF on its stdin, so stdin stays an open pipe; it exits after
    # its one connection (-naccept 1).
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(pki.server),
         "-alpn", "h2,http/1.1", "-naccept", "1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        while "ACCEPT" not in (line := server.stdout.readline()):
            assert line, "s_server did not start"
        with start_tunnel(
            tmp_path,
            f"[out]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{port}\n"
            f"verifyChain = yes\nCAfile = {pki.ca}\ncheckHost = localhost\n"
            "alpn = http/1.1\nalpn = h2\n",
        ) as tunnel:
            with socket.create_connection(("127.0.0.1", tunnel.port("out")), timeout=10) as c:
                c.sendall(b"hello s_server\n")
                log = tunnel.wait_for_log(r"ALPN: \S+")
            output, _ = server.communicate(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert "ALPN protocols advertised by the client: http/1.1, h2" in output, output
    assert "ALPN protocols selected: h2" in output
    assert "ALPN: h2" in log  # s_server's preference decides in client mode
    assert "hello s_server" in output


# --- configuration -------------------------------------------------------------------------


def test_lines_add_up_in_order_without_repeats(tmp_path: Path) -> None:
    result = load_text(
        "[s]\nclient = yes\naccept = 1\nconnect = 2\n"
        "alpn = h2, http/1.1\nalpn = h2\nalpn = acme-tls/1\n",
        "t.conf",
        str(tmp_path),
    )
    assert result.config.services[0].alpn == ("h2", "http/1.1", "acme-tls/1")


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("h2,,http/1.1", "empty protocol name"),
        ("h2, http 1.1", "printable ASCII without spaces"),
        ("h\u00e9", "printable ASCII"),
        ("x" * 256, "at most 255"),
    ],
)
def test_bad_values_are_config_errors_with_file_and_line(
    tmp_path: Path, pki: PKI, value: str, complaint: str
) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text(
        f"[s]\ncert = {pki.server}\naccept = 127.0.0.1:0\nconnect = 9\nalpn = {value}\n",
        encoding="utf-8",
    )
    run = run_tlstunnel("--check", str(conf))
    assert run.returncode == 1
    assert f"{conf}:5: alpn: " in run.stderr, run.stderr
    assert complaint in run.stderr
