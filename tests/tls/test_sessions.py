"""Session resumption options: sessionCacheSize, sessionCacheTimeout, sessionResume,
ticketKeySecret and ticketMacSecret.

The end-to-end tests run real tunnel processes and real clients (Python's ssl, openssl
s_client) and judge by what matters to a client: was the session resumed or not.
Each option's test would fail if the option were ignored, against OpenSSL's defaults
(20480 cached sessions kept 7200 s, random ticket keys per process).
"""

from __future__ import annotations

import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.config.helpers import load, problem, problems
from tests.conftest import TunnelFactory
from tests.support.backends import EchoServer
from tests.support.clients import client_context
from tests.support.tunnel import TunnelProcess
from tlstunnel.tls import build_service_tls, libssl
from tlstunnel.tls.sessions import session_cache_settings, ticket_keys

from .conftest import PKI, ServiceFactory

needs_libssl = pytest.mark.skipif(not libssl.available(), reason=libssl.unavailable_reason())

VERSIONS = [
    pytest.param(ssl.TLSVersion.TLSv1_2, id="TLSv1.2"),
    pytest.param(ssl.TLSVersion.TLSv1_3, id="TLSv1.3"),
]
SECRET_A = "00112233445566778899aabbccddeeff"
MAC_A = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
SECRET_B = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
SERVER_SIDE = re.compile(r"TLS accepted: (previous session reused|new session negotiated)")


# --- helpers ------------------------------------------------------------------------------


def _section(pki: PKI, echo: EchoServer, extra: str = "", name: str = "tls") -> str:
    return (
        f"[{name}]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo.port}\n"
        f"cert = {pki.server}\n{extra}"
    )


def _visit(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[bool, ssl.SSLSession]:
    """One connection: echo a line, close cleanly (close_notify both ways, so the
    session stays resumable).  Returns (was the offered session resumed, the session)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        tls.sendall(b"ping\n")
        received = b""
        while len(received) < 5:
            chunk = tls.recv(64)
            assert chunk, "the tunnel closed before echoing"
            received += chunk
        assert received == b"ping\n"
        reused = bool(tls.session_reused)
        current = tls.session
        tls.unwrap()
    assert current is not None
    return reused, current


def _client(pki: PKI, version: ssl.TLSVersion) -> ssl.SSLContext:
    return client_context(pki.ca, version=version)


def _outcomes(tunnel: TunnelProcess, count: int) -> list[str]:
    text = tunnel.wait_for_log(SERVER_SIDE.pattern, count=count)
    return SERVER_SIDE.findall(text)


# --- ticket keys: a pure function of the secrets -------------------------------------------


def test_ticket_keys_follow_openssl_3_layout_and_depend_only_on_secrets_and_service() -> None:
    key, mac = bytes.fromhex(SECRET_A), bytes.fromhex(MAC_A)
    block = ticket_keys(key, mac, "tls")
    assert len(block) == 80  # name[16] | hmac[32] | aes[32]
    assert ticket_keys(key, mac, "tls") == block
    other_key = ticket_keys(bytes.fromhex(SECRET_B), mac, "tls")
    other_mac = ticket_keys(key, bytes.fromhex(SECRET_B), "tls")
    other_service = ticket_keys(key, mac, "web")
    # Other inputs: another key name, so a foreign ticket is simply not recognised.
    for other in (other_key, other_mac, other_service):
        assert other[:16] != block[:16]
    assert other_key[48:] != block[48:] and other_key[16:48] == block[16:48]
    assert other_mac[16:48] != block[16:48] and other_mac[48:] == block[48:]
    assert key not in block and mac not in block  # derived, never the secrets themselves
    with pytest.raises(ValueError, match="16 or 32 bytes"):
        ticket_keys(b"short", mac, "tls")


# --- the context: what OpenSSL holds -------------------------------------------------------


@needs_libssl
def test_stunnel_defaults_and_written_values_reach_the_ssl_ctx(
    service: ServiceFactory, pki: PKI
) -> None:
    default = build_service_tls(service(cert=pki.server)).context
    assert session_cache_settings(default) == (1000, 300, 2)  # SSL_SESS_CACHE_SERVER
    tuned = build_service_tls(
        service(cert=pki.server, session_cache_size=7, session_cache_timeout=42.0)
    )
    assert session_cache_settings(tuned.context) == (7, 42, 2)
    assert "Session cache: 7 entries, sessions kept 42 s" in tuned.describe_settings()


@needs_libssl
def test_session_resume_no_turns_off_cache_and_tickets(service: ServiceFactory, pki: PKI) -> None:
    tls = build_service_tls(service(cert=pki.server, session_resume=False))
    assert session_cache_settings(tls.context)[2] == 0  # SSL_SESS_CACHE_OFF
    assert tls.context.options & ssl.OP_NO_TICKET
    assert tls.context.num_tickets == 0


# --- the configuration ---------------------------------------------------------------------

SERVER = "[web]\naccept = 8443\nconnect = 8080\ncert = cert.pem\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder for configuration files; the certificate is not read when loading."""
    (tmp_path / "cert.pem").write_text("dummy certificate\n")
    return tmp_path


CLIENT = "[out]\nclient = yes\naccept = 127.0.0.1:8080\nconnect = example.com:443\n"


@needs_libssl
def test_options_are_read_into_the_model(folder: Path) -> None:
    (svc,) = load(
        folder,
        SERVER
        + "sessionCacheSize = 0\nsessionCacheTimeout = 60\nsessionResume = no\n"
        + f"ticketKeySecret = {SECRET_A}\n"
        + "ticketMacSecret = "
        + ":".join(MAC_A[i : i + 2] for i in range(0, len(MAC_A), 2))
        + "\n",
    ).config.services
    assert (svc.session_cache_size, svc.session_cache_timeout, svc.session_resume) == (0, 60, False)
    assert svc.ticket_key_secret == bytes.fromhex(SECRET_A)
    assert svc.ticket_mac_secret == bytes.fromhex(MAC_A)  # colons between pairs are allowed
    assert SECRET_A not in repr(svc) and "ticket_key_secret" not in repr(svc)


@needs_libssl
@pytest.mark.parametrize(
    ("line", "wanted"),
    [
        ("ticketKeySecret = 0011", "the secret is 2 bytes; it must be 16 or 32 bytes"),
        ("ticketKeySecret = xyz", "32 or 64 hexadecimal digits"),
        (f"ticketKeySecret = {SECRET_A}", "ticketKeySecret needs ticketMacSecret too"),
        (f"ticketMacSecret = {SECRET_A}", "ticketMacSecret needs ticketKeySecret too"),
        ("sessionCacheSize = -1", "not a whole number"),
        ("sessionResume = maybe", "write yes or no"),
        (
            "sessiond = 127.0.0.1:1234",
            "no shared session cache daemon; set the same ticketKeySecret and ticketMacSecret",
        ),
    ],
)
def test_bad_session_lines_are_problems_with_their_line(
    folder: Path, line: str, wanted: str
) -> None:
    found = problem(folder, SERVER + line + "\n")
    assert found.line == 5
    assert wanted in found.message


@needs_libssl
def test_ticket_secrets_are_refused_in_client_mode(folder: Path) -> None:
    found = problems(folder, CLIENT + f"ticketKeySecret = {SECRET_A}\nticketMacSecret = {MAC_A}\n")
    assert [p.line for p in found] == [5, 6]
    assert all("only works in server mode" in p.message for p in found)


# --- end to end: real tunnels, real clients ------------------------------------------------


@needs_libssl
@pytest.mark.parametrize("version", VERSIONS)
def test_sessions_resume_until_sessionCacheTimeout_passes(
    tunnel: TunnelFactory, pki: PKI, echo_server: EchoServer, version: ssl.TLSVersion
) -> None:
    server = tunnel(_section(pki, echo_server, "sessionCacheTimeout = 1\n"))
    port = server.port("tls")
    client = _client(pki, version)
    _, first = _visit(port, client)
    reused, _ = _visit(port, client, first)
    assert reused, "a fresh session must resume"
    time.sleep(2.2)  # OpenSSL counts whole seconds: 2 s is past a 1 s timeout
    reused, _ = _visit(port, client, first)
    assert not reused, "a session older than sessionCacheTimeout must not resume"
    assert _outcomes(server, 3) == [
        "new session negotiated",
        "previous session reused",
        "new session negotiated",
    ]


@needs_libssl
@pytest.mark.parametrize("version", VERSIONS)
def test_sessionCacheSize_drops_the_oldest_session(
    tunnel: TunnelFactory, pki: PKI, echo_server: EchoServer, version: ssl.TLSVersion
) -> None:
    # NO_TICKET: sessions live in the server's cache only (TLS 1.2 session ids, TLS 1.3
    # stateful tickets), which is what sessionCacheSize bounds.
    server = tunnel(_section(pki, echo_server, "sessionCacheSize = 1\noptions = NO_TICKET\n"))
    port = server.port("tls")
    client = _client(pki, version)
    _, alice = _visit(port, client)
    reused, alice = _visit(port, client, alice)
    assert reused, "the only cached session must resume"
    _visit(port, client)  # another client's session takes the one place
    reused, _ = _visit(port, client, alice)
    assert not reused, "with sessionCacheSize = 1 the older session must be gone"


@needs_libssl
@pytest.mark.parametrize("version", VERSIONS)
def test_sessionResume_no_makes_every_handshake_a_full_one(
    tunnel: TunnelFactory, pki: PKI, echo_server: EchoServer, version: ssl.TLSVersion
) -> None:
    server = tunnel(_section(pki, echo_server, "sessionResume = no\n"))
    port = server.port("tls")
    client = _client(pki, version)
    session = None
    for _ in range(3):
        reused, session = _visit(port, client, session)
        assert not reused
    assert _outcomes(server, 3) == ["new session negotiated"] * 3


def _s_client(port: int, version: ssl.TLSVersion, session_file: Path, use: bool) -> str:
    """openssl s_client: save (or offer) the session; waits for the echo, so a TLS 1.3
    ticket has arrived before stdin closes."""
    flag = "-tls1_3" if version == ssl.TLSVersion.TLSv1_3 else "-tls1_2"
    command = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", flag]
    command += ["-sess_in" if use else "-sess_out", str(session_file)]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write("echo-me\n")
    process.stdin.flush()
    lines = []
    deadline = time.monotonic() + 10
    for line in process.stdout:
        lines.append(line)
        if line.strip() == "echo-me" or time.monotonic() > deadline:
            break
    rest, _ = process.communicate(timeout=10)  # closes stdin: s_client says goodbye
    return "".join(lines) + rest


@needs_libssl
@pytest.mark.interop
@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("resume", ["yes", "no"])
def test_openssl_s_client_sees_new_sessions_with_sessionResume_no(
    tunnel: TunnelFactory,
    pki: PKI,
    echo_server: EchoServer,
    version: ssl.TLSVersion,
    resume: str,
) -> None:
    server = tunnel(_section(pki, echo_server, f"sessionResume = {resume}\n"))
    port = server.port("tls")
    session_file = server.config_path.parent / "session.pem"
    first = _s_client(port, version, session_file, use=False)
    assert re.search(r"^New, TLSv1\.[23]", first, re.MULTILINE), first
    if resume == "yes":
        second = _s_client(port, version, session_file, use=True)
        assert re.search(r"^Reused, TLSv1\.[23]", second, re.MULTILINE), second
    else:
        # Nothing resumable was handed out (no ticket, no cached session id), so
        # s_client has no session to save; a second visit is a full handshake again.
        assert not session_file.exists()
        second = _s_client(port, version, session_file, use=False)
        assert re.search(r"^New, TLSv1\.[23]", second, re.MULTILINE), second
        assert not session_file.exists()


@needs_libssl
@pytest.mark.parametrize("version", VERSIONS)
def test_ticket_secrets_resume_across_restarts_and_instances_with_the_same_secrets(
    tunnel: TunnelFactory, pki: PKI, echo_server: EchoServer, version: ssl.TLSVersion
) -> None:
    secrets = f"ticketKeySecret = {SECRET_A}\nticketMacSecret = {MAC_A}\n"
    first = tunnel(_section(pki, echo_server, secrets), name="first")
    client = _client(pki, version)
    _, session = _visit(first.port("tls"), client)
    second = tunnel(_section(pki, echo_server, secrets), name="second")
    reused, _ = _visit(second.port("tls"), client, session)
    assert reused, "another instance with the same secrets must resume the session"
    first.stop()
    restarted = tunnel(_section(pki, echo_server, secrets), name="restarted")
    reused, _ = _visit(restarted.port("tls"), client, session)
    assert reused, "a restarted instance with the same secrets must resume the session"
    other = f"ticketKeySecret = {SECRET_B}\nticketMacSecret = {MAC_A}\n"
    stranger = tunnel(_section(pki, echo_server, other), name="stranger")
    reused, _ = _visit(stranger.port("tls"), client, session)
    assert not reused, "an instance with other secrets must not resume the session"
    assert "TLS accepted: previous session reused" in restarted.log()


@needs_libssl
def test_without_ticket_secrets_a_restart_loses_the_sessions(
    tunnel: TunnelFactory, pki: PKI, echo_server: EchoServer
) -> None:
    """The control for the test above: what the secrets change."""
    first = tunnel(_section(pki, echo_server), name="first")
    client = _client(pki, ssl.TLSVersion.TLSv1_3)
    _, session = _visit(first.port("tls"), client)
    second = tunnel(_section(pki, echo_server), name="second")
    reused, _ = _visit(second.port("tls"), client, session)
    assert not reused


@needs_libssl
def test_shared_ticket_secrets_do_not_carry_a_session_to_another_service(
    tunnel: TunnelFactory, pki: PKI, echo_server: EchoServer
) -> None:
    secrets = f"ticketKeySecret = {SECRET_A}\nticketMacSecret = {MAC_A}\n"
    server = tunnel(
        _section(pki, echo_server, secrets, name="one")
        + _section(pki, echo_server, secrets, name="two")
    )
    client = _client(pki, ssl.TLSVersion.TLSv1_3)
    _, session = _visit(server.port("one"), client)
    reused, _ = _visit(server.port("one"), client, session)
    assert reused
    reused, _ = _visit(server.port("two"), client, session)
    assert not reused, "a ticket from service [one] must not resume at service [two]"


# --- client mode ---------------------------------------------------------------------------


def _plain_round_trip(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"hello\n")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(64):
            received += chunk
    assert received == b"hello\n"


@needs_libssl
@pytest.mark.parametrize(("resume", "reused"), [("yes", 1), ("no", 0)])
def test_client_mode_offers_its_session_unless_sessionResume_no(
    tunnel: TunnelFactory, pki: PKI, echo_server: EchoServer, resume: str, reused: int
) -> None:
    server = tunnel(_section(pki, echo_server), name="server")
    client = tunnel(
        f"[plain]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{server.port('tls')}\n"
        f"sessionResume = {resume}\n",
        name="client",
    )
    for count in (1, 2, 3):
        _plain_round_trip(client.port("plain"))
        client.wait_for_log("Connection closed", count=count)
    outcomes = _outcomes(server, 3)
    assert outcomes.count("previous session reused") == 2 * reused
    assert client.log().count("TLS connected: previous session reused") == 2 * reused


def test_without_libssl_the_options_are_refused_with_the_reason(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the OpenSSL behind Python cannot be reached, nothing is silently ignored."""
    monkeypatch.setattr(libssl, "_PROBE_FAILURE", "the layout of Python's SSLContext is new")
    found = problems(
        folder,
        SERVER
        + "sessionCacheSize = 10\nsessionCacheTimeout = 10\nsessionResume = no\n"
        + f"ticketKeySecret = {SECRET_A}\nticketMacSecret = {MAC_A}\n",
    )
    assert sorted(p.line for p in found) == [5, 6, 7, 8, 9]
    for found_problem in found:
        assert found_problem.message == (
            "cannot be honoured here: the layout of Python's SSLContext is new"
        )
    # Client mode keeps no session without any OpenSSL call: that still works.
    (svc,) = load(folder, CLIENT + "sessionResume = no\n").config.services
    assert svc.session_resume is False
