"""``allowCN``/``allowOU``/``allowDNS``/``allowURI``/``allowSPKI``: the rules themselves, then
a running tunnel that admits and refuses real clients (server mode) and real servers
(client mode).  Certificates with chosen identities are issued by a trustme CA through
``cryptography`` (trustme cannot write URI SANs).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import os
import re
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from tests.support.backends import EchoServer
from tests.support.clients import client_context
from tests.support.tunnel import TunnelProcess, run_tlstunnel, start_tunnel
from tlstunnel.tls.peer_acl import (
    PeerACL,
    PeerCertificate,
    compile_uri_pattern,
    parse_spki_pin,
    subject_public_key_info,
)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


# --- issuing certificates with chosen identities --------------------------------------------


@dataclass
class Issued:
    path: Path  # key + certificate (PEM)
    der: bytes
    spki: bytes  # DER SubjectPublicKeyInfo, as cryptography writes it


def issue(
    ca: trustme.CA,
    path: Path,
    *,
    cn: str | None = None,
    ou: str | None = None,
    dns: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
    key: PrivateKey | None = None,
) -> Issued:
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = key or ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")]
    if ou is not None:
        names.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    if cn is not None:
        names.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.write_bytes(key_pem + cert.public_bytes(serialization.Encoding.PEM))
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Issued(path, cert.public_bytes(serialization.Encoding.DER), spki)


@dataclass
class Identities:
    ca: trustme.CA
    ca_file: Path
    server: Path  # localhost, issued by ca
    alice: Issued  # CN=alice, OU=ops, DNS alice.example.com, URI spiffe://example.org/web
    bob: Issued  # CN=bob, OU=dev, DNS bob.example.com, URI spiffe://example.org/ns/db
    mallory: Issued  # CN=mallory, OU=guests, DNS mallory.example.net, URI spiffe://evil.org/web
    directory: Path = field(default_factory=Path)


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    d = tmp_path_factory.mktemp("acl-pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(d / "server.pem")
    )
    return Identities(
        ca=ca,
        ca_file=d / "ca.pem",
        server=d / "server.pem",
        alice=issue(
            ca, d / "alice.pem", cn="alice", ou="ops", dns=("alice.example.com",),
            uris=("spiffe://example.org/web",),
        ),
        bob=issue(
            ca, d / "bob.pem", cn="bob", ou="dev", dns=("Bob.Example.com",),
            uris=("spiffe://example.org/ns/db",), key=rsa.generate_private_key(65537, 2048),
        ),
        mallory=issue(
            ca, d / "mallory.pem", cn="mallory", ou="guests", dns=("mallory.example.net",),
            uris=("spiffe://evil.org/web",),
        ),
        directory=d,
    )  # fmt: skip


# --- the rules, without a network ----------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(65537, 2048),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["ec", "rsa", "ed25519"],
)
def test_spki_is_found_in_the_der_certificate(
    ids: Identities, tmp_path: Path, key: PrivateKey
) -> None:
    issued = issue(ids.ca, tmp_path / "k.pem", cn="k", key=key)
    assert subject_public_key_info(issued.der) == issued.spki


def test_spki_of_garbage_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        subject_public_key_info(b"\x30\x03\x02\x01")


def test_pins_are_read_as_hex_with_or_without_colons_and_as_base64() -> None:
    digest = hashlib.sha256(b"key").digest()
    colons = ":".join(f"{b:02X}" for b in digest)
    b64 = base64.b64encode(digest).decode()
    assert parse_spki_pin(f"sha256:{digest.hex()}") == digest
    assert parse_spki_pin(f"SHA256:{colons}") == digest
    assert parse_spki_pin(f"sha256:{b64}") == digest
    assert parse_spki_pin(f"sha256:{b64.rstrip('=')}") == digest
    for bad in (digest.hex(), "sha256:abc", f"sha1:{digest.hex()}", "sha256:" + "A" * 60):
        with pytest.raises(ValueError):
            parse_spki_pin(bad)


@pytest.mark.parametrize(
    ("pattern", "uri", "matches"),
    [
        ("spiffe://example.org/*", "spiffe://example.org/web", True),
        ("spiffe://example.org/*", "spiffe://example.org/ns/web", False),
        ("spiffe://example.org/*", "spiffe://example.org/", False),
        ("spiffe://example.org/**", "spiffe://example.org/ns/web", True),
        ("spiffe://example.org/ns/*/sa/web", "spiffe://example.org/ns/prod/sa/web", True),
        ("spiffe://example.org/ns/*/sa/web", "spiffe://example.org/ns/a/b/sa/web", False),
        ("spiffe://example.org/web-*", "spiffe://example.org/web-1", True),
        ("spiffe://example.org/web", "spiffe://example.org/web", True),
        ("spiffe://example.org/web", "spiffe://example.org/web2", False),
        ("spiffe://example.org/web", "spiffe://Example.org/web", False),
        ("spiffe://*/web", "spiffe://evil.org/web", True),
        ("spiffe://example.org/a.b", "spiffe://example.org/aXb", False),
    ],
)
def test_uri_wildcards(pattern: str, uri: str, matches: bool) -> None:
    assert bool(compile_uri_pattern(pattern).fullmatch(uri)) is matches


def test_bad_uri_patterns_are_refused() -> None:
    for bad in ("", "spiffe://x/***", "spiffe://x/a b"):
        with pytest.raises(ValueError):
            compile_uri_pattern(bad)


def _peer(issued: Issued) -> PeerCertificate:
    cert = x509.load_der_x509_certificate(issued.der)
    subject = tuple((a.oid._name, str(a.value)) for a in cert.subject)
    kinds = {x509.DNSName: "DNS", x509.UniformResourceIdentifier: "URI"}
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        alt = tuple((kinds[type(n)], str(n.value)) for n in sans)
    except x509.ExtensionNotFound:
        alt = ()
    return PeerCertificate(issued.der, subject, alt)


def test_any_rule_admits_and_no_match_refuses(ids: Identities) -> None:
    alice, bob, mallory = _peer(ids.alice), _peer(ids.bob), _peer(ids.mallory)
    acl = PeerACL.build(
        common_names=("alice",),
        dns_names=("bob.example.com.",),  # any case, trailing dot ignored
        spki_digests=(hashlib.sha256(ids.mallory.spki).digest(),),
    )
    assert acl.refusal(alice) is None
    assert acl.refusal(bob) is None
    assert acl.refusal(mallory) is None
    only_ou = PeerACL.build(organizational_units=("ops",))
    assert only_ou.refusal(alice) is None
    assert only_ou.refusal(bob) == "no allow rule matched (allowOU)"
    assert only_ou.refusal(None) == "no certificate, so no allow rule can match (allowOU)"
    assert PeerACL.build().refusal(None) is None  # no rules: nothing to refuse


def test_common_name_is_compared_exactly(ids: Identities) -> None:
    acl = PeerACL.build(common_names=("Alice",))
    assert acl.refusal(_peer(ids.alice)) is not None


# --- a running tunnel, server mode -----------------------------------------------------------


@pytest.fixture(scope="module")
def acl_tunnel(
    tmp_path_factory: pytest.TempPathFactory, ids: Identities
) -> Iterator[tuple[TunnelProcess, EchoServer]]:
    backend = EchoServer()
    alice_pin = base64.b64encode(hashlib.sha256(ids.alice.spki).digest()).decode()
    bob_pin = hashlib.sha256(ids.bob.spki).hexdigest()
    common = (
        f"cert = {ids.server}\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{backend.port}\n"
        f"verifyChain = yes\nCAfile = {ids.ca_file}\n"
    )
    services = {
        "cn": "allowCN = alice\nallowCN = carol\n",
        "ou": "allowOU = dev\n",
        "dns": "allowDNS = bob.example.com\n",
        "uri": "allowURI = spiffe://example.org/*\n",
        "spki": f"allowSPKI = sha256:{alice_pin}\nallowSPKI = sha256:{bob_pin}\n",
        "either": "allowCN = bob\nallowURI = spiffe://example.org/*\n",
        "optional": "requireCert = no\nallowCN = alice\n",
    }
    text = "".join(f"[{name}]\n{common}{rules}" for name, rules in services.items())
    tunnel = start_tunnel(tmp_path_factory.mktemp("acl"), text)
    try:
        yield tunnel, backend
    finally:
        tunnel.stop()
        backend.close()


def _exchange(port: int, ca: Path, cert: Path | None) -> bytes:
    """Connect with ``cert``, send a line; the echo that came back (b"" when the tunnel
    refused: it resets the connection after the handshake)."""
    context = client_context(ca, cert=cert)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"request\n")
            return tls.recv(1024)
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        raw.close()


def _refusal_count(tunnel: TunnelProcess, service: str) -> int:
    return len(re.findall(rf"Service \[{service}\]: peer .* refused: ", tunnel.log()))


def _check_refused(
    tunnel: TunnelProcess,
    backend: EchoServer,
    service: str,
    *,
    who: str,
    ca: Path,
    cert: Path | None,
) -> str:
    before_refusals = _refusal_count(tunnel, service)
    before_backend = backend.accepted
    assert _exchange(tunnel.port(service), ca, cert) == b""
    pattern = rf"LOG4\[\d+\]: Service \[{service}\]: peer {who} at 127\.0\.0\.1:\d+ refused: "
    log = tunnel.wait_for_log(pattern, count=1 + before_refusals)
    tunnel.wait_for_log(r"Connection reset: ", count=1)
    assert backend.accepted == before_backend, "a refused peer reached the backend"
    return log


def _check_admitted(
    tunnel: TunnelProcess, backend: EchoServer, service: str, ca: Path, cert: Path
) -> None:
    before = backend.accepted
    assert _exchange(tunnel.port(service), ca, cert) == b"request\n"
    assert backend.accepted == before + 1


@pytest.mark.parametrize(
    ("service", "admitted", "refused"),
    [
        ("cn", "alice", "mallory"),
        ("ou", "bob", "alice"),
        ("dns", "bob", "mallory"),
        ("uri", "alice", "bob"),  # spiffe://example.org/ns/db is two segments deep
        ("spki", "bob", "mallory"),
        ("either", "alice", "mallory"),
    ],
)
def test_server_mode_admits_matching_clients_and_refuses_others(
    acl_tunnel: tuple[TunnelProcess, EchoServer],
    ids: Identities,
    service: str,
    admitted: str,
    refused: str,
) -> None:
    tunnel, backend = acl_tunnel
    _check_admitted(tunnel, backend, service, ids.ca_file, getattr(ids, admitted).path)
    log = _check_refused(
        tunnel,
        backend,
        service,
        who=f"O=Example, OU=\\w+, CN={refused}",
        ca=ids.ca_file,
        cert=getattr(ids, refused).path,
    )
    assert re.search(rf"\[{service}\]: peer .*CN={refused} .* no allow rule matched \(allow", log)


def test_a_client_without_certificate_is_refused_when_rules_exist(
    acl_tunnel: tuple[TunnelProcess, EchoServer], ids: Identities
) -> None:
    tunnel, backend = acl_tunnel
    log = _check_refused(
        tunnel, backend, "optional", who=r"\(no verified certificate\)", ca=ids.ca_file, cert=None
    )
    assert "no certificate, so no allow rule can match (allowCN)" in log
    _check_admitted(tunnel, backend, "optional", ids.ca_file, ids.alice.path)


def _s_client_echo(port: int, ids: Identities, cert: Path, line: str) -> str:
    """Send ``line`` with openssl s_client -cert; what came back within a few seconds
    (s_client -quiet waits for the peer to close, so it is stopped once the echo
    arrived or the tunnel closed)."""
    process = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ids.ca_file),
         "-cert", str(cert), "-quiet"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    received = b""
    try:
        process.stdin.write(line.encode())
        process.stdin.flush()
        deadline = time.monotonic() + 10
        while line.encode() not in received and time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    break  # the tunnel closed the connection
                received += chunk
    finally:
        process.kill()
        process.communicate()
    return received.decode(errors="replace")


@pytest.mark.interop
def test_openssl_s_client_with_a_refused_certificate_gets_nothing_through(
    acl_tunnel: tuple[TunnelProcess, EchoServer], ids: Identities
) -> None:
    tunnel, backend = acl_tunnel
    before = backend.accepted
    count = _refusal_count(tunnel, "cn")
    assert _s_client_echo(tunnel.port("cn"), ids, ids.mallory.path, "GET /\n") == ""
    tunnel.wait_for_log(r"Service \[cn\]: peer .*CN=mallory at .* refused", count=count + 1)
    assert backend.accepted == before
    assert _s_client_echo(tunnel.port("cn"), ids, ids.alice.path, "hello\n") == "hello\n"
    assert backend.accepted == before + 1


# --- client mode: the rules apply to the server's certificate --------------------------------


class RecordingTLSServer:
    """A TLS server on 127.0.0.1 that records every byte each connection delivers."""

    def __init__(self, cert: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert))
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.received: list[bytes] = []
        self.handshakes = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            conn.settimeout(10)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.handshakes += 1
                    data = b""
                    while chunk := tls.recv(1024):
                        data += chunk
                        tls.sendall(b"served\n")
                    self.received.append(data)
            except (OSError, ssl.SSLError):
                self.received.append(b"")
            finally:
                conn.close()

    def close(self) -> None:
        self._sock.close()


def test_client_mode_checks_the_servers_certificate(tmp_path: Path, ids: Identities) -> None:
    good = issue(ids.ca, tmp_path / "api.pem", cn="api", uris=("spiffe://example.org/api",))
    evil = issue(ids.ca, tmp_path / "evil.pem", cn="evil", uris=("spiffe://example.org/db",))
    servers = [RecordingTLSServer(good.path), RecordingTLSServer(evil.path)]
    try:
        text = "".join(
            f"[to_{name}]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{s.port}\n"
            f"verifyChain = yes\nCAfile = {ids.ca_file}\nallowURI = spiffe://example.org/api\n"
            for name, s in (("good", servers[0]), ("evil", servers[1]))
        )
        with start_tunnel(tmp_path, text) as tunnel:
            with socket.create_connection(("127.0.0.1", tunnel.port("to_good")), 10) as c:
                c.sendall(b"secret\n")
                assert c.recv(100) == b"served\n"
            with socket.create_connection(("127.0.0.1", tunnel.port("to_evil")), 10) as c:
                c.sendall(b"secret\n")
                c.settimeout(10)
                with contextlib.suppress(ConnectionResetError):
                    assert c.recv(100) == b""
            tunnel.wait_for_log(
                r"LOG4\[\d+\]: Service \[to_evil\]: peer O=Example, CN=evil at 127\.0\.0\.1:"
                rf"{servers[1].port} refused: no allow rule matched \(allowURI\)"
            )
        assert servers[0].received == [b"secret\n"]
        assert servers[1].handshakes == 1
        assert b"secret" not in b"".join(servers[1].received)
    finally:
        for server in servers:
            server.close()


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "line_no", "option", "complaint"),
    [
        ("allowCN = alice\n", 5, "allowCN", 'allowCN needs "verifyChain" or "verifyPeer"'),
        ("allowURI = spiffe://x/*\n", 5, "allowURI", 'needs "verifyChain" or "verifyPeer"'),
        (
            "verifyChain = yes\nCAfile = {ca}\nallowSPKI = sha256:zz\n",
            7,
            "allowSPKI",
            "SHA-256 digest",
        ),
        (
            "verifyChain = yes\nCAfile = {ca}\nallowSPKI = md5:00\n",
            7,
            "allowSPKI",
            "write sha256:",
        ),
        ("verifyChain = yes\nCAfile = {ca}\nallowURI = a***\n", 7, "allowURI", "write *"),
    ],
)
def test_rule_problems_are_config_errors_with_file_and_line(
    tmp_path: Path, ids: Identities, *, lines: str, line_no: int, option: str, complaint: str
) -> None:
    conf = tmp_path / "acl.conf"
    conf.write_text(
        f"[s]\ncert = {ids.server}\naccept = 127.0.0.1:0\nconnect = 9\n"
        + lines.format(ca=ids.ca_file),
        encoding="utf-8",
    )
    run = run_tlstunnel("--check", str(conf))
    assert run.returncode == 1, run.stderr
    assert f"{conf}:{line_no}: {option}: " in run.stderr, run.stderr
    assert complaint in run.stderr


def test_verify_peer_is_enough_for_the_rules(tmp_path: Path, ids: Identities) -> None:
    conf = tmp_path / "acl.conf"
    conf.write_text(
        f"[s]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 9\nverifyPeer = yes\n"
        f"CAfile = {ids.ca_file}\nallowOU = ops\n",
        encoding="utf-8",
    )
    run = run_tlstunnel("--check", str(conf))
    assert run.returncode == 0, run.stderr
