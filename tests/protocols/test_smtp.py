"""``protocol = smtp``: the negotiator with no network (both modes, every failure),
hypothesis on the reply parser, then aiosmtpd through a real tlstunnel with smtplib,
swaks and openssl, and stunnel4 on either side of tlstunnel."""

from __future__ import annotations

import base64
import smtplib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import TunnelFactory
from tests.protocols import mail_servers
from tests.protocols.mail_script import Conversation, fuzz
from tests.protocols.mail_servers import (
    PASSWORD,
    USER,
    ScriptedServer,
    SMTPServer,
    refused_by,
    server_context,
    start_tls_by_hand,
)
from tests.support.clients import client_context
from tests.support.pki import PKIFiles
from tests.support.tunnel import run_tlstunnel
from tlstunnel.protocols import lines, smtp
from tlstunnel.protocols.base import Done, Failed, Receive, Side, StartTLS

GREETING = b"220 mx.example.org ESMTP ready\r\n"
EHLO_REPLY = b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 STARTTLS\r\n"
EHLO_TLS_REPLY = b"250-mx.example.org\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN\r\n"


def client_mode(**options: object) -> Conversation:
    """A client-mode conversation up to the server's greeting."""
    return Conversation.client_mode("smtp", **options)


def up_to_tls(**options: object) -> Conversation:
    conversation = client_mode(**options)
    conversation.server(GREETING)
    conversation.server(EHLO_REPLY)
    assert conversation.server(b"220 2.0.0 go ahead\r\n") == StartTLS(Side.SERVER)
    conversation.take(Side.SERVER)
    return conversation


# -- client mode, no network -------------------------------------------------------------


def test_client_mode_says_ehlo_then_starttls_and_greets_the_client_after_tls() -> None:
    conversation = client_mode()
    assert conversation.server(GREETING) == Receive(Side.SERVER)
    assert conversation.take(Side.SERVER) == b"EHLO localhost\r\n"
    assert conversation.take(Side.CLIENT) == b"", "the greeting waits for TLS"
    conversation.server(EHLO_REPLY)
    assert conversation.take(Side.SERVER) == b"STARTTLS\r\n"
    assert conversation.server(b"220 2.0.0 Ready to start TLS\r\n") == StartTLS(Side.SERVER)
    assert conversation.tls() == Done()
    assert conversation.take(Side.CLIENT) == GREETING
    assert conversation.take(Side.SERVER) == b""


def test_client_mode_ehlo_name_is_protocol_host() -> None:
    conversation = client_mode(host="relay.example.net")
    conversation.server(GREETING)
    assert conversation.take(Side.SERVER) == b"EHLO relay.example.net\r\n"


def test_client_mode_forwards_a_multiline_greeting_whole() -> None:
    conversation = client_mode()
    greeting = b"220-mx.example.org ESMTP\r\n220-no UCE\r\n220 ready\r\n"
    for line in greeting.splitlines(keepends=True):
        conversation.server(line)
    conversation.server(EHLO_REPLY)
    conversation.server(b"220 go\r\n")
    conversation.tls()
    assert conversation.take(Side.CLIENT) == greeting


def test_client_mode_handles_replies_split_anywhere() -> None:
    conversation = client_mode()
    for byte in GREETING + EHLO_REPLY:
        conversation.server(bytes([byte]))
    assert conversation.take(Side.SERVER) == b"EHLO localhost\r\nSTARTTLS\r\n"


def test_client_mode_auth_plain_inside_tls() -> None:
    conversation = up_to_tls(username="alice", password="s3cret", authentication="plain")
    assert conversation.tls() == Receive(Side.SERVER)
    assert conversation.take(Side.SERVER) == b"EHLO localhost\r\n"
    conversation.server(EHLO_TLS_REPLY)
    token = base64.b64encode(b"\0alice\0s3cret")
    assert conversation.take(Side.SERVER) == b"AUTH PLAIN " + token + b"\r\n"
    assert conversation.take(Side.CLIENT) == b""
    assert conversation.server(b"235 2.7.0 Authentication successful\r\n") == Done()
    assert conversation.take(Side.CLIENT) == GREETING


def test_client_mode_auth_defaults_to_plain() -> None:
    conversation = up_to_tls(username="alice", password="pw")
    conversation.tls()
    conversation.take(Side.SERVER)
    conversation.server(EHLO_TLS_REPLY)
    assert conversation.take(Side.SERVER).startswith(b"AUTH PLAIN ")


def test_client_mode_auth_login_answers_both_challenges() -> None:
    conversation = up_to_tls(username="alice", password="s3cret", authentication="login")
    conversation.tls()
    conversation.take(Side.SERVER)
    conversation.server(EHLO_TLS_REPLY)
    assert conversation.take(Side.SERVER) == b"AUTH LOGIN\r\n"
    conversation.server(b"334 VXNlcm5hbWU6\r\n")
    assert conversation.take(Side.SERVER) == base64.b64encode(b"alice") + b"\r\n"
    conversation.server(b"334 UGFzc3dvcmQ6\r\n")
    assert conversation.take(Side.SERVER) == base64.b64encode(b"s3cret") + b"\r\n"
    assert conversation.server(b"235 ok\r\n") == Done()
    assert conversation.take(Side.CLIENT) == GREETING


def test_client_mode_auth_rejected() -> None:
    conversation = up_to_tls(username="alice", password="wrong")
    conversation.tls()
    conversation.server(EHLO_TLS_REPLY)
    conversation.take(Side.CLIENT)
    step = conversation.server(b"535 5.7.8 Authentication credentials invalid\r\n")
    assert isinstance(step, Failed)
    assert conversation.reason == (
        "PLAIN authentication failed: '535 5.7.8 Authentication credentials invalid'"
    )
    assert "wrong" not in conversation.reason
    assert conversation.take(Side.CLIENT) == smtp.CLIENT_MODE_FAILURE


def test_client_mode_auth_login_rejected_at_the_user_name() -> None:
    conversation = up_to_tls(username="alice", password="pw", authentication="login")
    conversation.tls()
    conversation.server(EHLO_TLS_REPLY)
    conversation.server(b"504 5.5.4 Unrecognized authentication type\r\n")
    assert conversation.reason.startswith("LOGIN authentication failed: '504")


@pytest.mark.parametrize(
    ("ehlo", "reason"),
    [
        (b"250-mx\r\n250 PIPELINING\r\n", "the server does not offer AUTH inside TLS"),
        (
            b"250-mx\r\n250 AUTH CRAM-MD5 LOGIN\r\n",
            "the server does not offer AUTH PLAIN (it offers 'CRAM-MD5 LOGIN')",
        ),
    ],
)
def test_client_mode_auth_mechanism_must_be_offered(ehlo: bytes, reason: str) -> None:
    conversation = up_to_tls(username="alice", password="pw")
    conversation.tls()
    conversation.server(ehlo)
    assert conversation.reason == reason


def test_client_mode_accepts_the_old_auth_equals_form() -> None:
    conversation = up_to_tls(username="alice", password="pw")
    conversation.tls()
    conversation.take(Side.SERVER)
    conversation.server(b"250-mx\r\n250 AUTH=PLAIN\r\n")
    assert conversation.take(Side.SERVER).startswith(b"AUTH PLAIN ")


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ([b"554 5.3.2 go away\r\n"], "the server refused the session: '554 5.3.2 go away'"),
        ([b"HTTP/1.1 400 Bad\r\n"], "the server's greeting is not a reply: 'HTTP/1.1 400 Bad'"),
        ([b"\x16\x03\x01\x00\x05hello\r\n"], "the server's greeting is not a reply: "),
        (
            [GREETING, b"502 5.5.1 EHLO not implemented\r\n"],
            "the server refused EHLO: '502 5.5.1 EHLO not implemented'",
        ),
        (
            [GREETING, b"250-mx\r\n250 SIZE 10\r\n"],
            "the server does not offer STARTTLS (its EHLO reply ends '250 SIZE 10')",
        ),
        (
            [GREETING, EHLO_REPLY, b"454 4.7.0 TLS not available due to temporary reason\r\n"],
            "the server refused STARTTLS: '454 4.7.0 TLS not available due to temporary reason'",
        ),
        (
            [GREETING, b"250-mx\r\n251 STARTTLS\r\n"],
            "the reply to EHLO changes its code midway: '251 STARTTLS'",
        ),
        ([GREETING, b""], "the server closed the connection while waiting for the reply to EHLO"),
        (
            [GREETING, EHLO_REPLY, b""],
            "the server closed the connection while waiting for the reply to STARTTLS",
        ),
        ([b""], "the server closed the connection while waiting for the server's greeting"),
    ],
)
def test_client_mode_failures(script: list[bytes], reason: str) -> None:
    conversation = client_mode()
    for data in script:
        conversation.server(data)
    assert isinstance(conversation.step, Failed)
    assert conversation.reason.startswith(reason)
    # The local client hears a 421 greeting, never the server's words.
    assert conversation.take(Side.CLIENT) == smtp.CLIENT_MODE_FAILURE


def test_client_mode_drops_plaintext_the_server_pipelines_after_its_220() -> None:
    """CVE-2011-0411 towards the client: a man in the middle appends a fake reply to
    the 220; it must not reach the local client inside the TLS session."""
    conversation = client_mode()
    conversation.server(GREETING + EHLO_REPLY)
    step = conversation.server(b"220 go ahead\r\n250 2.1.0 injected\r\n")
    assert step == StartTLS(Side.SERVER)
    assert any("20 byte(s) of plaintext the server sent" in note for note in conversation.notes)
    assert conversation.tls() == Done()
    assert conversation.take(Side.CLIENT) == GREETING


def test_client_mode_overlong_line() -> None:
    conversation = client_mode()
    conversation.server(b"220-" + b"x" * 9000)
    assert conversation.reason == "a line longer than 8192 bytes"


def test_client_mode_endless_multiline_reply() -> None:
    conversation = client_mode()
    conversation.server(b"220-hello\r\n" * 101)
    assert conversation.reason == "the server's greeting is longer than 100 lines"


def test_client_mode_connect_failure_is_reported() -> None:
    conversation = Conversation.begin("smtp", True)
    assert conversation.connected("Connection refused (111)") == Failed("Connection refused (111)")


# -- server mode, no network -------------------------------------------------------------


def server_mode() -> Conversation:
    """A server-mode conversation after the backend's greeting."""
    return Conversation.server_mode("smtp", GREETING, passed_on=GREETING)


def test_server_mode_offers_starttls_and_starts_tls() -> None:
    conversation = server_mode()
    conversation.client(b"EHLO client.example\r\n")
    assert conversation.take(Side.CLIENT) == b"250-mx.example.org\r\n250 STARTTLS\r\n"
    assert conversation.client(b"STARTTLS\r\n") == StartTLS(Side.CLIENT)
    assert conversation.take(Side.CLIENT) == b"220 2.0.0 Ready to start TLS\r\n"
    assert conversation.tls() == Done()
    assert conversation.take(Side.SERVER) == b"", "nothing the client said reached the server"


def test_server_mode_answers_helo_noop_rset_lowercase() -> None:
    conversation = server_mode()
    conversation.client(b"helo x\r\nnoop\r\nrset\r\n")
    assert conversation.take(Side.CLIENT) == (
        b"250 mx.example.org\r\n250 2.0.0 OK\r\n250 2.0.0 OK\r\n"
    )


def test_server_mode_refuses_mail_before_starttls() -> None:
    conversation = server_mode()
    conversation.client(b"MAIL FROM:<a@example.org>\r\n")
    assert conversation.take(Side.CLIENT) == b"530 5.7.0 Must issue a STARTTLS command first\r\n"
    assert conversation.take(Side.SERVER) == b""


def test_server_mode_starttls_takes_no_parameters() -> None:
    conversation = server_mode()
    assert conversation.client(b"STARTTLS now\r\n") == Receive(Side.CLIENT)
    assert conversation.take(Side.CLIENT).startswith(b"501 ")


def test_server_mode_drops_plaintext_pipelined_after_starttls() -> None:
    """CVE-2011-0411: commands sent in the same packet as STARTTLS are injected in
    plaintext; they must not reach the backend as if sent inside TLS."""
    conversation = server_mode()
    step = conversation.client(b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
    assert step == StartTLS(Side.CLIENT)
    assert any("30 byte(s) of plaintext the client sent" in note for note in conversation.notes)
    assert conversation.tls() == Done()
    assert conversation.take(Side.SERVER) == b""


def test_server_mode_quit() -> None:
    conversation = server_mode()
    conversation.client(b"QUIT\r\n")
    assert conversation.reason == "the client quit before STARTTLS"
    assert conversation.take(Side.CLIENT) == b"221 2.0.0 Bye\r\n"


def test_server_mode_too_many_commands() -> None:
    conversation = server_mode()
    conversation.client(b"AUTH PLAIN c2VjcmV0\r\n" * (lines.MAX_REFUSED + 1))
    assert conversation.reason == (
        "the client sent 10 commands other than STARTTLS (the last: 'AUTH')"
    )
    assert conversation.take(Side.CLIENT).endswith(
        b"421 4.7.0 Too many commands before STARTTLS\r\n"
    )


def test_server_mode_backend_refusal_is_not_passed_on() -> None:
    conversation = Conversation.begin("smtp", False)
    conversation.connected()
    conversation.server(b"554 5.3.2 internal details\r\n")
    assert conversation.reason == "the server refused the session: '554 5.3.2 internal details'"
    assert conversation.take(Side.CLIENT) == smtp.SERVER_MODE_FAILURE


def test_server_mode_client_closes() -> None:
    conversation = server_mode()
    conversation.client(b"")
    assert conversation.reason == (
        "the client closed the connection while waiting for the client's STARTTLS"
    )


# -- hypothesis --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=30), st.booleans())
def test_arbitrary_bytes_never_break_the_negotiator(chunks: list[bytes], client: bool) -> None:
    fuzz("smtp", client, chunks, username="u", password="p")


line = st.sampled_from(
    [GREETING, EHLO_REPLY, b"220 go\r\n", b"250 ok\r\n", b"STARTTLS\r\n", b"EHLO x\r\n"]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(line | st.binary(max_size=20), max_size=20), st.booleans())
def test_plausible_lines_never_break_the_negotiator(chunks: list[bytes], client: bool) -> None:
    fuzz("smtp", client, [c for c in chunks if c], username="u", password="p")


# -- end to end: aiosmtpd, smtplib, swaks, openssl ---------------------------------------

# aiosmtpd sets its own deprecated Session.login_data after every successful AUTH.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Session.login_data is deprecated:DeprecationWarning"
)
MESSAGE = "Subject: through the tunnel\r\n\r\nhello\r\n"


def client_section(port: int, pki: PKIFiles, extra: str = "") -> str:
    return mail_servers.client_section("smtp", port, pki, extra)


def server_section(port: int, pki: PKIFiles, extra: str = "") -> str:
    return mail_servers.server_section("smtp", port, pki, extra)


@pytest.fixture
def tls_smtp(pki: PKIFiles) -> Iterator[SMTPServer]:
    """A mail server that requires STARTTLS and AUTH (alice / s3cret)."""
    with SMTPServer(
        tls_context=server_context(pki.server),
        users={USER: PASSWORD},
        require_starttls=True,
        auth_required=True,
    ) as server:
        yield server


@pytest.fixture
def plain_smtp() -> Iterator[SMTPServer]:
    """A mail server with no STARTTLS (the backend of a server-mode tunnel)."""
    with SMTPServer() as server:
        yield server


def send_plain(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail("a@example.org", ["b@example.org"], MESSAGE)


@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_client_mode_logs_in_inside_tls_and_delivers(
    tunnel: TunnelFactory, pki: PKIFiles, tls_smtp: SMTPServer, mechanism: str
) -> None:
    extra = (
        f"protocolHost = relay.test\nprotocolUsername = {USER}\n"
        f"protocolPassword = {PASSWORD}\nprotocolAuthentication = {mechanism}\n"
    )
    process = tunnel(client_section(tls_smtp.port, pki, extra))
    send_plain(process.port("out"))
    assert [m.content for m in tls_smtp.messages] == [MESSAGE.encode()]
    assert tls_smtp.authenticated == [f"{mechanism.upper()} {USER}"]
    # protocolHost is the EHLO name; the credentials went inside TLS only.
    sent = tls_smtp.bytes_received()
    assert sent.startswith(b"EHLO relay.test\r\nSTARTTLS\r\nEHLO relay.test\r\nAUTH ")
    process.wait_for_log(r"TLS connected")


def test_client_mode_without_credentials_does_not_authenticate(
    tunnel: TunnelFactory, pki: PKIFiles, tls_smtp: SMTPServer
) -> None:
    """The server requires AUTH: without protocolUsername the mail is refused (so the
    test above fails if those options are ignored)."""
    process = tunnel(client_section(tls_smtp.port, pki))
    with pytest.raises(smtplib.SMTPSenderRefused, match="Authentication required"):
        send_plain(process.port("out"))
    assert tls_smtp.bytes_received().startswith(b"EHLO localhost\r\nSTARTTLS\r\nehlo ")


def test_client_mode_auth_rejected_end_to_end(
    tunnel: TunnelFactory, pki: PKIFiles, tls_smtp: SMTPServer
) -> None:
    extra = f"protocolUsername = {USER}\nprotocolPassword = wrong\n"
    process = tunnel(client_section(tls_smtp.port, pki, extra))
    says = b"EHLO me\r\nMAIL FROM:<a@example.org>\r\n"
    log = refused_by(process, "out", says, smtp.CLIENT_MODE_FAILURE)
    assert (
        "smtp: PLAIN authentication failed: '535 5.7.8 Authentication credentials invalid'" in log
    )
    assert "wrong" not in log
    assert b"MAIL" not in tls_smtp.bytes_received()


@pytest.mark.parametrize(
    ("server", "logged"),
    [
        (lambda pki: SMTPServer(), "smtp: the server does not offer STARTTLS"),
        (
            lambda pki: SMTPServer(tls_context=server_context(pki.server), refuse_starttls=True),
            "smtp: the server refused STARTTLS: "
            "'454 4.7.0 TLS not available due to temporary reason'",
        ),
        (
            lambda pki: ScriptedServer([b"HTTP/1.1 400 Bad Request\r\n"]),
            "smtp: the server's greeting is not a reply: 'HTTP/1.1 400 Bad Request'",
        ),
        (
            lambda pki: ScriptedServer([b"220 mx\r\n", b"250-mx\r\n250 STARTTLS\r\n"]),
            "smtp: the server closed the connection while waiting for the reply to STARTTLS",
        ),
    ],
    ids=["no-starttls", "454", "garbage-greeting", "closed-midway"],
)
def test_client_mode_failures_end_to_end(
    tunnel: TunnelFactory, pki: PKIFiles, server: Any, logged: str
) -> None:
    with server(pki) as backend:
        process = tunnel(client_section(backend.port, pki))
        says = b"EHLO me\r\nMAIL FROM:<leak@example.org>\r\n"
        assert logged in refused_by(process, "out", says, smtp.CLIENT_MODE_FAILURE)
        assert b"leak" not in backend.bytes_received()


def test_server_mode_with_smtplib(
    tunnel: TunnelFactory, pki: PKIFiles, plain_smtp: SMTPServer
) -> None:
    process = tunnel(server_section(plain_smtp.port, pki))
    with smtplib.SMTP("127.0.0.1", process.port("in"), timeout=10) as client:
        code, features = client.ehlo("laptop.test")
        assert (code, features) == (250, b"mx.test\nSTARTTLS")
        client.starttls(context=client_context(pki.ca))
        client.ehlo("laptop.test")
        assert client.has_extn("8bitmime"), "inside TLS the backend answers EHLO"
        client.sendmail("a@example.org", ["b@example.org"], MESSAGE)
    assert [m.content for m in plain_smtp.messages] == [MESSAGE.encode()]
    # The backend never heard the plaintext part: its first word is the EHLO from TLS.
    # (smtplib's spelling of MAIL FROM changed between Python versions: compare any case.)
    assert plain_smtp.bytes_received().lower().startswith(b"ehlo laptop.test\r\nmail from")
    process.wait_for_log(r"TLS accepted")


@pytest.mark.interop
def test_server_mode_with_swaks(
    tunnel: TunnelFactory, pki: PKIFiles, plain_smtp: SMTPServer
) -> None:
    process = tunnel(server_section(plain_smtp.port, pki))
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(process.port("in")), "--tls",
         "--to", "b@example.org", "--from", "a@example.org", "--helo", "swaks.test",
         "--timeout", "10"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  220 2.0.0 Ready to start TLS" in result.stdout
    assert "=== TLS started" in result.stdout
    assert len(plain_smtp.messages) == 1


@pytest.mark.interop
def test_server_mode_with_openssl_s_client(
    tunnel: TunnelFactory, pki: PKIFiles, plain_smtp: SMTPServer
) -> None:
    process = tunnel(server_section(plain_smtp.port, pki))
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{process.port('in')}",
         "-starttls", "smtp", "-CAfile", str(pki.ca), "-verify_return_error", "-quiet"],
        input="EHLO s-client.test\r\nQUIT\r\n", capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert "250-mx.test" in result.stdout, result.stdout + result.stderr
    assert "221" in result.stdout
    assert plain_smtp.bytes_received() == b"EHLO s-client.test\r\nQUIT\r\n"


def test_server_mode_refuses_mail_before_starttls_end_to_end(
    tunnel: TunnelFactory, pki: PKIFiles, plain_smtp: SMTPServer
) -> None:
    process = tunnel(server_section(plain_smtp.port, pki))
    with socket.create_connection(("127.0.0.1", process.port("in")), timeout=10) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 mx.test")
        sock.sendall(b"MAIL FROM:<a@example.org>\r\n")
        assert reader.readline() == b"530 5.7.0 Must issue a STARTTLS command first\r\n"
        sock.sendall(b"QUIT\r\n")
        assert reader.readline() == b"221 2.0.0 Bye\r\n"
    assert "smtp: the client quit before STARTTLS" in process.wait_for_log("Connection reset")
    assert plain_smtp.bytes_received() == b""


def test_server_mode_discards_plaintext_pipelined_after_starttls(
    tunnel: TunnelFactory, pki: PKIFiles, plain_smtp: SMTPServer
) -> None:
    """CVE-2011-0411 end to end: the injected MAIL never reaches the mail server."""
    process = tunnel(server_section(plain_smtp.port, pki))
    request = b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<evil@example.org>\r\n"
    plaintext, _inside = start_tls_by_hand(
        process.port("in"), pki.ca, request, 3, b"EHLO x\r\nQUIT\r\n"
    )
    assert plaintext[1] == b"250-mx.test\r\n"
    assert plaintext[3] == b"220 2.0.0 Ready to start TLS\r\n"
    log = process.wait_for_log("Connection closed")
    assert "byte(s) of plaintext the client sent after the request for TLS were discarded" in log
    assert plain_smtp.bytes_received() == b"EHLO x\r\nQUIT\r\n"


# -- interop: stunnel4 on the other side ---------------------------------------------------


@pytest.mark.interop
def test_stunnel4_client_mode_into_tlstunnel_server_mode(
    tunnel: TunnelFactory, pki: PKIFiles, plain_smtp: SMTPServer
) -> None:
    ours = tunnel(server_section(plain_smtp.port, pki), name="ours")
    theirs = tunnel(client_section(ours.port("in"), pki), program="stunnel4", name="stunnel4")
    send_plain(theirs.port("out"))
    assert [m.content for m in plain_smtp.messages] == [MESSAGE.encode()]
    ours.wait_for_log("TLS accepted")


@pytest.mark.interop
def test_tlstunnel_client_mode_into_stunnel4_server_mode(
    tunnel: TunnelFactory, pki: PKIFiles, plain_smtp: SMTPServer
) -> None:
    theirs = tunnel(server_section(plain_smtp.port, pki), program="stunnel4", name="stunnel4")
    ours = tunnel(client_section(theirs.port("in"), pki), name="ours")
    send_plain(ours.port("out"))
    assert [m.content for m in plain_smtp.messages] == [MESSAGE.encode()]
    ours.wait_for_log("TLS connected")


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (
            "protocolHost = relay.test:25\n",
            "protocolHost: service [out]: for protocol = smtp protocolHost is the EHLO name",
        ),
        (
            "protocolAuthentication = ntlm\nprotocolUsername = u\nprotocolPassword = p\n",
            "protocolAuthentication: service [out]: protocol = smtp authenticates with plain",
        ),
        (
            "protocolUsername = u\n",
            "protocolPassword: service [out]: protocolUsername and protocolPassword go together",
        ),
        (
            "protocolAuthentication = login\n",
            "protocolAuthentication: service [out]: protocolAuthentication needs "
            "protocolUsername and protocolPassword",
        ),
    ],
)
def test_configuration_problems(pki: PKIFiles, tmp_path: Path, lines: str, problem: str) -> None:
    config = tmp_path / "smtp.conf"
    config.write_text(client_section(25, pki, lines))
    result = run_tlstunnel("--check", str(config))
    assert result.returncode == 1
    assert problem in result.stderr


def test_server_mode_credentials_have_no_effect(pki: PKIFiles, tmp_path: Path) -> None:
    config = tmp_path / "smtp.conf"
    config.write_text(server_section(25, pki, "protocolUsername = u\nprotocolPassword = p\n"))
    result = run_tlstunnel("--check", str(config))
    assert result.returncode == 0, result.stderr
    assert (
        "protocolUsername has no effect: protocol = smtp authenticates only in client mode"
        in result.stderr
    )
