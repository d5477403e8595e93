"""``protocol = proxy``: the negotiator alone, then tlstunnel sending PROXY headers to a
real backend, to HAProxy (``accept-proxy``), and side by side with stunnel4."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import TunnelFactory
from tests.protocols.proxy_peers import HAPROXY_DEFAULTS, HAProxy, HeaderBackend, free_port
from tests.support.clients import client_context, recv_all, tls_connect
from tests.support.pki import PKIFiles
from tests.support.tunnel import run_tlstunnel
from tlstunnel.protocols import negotiator_class
from tlstunnel.protocols.base import (
    Connect,
    ConnectionFacts,
    Done,
    Failed,
    NegotiationError,
    Note,
    ProtocolSettings,
    Send,
    Side,
    StartTLS,
    TLSFacts,
)
from tlstunnel.protocols.proxy import ProxyServer
from tlstunnel.protocols.proxy_header import (
    PP2_CLIENT_CERT_CONN,
    PP2_CLIENT_CERT_SESS,
    PP2_CLIENT_SSL,
    PP2_TYPE_ALPN,
    parse,
)

# --- the negotiator, sans-IO ----------------------------------------------------------------


def _negotiator(
    version: int = 1,
    client: tuple[str, int] | None = ("192.0.2.7", 50123),
    local: tuple[str, int] | None = ("198.51.100.1", 443),
    tls: TLSFacts | None = None,
) -> ProxyServer:
    settings = ProtocolSettings(name="proxy", client_mode=False, proxy_version=version)
    facts = ConnectionFacts(client_address=client, local_address=local, tls=tls or TLSFacts())
    return ProxyServer(settings, facts)


def _run(negotiator: ProxyServer) -> bytes:
    """Walk the happy path; return the header sent to the server."""
    assert negotiator.start() == [StartTLS(Side.CLIENT)]
    assert negotiator.tls_started(Side.CLIENT) == [Connect()]
    events = negotiator.connected(None)
    assert isinstance(events[-1], Done) and events[-1] == Done()
    sends = [e for e in events if isinstance(e, Send)]
    assert len(sends) == 1 and sends[0].side is Side.SERVER
    assert any(isinstance(e, Note) for e in events)
    return sends[0].data


def test_modes_match_stunnel() -> None:
    assert negotiator_class("proxy", client_mode=False) is ProxyServer
    assert negotiator_class("proxy", client_mode=True) is None


def test_v1_header_is_stunnels_line() -> None:
    assert _run(_negotiator()) == b"PROXY TCP4 192.0.2.7 198.51.100.1 50123 443\r\n"


def test_v1_ipv6_and_unix() -> None:
    header = _run(_negotiator(client=("2001:db8::7", 1), local=("2001:db8::1", 2)))
    assert header == b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n"
    assert _run(_negotiator(client=None)) == b"PROXY UNKNOWN\r\n"


def test_v2_header_carries_the_tls_session() -> None:
    tls = TLSFacts(
        version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
        sni="www.example.com",
        alpn="h2",
        peer_cn="client.example.com",
        peer_cert_der=b"0\x00",
    )
    parsed = parse(_run(_negotiator(version=2, tls=tls)))
    assert parsed is not None and parsed.version == 2
    header = parsed.header
    assert header.client_address == ("192.0.2.7", 50123)
    assert header.server_address == ("198.51.100.1", 443)
    assert header.tlv(PP2_TYPE_ALPN) == b"h2"
    assert header.authority == "www.example.com"
    info = header.ssl
    assert info is not None
    assert info.client == PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
    assert info.verify == 0
    assert (info.version, info.cipher, info.cn) == (
        "TLSv1.3",
        "TLS_AES_128_GCM_SHA256",
        "client.example.com",
    )


def test_v2_without_a_client_certificate() -> None:
    tls = TLSFacts(version="TLSv1.2", cipher="ECDHE-RSA-AES128-GCM-SHA256")
    parsed = parse(_run(_negotiator(version=2, tls=tls)))
    assert parsed is not None
    header = parsed.header
    assert header.alpn is None and header.authority is None
    info = header.ssl
    assert info is not None
    assert info.client == PP2_CLIENT_SSL
    assert info.verify != 0  # the specification: non-zero unless a certificate was verified
    assert info.cn is None
    assert info.version == "TLSv1.2"


def test_connect_failure_is_reported() -> None:
    negotiator = _negotiator()
    negotiator.start()
    negotiator.tls_started(Side.CLIENT)
    assert negotiator.connected("Connection refused") == [Failed("Connection refused")]


def test_unexpected_calls_fail() -> None:
    negotiator = _negotiator()
    with pytest.raises(NegotiationError, match="connected while start"):
        negotiator.connected(None)
    negotiator.start()
    assert isinstance(negotiator.received(Side.CLIENT, b"x")[0], Failed)
    assert isinstance(negotiator.tls_started(Side.SERVER)[0], Failed)
    with pytest.raises(NegotiationError, match="start while handshaking"):
        negotiator.start()


calls = st.sampled_from(["start", "tls_client", "tls_server", "connected", "refused", "data"])


@given(st.lists(calls, max_size=8), st.sampled_from([1, 2]))
def test_fuzz_call_orders(sequence: list[str], version: int) -> None:
    """Any order of driver calls yields events or NegotiationError, nothing else."""
    negotiator = _negotiator(version=version)
    for call in sequence:
        try:
            if call == "start":
                events = negotiator.start()
            elif call == "tls_client":
                events = negotiator.tls_started(Side.CLIENT)
            elif call == "tls_server":
                events = negotiator.tls_started(Side.SERVER)
            elif call == "connected":
                events = negotiator.connected(None)
            elif call == "refused":
                events = negotiator.connected("refused")
            else:
                events = negotiator.received(Side.SERVER, b"junk")
        except NegotiationError:
            continue
        steps = [e for e in events if not isinstance(e, Send | Note)]
        assert len(steps) == 1 and events[-1] is steps[0]


# --- configuration --------------------------------------------------------------------------


def test_client_mode_is_refused(tmp_path: Path, pki: PKIFiles) -> None:
    config = tmp_path / "c.conf"
    config.write_text(
        "[p]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:1\nclient = yes\nprotocol = proxy\n"
    )
    result = run_tlstunnel("--check", str(config))
    assert result.returncode == 1
    assert "c.conf:5: protocol:" in result.stderr
    assert "protocol = proxy has no client mode" in result.stderr


def test_proxy_version_needs_protocol_proxy(tmp_path: Path, pki: PKIFiles) -> None:
    config = tmp_path / "c.conf"
    config.write_text(
        f"[p]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:1\ncert = {pki.server}\nproxyVersion = 2\n"
    )
    result = run_tlstunnel("--check", str(config))
    assert result.returncode == 1
    assert "c.conf:5: proxyVersion: proxyVersion only applies to protocol = proxy" in result.stderr


# --- end to end: tlstunnel → a backend that keeps the header ---------------------------------


@pytest.fixture
def backend() -> Iterator[HeaderBackend]:
    server = HeaderBackend()
    yield server
    server.close()


def _proxy_service(pki: PKIFiles, port: int, host: str = "127.0.0.1", extra: str = "") -> str:
    return (
        f"[p]\naccept = {host}:0\nconnect = 127.0.0.1:{port}\ncert = {pki.server}\n"
        f"protocol = proxy\n{extra}"
    )


def _say_hello(port: int, pki: PKIFiles, host: str = "127.0.0.1", **kwargs: object) -> int:
    """Connect over TLS, send the marker, read the echo; return the client's port."""
    with tls_connect(port, pki.ca, host=host, **kwargs) as client:  # type: ignore[arg-type]
        client.sendall(b"hello")
        assert client.recv(100) == b"ok\n"
        client.sendall(b"more")
        assert client.recv(100) == b"more"
        return int(client.getsockname()[1])


def test_v1_reaches_the_backend_before_the_data(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend
) -> None:
    process = tunnel(_proxy_service(pki, backend.port))
    port = process.port("p")
    client_port = _say_hello(port, pki)
    (received,) = backend.wait()
    assert received == f"PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {port}\r\nhello".encode()


def test_v2_carries_sni_and_the_client_certificate(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend, tmp_path: Path
) -> None:
    # The shared client certificate has no CN; this one does.
    ca = trustme.CA()
    ca_file, client_file = tmp_path / "ca.pem", tmp_path / "client.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert("client.example.com", common_name="client.example.com")
    leaf.private_key_and_cert_chain_pem.write_to_path(str(client_file))
    extra = f"proxyVersion = 2\nverifyChain = yes\nCAfile = {ca_file}\n"
    process = tunnel(_proxy_service(pki, backend.port, extra=extra))
    port = process.port("p")
    client_port = _say_hello(port, pki, cert=client_file, version=ssl.TLSVersion.TLSv1_2)
    (received,) = backend.wait()
    parsed = parse(received)
    assert parsed is not None and parsed.version == 2
    assert received[parsed.length :] == b"hello"
    header = parsed.header
    assert header.client_address == ("127.0.0.1", client_port)
    assert header.server_address == ("127.0.0.1", port)
    assert header.authority == "localhost"
    info = header.ssl
    assert info is not None
    assert info.client & PP2_CLIENT_CERT_CONN and info.verify == 0
    assert info.version == "TLSv1.2"
    assert info.cn == "client.example.com"
    assert info.cipher and info.cipher.startswith("ECDHE-")


def test_proxy_version_is_not_ignored(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend
) -> None:
    """The same service with proxyVersion = 1 and 2 sends different headers."""
    for version, start in ((1, b"PROXY TCP4 "), (2, b"\r\n\r\n\x00\r\nQUIT\n\x21\x11")):
        process = tunnel(
            _proxy_service(pki, backend.port, extra=f"proxyVersion = {version}\n"),
            name=f"v{version}",
        )
        _say_hello(process.port("p"), pki)
        assert backend.wait(version)[-1].startswith(start)


def test_ipv6_client(tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend) -> None:
    process = tunnel(_proxy_service(pki, backend.port, host="::1"))
    port = process.port("p")
    client_port = _say_hello(port, pki, host="::1")
    (received,) = backend.wait()
    assert received == f"PROXY TCP6 ::1 ::1 {client_port} {port}\r\nhello".encode()


# --- interop: the same header as stunnel4, byte for byte --------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_same_bytes_as_stunnel4(
    tunnel: TunnelFactory, pki: PKIFiles, backend: HeaderBackend, host: str
) -> None:
    headers: dict[str, bytes] = {}
    for index, program in enumerate(("stunnel4", "tlstunnel")):
        process = tunnel(_proxy_service(pki, backend.port, host), program=program, name=program)
        port = process.port("p")
        client_port = _say_hello(port, pki, host=host)
        received = backend.wait(index + 1)[index]
        # The one thing that differs between the two connections is the ports.
        headers[program] = received.replace(f" {client_port} {port}\r\n".encode(), b" C P\r\n")
    family = "TCP6" if ":" in host else "TCP4"
    assert headers["stunnel4"] == f"PROXY {family} {host} {host} C P\r\nhello".encode()
    assert headers["tlstunnel"] == headers["stunnel4"]


# --- interop: HAProxy parses what we send (accept-proxy) -------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("version", [1, 2])
def test_haproxy_accept_proxy_sees_the_client(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path, version: int
) -> None:
    haproxy_port = free_port()
    config = HAPROXY_DEFAULTS + (
        "frontend fe\n"
        "    mode http\n"
        f"    bind 127.0.0.1:{haproxy_port} accept-proxy\n"
        "    http-request return status 200 content-type text/plain "
        'lf-string "%ci %cp %fi %fp [%[fc_pp_authority]]"\n'
    )
    haproxy = HAProxy(tmp_path, config, [haproxy_port])
    try:
        process = tunnel(_proxy_service(pki, haproxy_port, extra=f"proxyVersion = {version}\n"))
        port = process.port("p")
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with client_context(pki.ca).wrap_socket(raw, server_hostname="localhost") as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            response = recv_all(client)
            client_port = client.getsockname()[1]
    finally:
        haproxy.stop()
    authority = "localhost" if version == 2 else ""
    assert response.startswith(b"HTTP/1.1 200"), response
    body = response.split(b"\r\n\r\n", 1)[1].decode()
    assert body == f"127.0.0.1 {client_port} 127.0.0.1 {port} [{authority}]"


# --- examples/proxy.conf, as users copy it, under tlstunnel and stunnel4 ----------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "proxy.conf"


@pytest.mark.interop
@pytest.mark.parametrize("program", ["tlstunnel", "stunnel4"])
def test_example_in_front_of_haproxy(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path, program: str
) -> None:
    web = free_port()
    haproxy = HAProxy(
        tmp_path,
        HAPROXY_DEFAULTS + f"frontend web\n    mode http\n    bind 127.0.0.1:{web} accept-proxy\n"
        '    http-request return status 200 content-type text/plain lf-string "%ci %cp"\n',
        [web],
    )
    text = EXAMPLE.read_text()
    for old, new in (
        ("accept = 443", "accept = 127.0.0.1:0"),
        ("connect = 127.0.0.1:8080", f"connect = 127.0.0.1:{web}"),
        ("cert = /etc/stunnel/www.example.com.crt", f"cert = {pki.server_cert}"),
        ("key = /etc/stunnel/www.example.com.key", f"key = {pki.server_key}"),
        ("pid = /run/stunnel/proxy.pid", "pid ="),
    ):
        assert old in text
        text = text.replace(old, new)
    try:
        process = tunnel(text, program=program)
        with tls_connect(process.port("https-proxy"), pki.ca) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            response = recv_all(client)
            client_port = client.getsockname()[1]
    finally:
        haproxy.stop()
    assert response.split(b"\r\n\r\n", 1)[1] == f"127.0.0.1 {client_port}".encode()
