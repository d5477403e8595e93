"""Pre-shared keys: the PSKsecrets file, PSKidentity, and PSK handshakes with real peers.

Python's ssl has PSK callbacks from 3.13 on.  On older Pythons the handshake tests skip
(the feature does not exist there) and the refusal test runs instead.  The tests that
talk to openssl or stunnel4 carry the ``interop`` marker only where they can run, so CI
(which fails skipped interop tests) still insists on them under Python 3.13.
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trustme

from tests.conftest import TunnelFactory
from tests.support.backends import EchoServer
from tests.support.tunnel import TunnelProcess, run_tlstunnel
from tlstunnel.tls.psk import PSKFileError, psk_unsupported_reason, read_psk_file

HAS_PSK = not psk_unsupported_reason()
needs_psk = pytest.mark.skipif(not HAS_PSK, reason=psk_unsupported_reason() or "PSK available")
# interop only where the test can run: a skip under an interop marker fails CI.
psk_interop = pytest.mark.interop if HAS_PSK else needs_psk
VERSIONS = [
    pytest.param(ssl.TLSVersion.TLSv1_2, id="TLSv1.2"),
    pytest.param(ssl.TLSVersion.TLSv1_3, id="TLSv1.3"),
]
ALICE_KEY = b"alice's secret, 30 bytes long!"
BOB_KEY = bytes.fromhex("00112233445566778899aabbccddeeff0011")


def _secrets(folder: Path, lines: str, name: str = "psk.txt") -> Path:
    path = folder / name
    path.write_text(lines)
    path.chmod(0o600)
    return path


def _version_line(version: ssl.TLSVersion) -> str:
    return f"sslVersion = {'TLSv1.2' if version == ssl.TLSVersion.TLSv1_2 else 'TLSv1.3'}\n"


# --- the file ------------------------------------------------------------------------------


def test_the_file_holds_text_and_hexadecimal_keys(tmp_path: Path) -> None:
    path = _secrets(
        tmp_path,
        "alice:alice's secret, 30 bytes long!\r\n"
        "\n"
        "bob:00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11\n"
        "carol:0123456789ABCDEF0123456789abcdef\n"
        "dave:key:with:colons:is:text\n",
    )
    assert read_psk_file(str(path)) == (
        ("alice", ALICE_KEY),
        ("bob", BOB_KEY),  # hexadecimal pairs (colons between them allowed) become bytes
        ("carol", bytes.fromhex("0123456789ABCDEF0123456789abcdef")),
        ("dave", b"key:with:colons:is:text"),  # split at the first colon only
    )


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("alice\n", "line 1: not in IDENTITY:KEY form"),
        ("alice:0123456789abcdef0123456789abcdef\n:0123456789abcdef\n", "line 2: the identity"),
        ("alice:short key\n", "line 1: the key for 'alice' is 9 bytes; keys must be at least 16"),
        ("alice:00112233445566778899aabbccddee\n", "is 15 bytes"),  # 30 hex digits
        ("a:0123456789abcdef0\na:0123456789abcdef1\n", "line 2: identity 'a' is listed twice"),
        ("\n\n", "holds no IDENTITY:KEY line"),
    ],
)
def test_file_mistakes_name_their_line(tmp_path: Path, text: str, wanted: str) -> None:
    with pytest.raises(PSKFileError, match=wanted):
        read_psk_file(str(_secrets(tmp_path, text)))


# --- the configuration ---------------------------------------------------------------------


@pytest.mark.skipif(HAS_PSK, reason="this Python has PSK callbacks, so nothing is refused")
def test_old_python_refuses_PSKsecrets_naming_the_version_needed(tmp_path: Path) -> None:
    secrets = _secrets(tmp_path, "alice:alice's secret, 30 bytes long!\n")
    config = tmp_path / "psk.conf"
    config.write_text(
        f"foreground = yes\npid =\n[psk]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n"
        f"PSKsecrets = {secrets}\n"
    )
    for args in (["--check", str(config)], [str(config)]):
        run = run_tlstunnel(*args)
        assert run.returncode == 1
        assert f"{config}:6: PSKsecrets: pre-shared keys need Python 3.13 or later" in run.stderr
        assert "Accepting new connections" not in run.stderr


@needs_psk
def test_PSKidentity_must_name_an_identity_of_the_file(tmp_path: Path) -> None:
    secrets = _secrets(tmp_path, f"alice:{ALICE_KEY.decode()}\n")
    config = tmp_path / "psk.conf"
    config.write_text(
        "[out]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n"
        f"PSKsecrets = {secrets}\nPSKidentity = mallory\n"
        "[lost]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n"
        "PSKidentity = alice\n"
    )
    run = run_tlstunnel("--check", str(config))
    assert run.returncode == 1
    assert f"{config}:6: PSKidentity: no identity 'mallory' in the PSKsecrets file" in run.stderr
    assert f"{config}:11: PSKidentity: PSKidentity needs PSKsecrets = FILE" in run.stderr


@needs_psk
def test_a_psk_server_needs_no_certificate_and_warns_about_a_public_file(tmp_path: Path) -> None:
    secrets = _secrets(tmp_path, f"alice:{ALICE_KEY.decode()}\n")
    secrets.chmod(0o644)
    config = tmp_path / "psk.conf"
    config.write_text(
        "[psk]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n"
        f"PSKsecrets = {secrets}\nPSKidentity = alice\n"
    )
    run = run_tlstunnel("--check", str(config))
    assert run.returncode == 0, run.stderr
    assert f"{config}:4: PSKsecrets: {secrets} can be read or written by other users" in run.stderr
    assert f"{config}:5: PSKidentity has no effect in server mode" in run.stderr


# --- handshakes: Python clients against a tunnel --------------------------------------------


def _psk_client(identity: str, key: bytes, version: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = context.maximum_version = version
    if version == ssl.TLSVersion.TLSv1_2:
        context.set_ciphers("PSK")
    if sys.version_info < (3, 13):
        pytest.skip(psk_unsupported_reason())
    context.set_psk_client_callback(lambda _hint: (identity, key))
    return context


def _echo_once(port: int, context: ssl.SSLContext) -> tuple[bytes, str | None]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw) as tls:
        tls.sendall(b"psk ping\n")
        received = b""
        while len(received) < 9:
            chunk = tls.recv(64)
            if not chunk:
                break
            received += chunk
        return received, tls.version()


def _psk_server(
    tunnel: TunnelFactory, tmp_path: Path, echo: EchoServer, extra: str = ""
) -> TunnelProcess:
    secrets = _secrets(tmp_path, f"alice:{ALICE_KEY.decode()}\nbob:{BOB_KEY.hex()}\n")
    return tunnel(
        f"[psk]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo.port}\n"
        f"PSKsecrets = {secrets}\n{extra}"
    )


@needs_psk
@pytest.mark.parametrize("version", VERSIONS)
def test_a_psk_client_reaches_the_backend_of_a_server_without_certificate(
    tunnel: TunnelFactory, tmp_path: Path, echo_server: EchoServer, version: ssl.TLSVersion
) -> None:
    server = _psk_server(tunnel, tmp_path, echo_server)
    for identity, key in (("alice", ALICE_KEY), ("bob", BOB_KEY)):
        received, negotiated = _echo_once(server.port("psk"), _psk_client(identity, key, version))
        assert received == b"psk ping\n"
        assert negotiated == ("TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
    server.wait_for_log("Connection closed", count=2)


# What OpenSSL reports for each refusal (errors.py has no plainer sentence for them yet).
REFUSALS = [
    pytest.param(
        "alice",
        b"not alice's key, but long enough",
        ssl.TLSVersion.TLSv1_2,
        "the peer's data failed its integrity check (with PSKsecrets: the keys differ)",
        id="wrong-key-TLSv1.2",
    ),
    pytest.param(
        "alice",
        b"not alice's key, but long enough",
        ssl.TLSVersion.TLSv1_3,
        "the peer's pre-shared key does not match ours (PSKsecrets)",
        id="wrong-key-TLSv1.3",
    ),
    pytest.param(
        "mallory",
        ALICE_KEY,
        ssl.TLSVersion.TLSv1_2,
        "the peer's PSK identity is not in PSKsecrets",
        id="unknown-identity-TLSv1.2",
    ),
    # TLS 1.3: the PSK is ignored, and a certificate handshake needs a certificate.
    pytest.param(
        "mallory",
        ALICE_KEY,
        ssl.TLSVersion.TLSv1_3,
        "the client's PSK identity is not in PSKsecrets",
        id="unknown-identity-TLSv1.3",
    ),
]


@needs_psk
@pytest.mark.parametrize(("identity", "key", "version", "reason"), REFUSALS)
def test_a_wrong_key_or_unknown_identity_is_refused_before_the_backend(  # noqa: PLR0917
    tunnel: TunnelFactory,
    tmp_path: Path,
    identity: str,
    key: bytes,
    version: ssl.TLSVersion,
    reason: str,
) -> None:
    backend = EchoServer()
    try:
        server = _psk_server(tunnel, tmp_path, backend)
        try:
            received, _ = _echo_once(server.port("psk"), _psk_client(identity, key, version))
        except (ssl.SSLError, ConnectionError):
            received = b""
        assert received == b""
        server.wait_for_log(re.escape(reason))
        assert "SSL_accept: " in server.log()
        server.wait_for_log(
            r"Connection reset: 0 byte\(s\) sent to TLS, 0 byte\(s\) sent to socket"
        )
        assert backend.accepted == 0
    finally:
        backend.close()


@needs_psk
@pytest.mark.parametrize("version", VERSIONS)
def test_PSKidentity_picks_the_identity_a_client_tunnel_sends(
    tunnel: TunnelFactory, tmp_path: Path, echo_server: EchoServer, version: ssl.TLSVersion
) -> None:
    server = _psk_server(tunnel, tmp_path, echo_server)
    # The client's first identity has a key the server does not share: only bob works.
    client_secrets = _secrets(
        tmp_path, f"alice:not alice's key, but long enough\nbob:{BOB_KEY.hex()}\n", "mine.txt"
    )
    section = (
        f"[out]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{server.port('psk')}\n"
        f"PSKsecrets = {client_secrets}\n{_version_line(version)}"
    )
    picked = tunnel(section + "PSKidentity = bob\n", name="picked")
    assert _plain_echo(picked.port("out")) == b"through\n"
    first = tunnel(section, name="first")  # default: alice, the file's first identity
    assert _plain_echo(first.port("out")) == b""
    first.wait_for_log("SSL_connect: ")
    server.wait_for_log("SSL_accept: ")
    assert echo_server.accepted == 1  # only the connection that used bob's key got through


@needs_psk
def test_a_psk_client_refuses_a_server_that_shows_a_certificate_instead(
    tunnel: TunnelFactory, tmp_path: Path, echo_server: EchoServer
) -> None:
    """Without verifyChain/verifyPeer the key is the only proof of identity: a server
    that skips it and presents a certificate (any impostor can) is refused."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    identity = tmp_path / "impostor.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(identity))
    impostor = tunnel(
        f"[tls]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo_server.port}\ncert = {identity}\n",
        name="impostor",
    )
    secrets = _secrets(tmp_path, f"alice:{ALICE_KEY.hex()}\n", "client.txt")
    client = tunnel(
        f"[out]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{impostor.port('tls')}\n"
        f"PSKsecrets = {secrets}\n",
        name="client",
    )
    assert _plain_echo(client.port("out")) == b""
    client.wait_for_log("the server authenticated with a certificate, not the pre-shared key")
    assert echo_server.accepted <= 1  # the impostor may have connected; nothing was sent
    impostor.wait_for_log("Connection (closed|reset): 0 byte")


def _plain_echo(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"through\n")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(64):
                received += chunk
        except ConnectionResetError:
            pass
    return received


# --- interop: openssl and stunnel4 ---------------------------------------------------------


def _openssl_flag(version: ssl.TLSVersion) -> str:
    return "-tls1_2" if version == ssl.TLSVersion.TLSv1_2 else "-tls1_3"


def _s_client_psk(port: int, version: ssl.TLSVersion) -> str:
    """openssl s_client with alice's key in hex (as -psk wants it): send a line, wait
    for its echo, then close stdin so s_client says goodbye."""
    process = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-brief",
            "-psk_identity",
            "alice",
            "-psk",
            ALICE_KEY.hex(),
            _openssl_flag(version),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("from s_client\n")
    process.stdin.flush()
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.strip() == "from s_client" or "error" in line.lower():
            break
    rest, _ = process.communicate(timeout=10)
    return "".join(lines) + rest


@psk_interop
@needs_psk
@pytest.mark.parametrize("version", VERSIONS)
def test_openssl_s_client_with_a_hex_psk_reaches_the_backend(
    tunnel: TunnelFactory, tmp_path: Path, echo_server: EchoServer, version: ssl.TLSVersion
) -> None:
    server = _psk_server(tunnel, tmp_path, echo_server)
    output = _s_client_psk(server.port("psk"), version)
    assert "CONNECTION ESTABLISHED" in output, output
    assert "from s_client" in output
    server.wait_for_log(r"Connection closed: \d+ byte\(s\) sent to TLS")


@psk_interop
@needs_psk
@pytest.mark.parametrize("version", VERSIONS)
def test_our_client_reaches_openssl_s_server_with_a_psk(
    tunnel: TunnelFactory, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    with socket.socket() as probe:  # a free port for s_server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    s_server = subprocess.Popen(
        [
            "openssl",
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-nocert",
            "-naccept",
            "1",
            "-rev",
            "-psk_identity",
            "bob",
            "-psk",
            BOB_KEY.hex(),
            _openssl_flag(version),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert s_server.stdout is not None
        for line in s_server.stdout:  # "ACCEPT" once listening (a probe would use up -naccept)
            if line.startswith("ACCEPT"):
                break
        secrets = _secrets(tmp_path, f"bob:{BOB_KEY.hex()}\n")
        client = tunnel(
            f"[out]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{port}\n"
            f"PSKsecrets = {secrets}\n"
        )
        with socket.create_connection(("127.0.0.1", client.port("out")), timeout=10) as sock:
            sock.sendall(b"reverse me\n")
            assert sock.recv(64) == b"em esrever\n"
        client.wait_for_log("TLS connected: (new session negotiated|previous session reused)")
        expected = "TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3"
        client.wait_for_log(f"{expected} ciphersuite: ")
    finally:
        s_server.kill()
        s_server.communicate()


@psk_interop
@needs_psk
@pytest.mark.skipif(shutil.which("stunnel4") is None, reason="no stunnel4 binary")
@pytest.mark.parametrize("version", VERSIONS)
def test_stunnel4_psk_client_to_our_server_and_our_client_to_stunnel4(
    tunnel: TunnelFactory, tmp_path: Path, echo_server: EchoServer, version: ssl.TLSVersion
) -> None:
    secrets = _secrets(tmp_path, f"alice:{ALICE_KEY.decode()}\n", "shared.txt")
    ours = tunnel(
        f"[psk]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo_server.port}\n"
        f"PSKsecrets = {secrets}\n",
        name="ours",
    )
    their_client = tunnel(
        f"[out]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{ours.port('psk')}\n"
        f"PSKsecrets = {secrets}\n{_version_line(version)}",
        program="stunnel4",
        name="their-client",
    )
    assert _plain_echo(their_client.port("out")) == b"through\n"
    # A TLS 1.3 PSK handshake counts as resumed for OpenSSL (and so for stunnel's line).
    ours.wait_for_log("TLS accepted: (new session negotiated|previous session reused)")

    their_server = tunnel(
        f"[psk]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo_server.port}\n"
        f"PSKsecrets = {secrets}\n",
        program="stunnel4",
        name="their-server",
    )
    our_client = tunnel(
        f"[out]\nclient = yes\naccept = 127.0.0.1:0\n"
        f"connect = 127.0.0.1:{their_server.port('psk')}\n"
        f"PSKsecrets = {secrets}\n{_version_line(version)}",
        name="our-client",
    )
    assert _plain_echo(our_client.port("out")) == b"through\n"
    expected = "TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3"
    our_client.wait_for_log(f"{expected} ciphersuite: ")
