"""The contexts we build against OpenSSL's own command-line client and server."""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import time

import pytest

from tlstunnel.tls import build_service_tls

from .conftest import PKI, ServiceFactory
from .helpers import serve_once

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary"),
]


def _s_client(address: tuple[str, int], *extra: str) -> subprocess.CompletedProcess[str]:
    host, port = address
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-brief", "-ign_eof", *extra],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_openssl_s_client_handshakes_with_our_server(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(service(cert=pki.server))
    with serve_once(server, reply=b"hello from python\n") as (address, result):
        run = _s_client(
            address, "-CAfile", str(pki.ca), "-verify_return_error", "-verify_hostname", "localhost"
        )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "CONNECTION ESTABLISHED" in output
    assert "Verification: OK" in output
    assert "hello from python" in run.stdout
    assert result.error is None and result.version == "TLSv1.3"


def test_openssl_s_client_presents_a_client_certificate(pki: PKI, service: ServiceFactory) -> None:
    server = build_service_tls(
        service(
            cert=pki.server,
            verify_chain=True,
            require_cert=True,
            ca_file=pki.ca,
            check_host=("client.example.com",),
            max_version=ssl.TLSVersion.TLSv1_2,
        )
    )
    with serve_once(server) as (address, result):
        run = _s_client(address, "-CAfile", str(pki.ca), "-cert", str(pki.client))
    assert run.returncode == 0, run.stderr
    assert "Protocol version: TLSv1.2" in run.stderr
    assert result.error is None
    assert result.peer_refusal is None


def test_our_client_handshakes_with_openssl_s_server(pki: PKI, service: ServiceFactory) -> None:
    with socket.socket() as probe:  # a free port for s_server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            "openssl",
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-naccept",
            "1",
            "-cert",
            str(pki.server),
            "-www",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        client = build_service_tls(
            service(client=True, verify_chain=True, ca_file=pki.ca, check_ip=("127.0.0.1",))
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with client.context.wrap_socket(
            sock, server_hostname=client.server_hostname("127.0.0.1")
        ) as tls:
            assert client.check_peer(tls) is None
            tls.sendall(b"GET / HTTP/1.0\r\n\r\n")
            page = b""
            while chunk := tls.recv(65536):
                page += chunk
        assert re.search(rb"Protocol\s*:\s*TLSv1.3", page), page[:500]
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
