"""Certificates replaced under a running tunnel: ``reload = SECONDS|watch`` and SIGHUP.

A connection opened before the change must keep working; connections after it must
see the new certificate; a broken new file must leave the old certificate in use.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import trustme

from tests.conftest import TunnelFactory
from tests.support.backends import EchoServer
from tests.support.tunnel import TunnelProcess


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_cert(ca: trustme.CA, path: Path, name: str) -> None:
    """Replace ``path`` the way deployment tools do: write aside, then rename over it."""
    cert = ca.issue_cert(name)
    aside = path.with_suffix(".new")
    cert.private_key_and_cert_chain_pem.write_to_path(str(aside))
    os.replace(aside, path)


def served_name(port: int, ca: trustme.CA) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    context.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with raw, context.wrap_socket(raw, server_hostname="x") as conn:
        peer = conn.getpeercert()
    assert peer is not None
    names = cast(tuple[tuple[str, str], ...], peer["subjectAltName"])
    return next(value for kind, value in names if kind == "DNS")


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def start(
    tunnel: TunnelFactory, ca: trustme.CA, tmp_path: Path, echo: EchoServer, globals_: str
) -> tuple[Path, int, ssl.SSLSocket, TunnelProcess]:
    cert = tmp_path / "live.pem"
    write_cert(ca, cert, "old.test")
    proc = tunnel(
        f"{globals_}[web]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo.port}\ncert = {cert}\n"
    )
    port = proc.port("web")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    context.check_hostname = False
    live = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    live.sendall(b"before")
    assert live.recv(100) == b"before"
    return cert, port, live, proc


def still_alive(live: ssl.SSLSocket) -> None:
    live.sendall(b"after")
    assert live.recv(100) == b"after"
    live.close()


def test_changed_files_are_picked_up_without_dropping_connections(
    tunnel: TunnelFactory, ca: trustme.CA, tmp_path: Path, echo: EchoServer
) -> None:
    cert, port, live, proc = start(tunnel, ca, tmp_path, echo, "reload = 0.2\n")
    write_cert(ca, cert, "new.test")
    proc.wait_for_log(r"Service \[web\]: certificates reloaded")
    assert served_name(port, ca) == "new.test"
    still_alive(live)
    assert "bound to" in proc.log()
    assert proc.log().count("bound to") == 1  # no re-bind


def test_a_broken_new_certificate_keeps_the_old_one(
    tunnel: TunnelFactory, ca: trustme.CA, tmp_path: Path, echo: EchoServer
) -> None:
    cert, port, live, proc = start(tunnel, ca, tmp_path, echo, "reload = 0.2\n")
    cert.write_text("-----BEGIN CERTIFICATE-----\nhalf written\n")
    proc.wait_for_log(r"Service \[web\]: certificates not reloaded, keeping the previous")
    assert served_name(port, ca) == "old.test"
    still_alive(live)
    write_cert(ca, cert, "fixed.test")  # the next good file is taken
    proc.wait_for_log(r"certificates reloaded")
    assert served_name(port, ca) == "fixed.test"


def test_without_reload_the_file_is_not_watched(
    tunnel: TunnelFactory, ca: trustme.CA, tmp_path: Path, echo: EchoServer
) -> None:
    cert, port, live, proc = start(tunnel, ca, tmp_path, echo, "")
    write_cert(ca, cert, "new.test")
    time.sleep(2.5)  # longer than "watch" would take
    assert served_name(port, ca) == "old.test"
    assert "certificates reloaded" not in proc.log()
    live.close()


def test_sighup_reloads_certificates_and_keeps_connections(
    tunnel: TunnelFactory, ca: trustme.CA, tmp_path: Path, echo: EchoServer
) -> None:
    cert, port, live, proc = start(tunnel, ca, tmp_path, echo, "")
    write_cert(ca, cert, "new.test")
    proc.send_signal(signal.SIGHUP)
    proc.wait_for_log("Configuration successful", count=2)
    assert served_name(port, ca) == "new.test"
    still_alive(live)
