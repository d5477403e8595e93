"""Server-mode SNI virtual services (``sni = PRIMARY:PATTERN``) against real clients.

Each service has its own certificate and its own backend that greets with its name,
so a test sees both which certificate the client got and where its bytes went.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import trustme

from tests.conftest import TunnelFactory
from tests.support.backends import EarlyCloser, RecordingServer


class Certs:
    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.ca_file = directory / "sni-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.files: dict[str, Path] = {}
        for name, hosts in {
            "primary": ["primary.test"],
            "shop": ["shop.test", "*.shop.test"],
            "mail": ["mail.test"],
        }.items():
            cert = self.ca.issue_cert(*hosts)
            path = directory / f"sni-{name}.pem"
            cert.private_key_and_cert_chain_pem.write_to_path(str(path))
            self.files[name] = path
        client = self.ca.issue_cert("client.test")
        self.client = directory / "sni-client.pem"
        client.private_key_and_cert_chain_pem.write_to_path(str(self.client))


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


@pytest.fixture
def backends() -> Iterator[dict[str, RecordingServer]]:
    servers = {
        name: RecordingServer(name.encode(), reply_first=True)
        for name in ("primary", "shop", "mail")
    }
    yield servers
    for server in servers.values():
        server.close()


def config(certs: Certs, backends: dict[str, RecordingServer], extra: str = "") -> str:
    return (
        f"[web]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{backends['primary'].port}\n"
        f"cert = {certs.files['primary']}\n"
        f"[shop]\nsni = web:shop.test\nsni = web:*.shop.test\n"
        f"connect = 127.0.0.1:{backends['shop'].port}\ncert = {certs.files['shop']}\n{extra}"
        f"[mail]\nsni = web:MAIL.test\nconnect = 127.0.0.1:{backends['mail'].port}\n"
        f"cert = {certs.files['mail']}\n"
    )


def visit(
    port: int, certs: Certs, server_name: str | None, client_cert: Path | None = None
) -> tuple[str, bytes]:
    """Connect with ``server_name`` as SNI; (certificate's first DNS name, reply)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(certs.ca_file))
    context.check_hostname = False
    if client_cert is not None:
        context.load_cert_chain(str(client_cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with raw, context.wrap_socket(raw, server_hostname=server_name) as conn:
        peer = conn.getpeercert()
        assert peer is not None
        alt_names = cast(tuple[tuple[str, str], ...], peer.get("subjectAltName", ()))
        names = [value for kind, value in alt_names if kind == "DNS"]
        conn.sendall(b"hello")
        reply = b""
        while len(reply) < 4 and (chunk := conn.recv(1024)):
            reply += chunk
    return str(names[0]), reply


def test_each_name_gets_its_own_certificate_and_backend(
    tunnel: TunnelFactory, certs: Certs, backends: dict[str, RecordingServer]
) -> None:
    proc = tunnel(config(certs, backends))
    port = proc.port("web")
    assert visit(port, certs, "shop.test") == ("shop.test", b"shop")
    assert visit(port, certs, "a.b.shop.test") == ("shop.test", b"shop")  # suffix, as stunnel
    assert visit(port, certs, "mail.TEST") == ("mail.test", b"mail")  # any letter case
    assert visit(port, certs, "primary.test") == ("primary.test", b"primary")
    assert visit(port, certs, None) == ("primary.test", b"primary")
    log = proc.wait_for_log(r"Connection closed", count=5)
    assert "SNI: requested servername: a.b.shop.test" in log
    assert "SNI: switched to service [shop]" in log
    assert "SNI: no pattern matched servername: primary.test" in log
    # The bytes went where the names said, and only there.
    assert [r.size for r in backends["shop"].received] == [5, 5]
    assert [r.size for r in backends["mail"].received] == [5]
    assert [r.size for r in backends["primary"].received] == [5, 5]


def test_a_virtual_service_applies_its_own_client_verification(
    tunnel: TunnelFactory, certs: Certs, backends: dict[str, RecordingServer]
) -> None:
    """The primary asks for no certificate; [shop] requires one: a client without one is
    refused there (before any byte reaches shop's backend) and welcome elsewhere."""
    extra = f"verifyChain = yes\nCAfile = {certs.ca_file}\n"
    proc = tunnel(config(certs, backends, extra))
    port = proc.port("web")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        visit(port, certs, "shop.test")
    assert visit(port, certs, "shop.test", client_cert=certs.client) == ("shop.test", b"shop")
    assert visit(port, certs, "mail.test") == ("mail.test", b"mail")
    proc.wait_for_log(r"Connection closed", count=2)
    assert [r.size for r in backends["shop"].received] == [5]


@pytest.mark.interop
def test_openssl_s_client_sees_the_virtual_certificate(
    tunnel: TunnelFactory, certs: Certs, backends: dict[str, RecordingServer]
) -> None:
    closer = EarlyCloser(b"shop")  # says its name and ends: s_client waits for that
    backends = {**backends, "shop": closer}  # type: ignore[dict-item]
    proc = tunnel(config(certs, backends))
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{proc.port('web')}",
         "-servername", "x.shop.test", "-CAfile", str(certs.ca_file), "-quiet",
         "-verify_return_error", "-verify_hostname", "x.shop.test"],
        input=b"via openssl\n", capture_output=True, timeout=15, check=False,
    )  # fmt: skip
    closer.close()
    assert result.stdout == b"shop", result.stderr.decode()
    assert closer.received[0].size == len(b"via openssl\n")


@pytest.mark.interop
def test_stunnel4_client_with_sni_reaches_the_virtual_service(
    tunnel: TunnelFactory, certs: Certs, backends: dict[str, RecordingServer]
) -> None:
    server = tunnel(config(certs, backends))
    client = tunnel(
        f"[out]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{server.port('web')}\n"
        f"sni = mail.test\nverifyChain = yes\nCAfile = {certs.ca_file}\ncheckHost = mail.test\n",
        program="stunnel4",
        name="stunnel4-client",
    )
    with socket.create_connection(("127.0.0.1", client.port("out")), timeout=10) as conn:
        conn.sendall(b"from stunnel4")
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(1024):
            reply += chunk
    assert reply == b"mail"
    server.wait_for_log(r"SNI: switched to service \[mail\]")
