"""Unix domain sockets: ``accept = /path`` and ``connect = /path``, as stunnel has them."""

from __future__ import annotations

import os
import pwd
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TunnelFactory
from tests.support.clients import client_context
from tests.support.pki import PKIFiles


class UnixEchoServer:
    """An echo backend listening on a Unix socket path."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def unix_echo(tmp_path: Path) -> Iterator[UnixEchoServer]:
    server = UnixEchoServer(tmp_path / "backend.sock")
    yield server
    server.close()


def test_tls_on_a_unix_accept_socket_to_a_unix_backend(
    tunnel: TunnelFactory, pki: PKIFiles, unix_echo: UnixEchoServer, tmp_path: Path
) -> None:
    front = tmp_path / "front.sock"
    proc = tunnel(f"[unix]\naccept = {front}\nconnect = {unix_echo.path}\ncert = {pki.server}\n")
    assert proc.addresses()["unix"] == [str(front)]
    assert stat.S_ISSOCK(os.lstat(front).st_mode)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(10)
    raw.connect(str(front))
    with client_context(pki.ca).wrap_socket(raw, server_hostname="localhost") as conn:
        conn.sendall(b"over unix sockets")
        assert conn.recv(64) == b"over unix sockets"
    log = proc.wait_for_log("Connection closed")
    assert f"s_connect: connected {unix_echo.path}" in log
    proc.stop()
    assert not front.exists(), "the socket file is removed when the service stops"


def test_a_stale_socket_file_is_replaced_but_a_regular_file_is_not(
    tunnel: TunnelFactory, pki: PKIFiles, unix_echo: UnixEchoServer, tmp_path: Path
) -> None:
    stale = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(stale))
    leftover.close()  # the file stays behind, as after a crash
    proc = tunnel(
        f"[unix]\naccept = {stale}\nconnect = {unix_echo.path}\ncert = {pki.server}\n",
        name="stale",
    )
    assert proc.addresses()["unix"] == [str(stale)]
    precious = tmp_path / "precious"
    precious.write_text("data")
    with pytest.raises(AssertionError, match="not a socket"):
        tunnel(
            f"[unix]\naccept = {precious}\nconnect = {unix_echo.path}\ncert = {pki.server}\n",
            name="precious",
        )
    assert precious.read_text() == "data"


def test_service_setuid_sets_the_owner_of_the_socket_file(
    tunnel: TunnelFactory, pki: PKIFiles, unix_echo: UnixEchoServer, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root to chown (CI runs as root)")
    nobody = pwd.getpwnam("nobody")
    front = tmp_path / "owned.sock"
    tunnel(
        f"[unix]\naccept = {front}\nconnect = {unix_echo.path}\ncert = {pki.server}\n"
        "setuid = nobody\n"
    )
    assert os.lstat(front).st_uid == nobody.pw_uid


def test_client_mode_from_a_unix_socket_to_tls(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path
) -> None:
    from tests.support.backends import EchoServer

    echo = EchoServer()
    try:
        server = tunnel(
            f"[tls]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo.port}\ncert = {pki.server}\n",
            name="server",
        )
        entry = tmp_path / "entry.sock"
        tunnel(
            f"[entry]\nclient = yes\naccept = {entry}\nconnect = 127.0.0.1:{server.port('tls')}\n",
            name="client",
        )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(entry))
            conn.sendall(b"plain in, TLS out")
            assert conn.recv(64) == b"plain in, TLS out"
    finally:
        echo.close()
