"""``protocol = imap``: the negotiator with no network (both modes, every failure),
hypothesis, then Dovecot through a real tlstunnel with imaplib and openssl, and
stunnel4 on either side of tlstunnel."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import TunnelFactory
from tests.protocols import mail_servers
from tests.protocols.mail_script import Conversation, fuzz
from tests.protocols.mail_servers import (
    PASSWORD,
    USER,
    Dovecot,
    ScriptedServer,
    SMTPServer,
    dovecot_fixture,
    refused_by,
    server_context,
    start_tls_by_hand,
)
from tests.support.clients import client_context
from tests.support.pki import PKIFiles
from tlstunnel.protocols import imap, lines
from tlstunnel.protocols.base import Done, Side, StartTLS

GREETING = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ STARTTLS LOGINDISABLED] Dovecot ready.\r\n"
BARE_GREETING = b"* OK IMAP server ready\r\n"
CAPABILITY = b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\nTT1 OK done\r\n"


def client_mode() -> Conversation:
    return Conversation.client_mode("imap")


# -- client mode, no network -------------------------------------------------------------


def test_client_mode_uses_the_greetings_capabilities() -> None:
    conversation = client_mode()
    conversation.server(GREETING)
    assert conversation.take(Side.SERVER) == b"TT2 STARTTLS\r\n"
    assert conversation.take(Side.CLIENT) == b""
    assert conversation.server(b"TT2 OK Begin TLS negotiation now.\r\n") == StartTLS(Side.SERVER)
    assert conversation.tls() == Done()
    # The pre-TLS capabilities are taken out of the greeting the client gets.
    assert conversation.take(Side.CLIENT) == b"* OK Dovecot ready.\r\n"


def test_client_mode_asks_capability_when_the_greeting_has_none() -> None:
    conversation = client_mode()
    conversation.server(BARE_GREETING)
    assert conversation.take(Side.SERVER) == b"TT1 CAPABILITY\r\n"
    conversation.server(b"* OK [ALERT] untagged chatter\r\n" + CAPABILITY)
    assert conversation.take(Side.SERVER) == b"TT2 STARTTLS\r\n"
    conversation.server(b"* OK more chatter\r\nTT2 OK go\r\n")
    assert conversation.tls() == Done()
    assert conversation.take(Side.CLIENT) == BARE_GREETING


def test_client_mode_drops_plaintext_after_the_starttls_answer() -> None:
    conversation = client_mode()
    conversation.server(GREETING)
    step = conversation.server(b"TT2 OK go\r\n* PREAUTH injected\r\n")
    assert step == StartTLS(Side.SERVER)
    assert any("20 byte(s) of plaintext the server sent" in n for n in conversation.notes)
    conversation.tls()
    assert conversation.take(Side.CLIENT) == b"* OK Dovecot ready.\r\n"


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        (
            [b"* PREAUTH [CAPABILITY IMAP4rev1] logged in as alice\r\n"],
            "the server's greeting is PREAUTH (already logged in: STARTTLS is not allowed)",
        ),
        ([b"* BYE too many connections\r\n"], "the server refused the session: '* BYE too many"),
        (
            [b"+OK POP3 ready\r\n"],
            "the server's greeting is not an IMAP greeting: '+OK POP3 ready'",
        ),
        (
            [b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"],
            "the server does not offer STARTTLS (its capabilities: 'IMAP4rev1 AUTH=PLAIN')",
        ),
        (
            [BARE_GREETING, b"* CAPABILITY IMAP4rev1\r\nTT1 OK done\r\n"],
            "the server does not offer STARTTLS (its capabilities: 'IMAP4rev1')",
        ),
        ([BARE_GREETING, b"TT1 BAD what\r\n"], "the server refused CAPABILITY: 'TT1 BAD what'"),
        ([GREETING, b"TT2 NO [UNAVAILABLE] TLS later\r\n"], "the server refused STARTTLS: 'TT2 NO"),
        ([GREETING, b"TT2 BAD Unknown command\r\n"], "the server refused STARTTLS: 'TT2 BAD"),
        (
            [GREETING, b"XX9 OK yes\r\n"],
            "the reply to STARTTLS is not an IMAP response: 'XX9 OK yes'",
        ),
        ([GREETING, b"* x\r\n" * 101], "the reply to STARTTLS is longer than 100 lines"),
        (
            [GREETING, b""],
            "the server closed the connection while waiting for the reply to STARTTLS",
        ),
        ([b"* OK " + b"x" * 9000], "a line longer than 8192 bytes"),
    ],
)
def test_client_mode_failures(script: list[bytes], reason: str) -> None:
    conversation = client_mode()
    for data in script:
        conversation.server(data)
    assert conversation.reason.startswith(reason)
    assert conversation.take(Side.CLIENT) == imap.CLIENT_MODE_FAILURE


# -- server mode, no network -------------------------------------------------------------


def server_mode() -> Conversation:
    return Conversation.server_mode("imap", GREETING, passed_on=b"* OK Dovecot ready.\r\n")


def test_server_mode_offers_starttls_and_starts_tls() -> None:
    conversation = server_mode()
    conversation.client(b"a1 CAPABILITY\r\na2 noop\r\n")
    assert conversation.take(Side.CLIENT) == (
        b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\na1 OK CAPABILITY completed\r\n"
        b"a2 OK NOOP completed\r\n"
    )
    assert conversation.client(b"a3 starttls\r\n") == StartTLS(Side.CLIENT)
    assert conversation.take(Side.CLIENT) == b"a3 OK Begin TLS negotiation now\r\n"
    assert conversation.tls() == Done()
    assert conversation.take(Side.SERVER) == b""


def test_server_mode_refuses_login_and_other_commands_before_tls() -> None:
    conversation = server_mode()
    conversation.client(b"a1 LOGIN alice s3cret\r\na2 SELECT INBOX\r\nnotag\r\n")
    assert conversation.take(Side.CLIENT) == (
        b"a1 NO [PRIVACYREQUIRED] Use STARTTLS first\r\n"
        b"a2 BAD Only STARTTLS is allowed before TLS\r\n"
        b"* BAD Missing tag or command\r\n"
    )
    assert conversation.take(Side.SERVER) == b""


def test_server_mode_drops_plaintext_pipelined_after_starttls() -> None:
    conversation = server_mode()
    step = conversation.client(b"a STARTTLS\r\nb LOGIN evil x\r\n")
    assert step == StartTLS(Side.CLIENT)
    assert any("16 byte(s) of plaintext the client sent" in n for n in conversation.notes)
    assert conversation.tls() == Done()


def test_server_mode_logout_and_too_many_commands() -> None:
    conversation = server_mode()
    conversation.client(b"z LOGOUT\r\n")
    assert conversation.reason == "the client logged out before STARTTLS"
    assert conversation.take(Side.CLIENT) == b"* BYE Logging out\r\nz OK LOGOUT completed\r\n"
    flood = server_mode()
    flood.client(b"a LOGIN alice hunter2\r\n" * (lines.MAX_REFUSED + 1))
    assert flood.reason == "the client sent 10 commands other than STARTTLS (the last: 'LOGIN')"


def test_server_mode_backend_preauth_is_refused() -> None:
    conversation = Conversation.begin("imap", False)
    conversation.connected()
    conversation.server(b"* PREAUTH welcome back\r\n")
    assert conversation.reason.startswith("the server's greeting is PREAUTH")
    assert conversation.take(Side.CLIENT) == imap.SERVER_MODE_FAILURE


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=30), st.booleans())
def test_arbitrary_bytes_never_break_the_negotiator(chunks: list[bytes], client: bool) -> None:
    fuzz("imap", client, chunks)


line = st.sampled_from(
    [GREETING, BARE_GREETING, CAPABILITY, b"TT2 OK\r\n", b"a STARTTLS\r\n", b"* OK\r\n"]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(line | st.binary(min_size=1, max_size=20), max_size=20), st.booleans())
def test_plausible_lines_never_break_the_negotiator(chunks: list[bytes], client: bool) -> None:
    fuzz("imap", client, chunks)


# -- end to end: Dovecot, imaplib, openssl -----------------------------------------------


dovecot = dovecot_fixture("dovecot")
dovecot_without_tls = dovecot_fixture("dovecot_without_tls", ssl=False)


def client_section(port: int, pki: PKIFiles) -> str:
    return mail_servers.client_section("imap", port, pki)


def server_section(port: int, pki: PKIFiles) -> str:
    return mail_servers.server_section("imap", port, pki)


def log_in(client: imaplib.IMAP4) -> None:
    assert client.login(USER, PASSWORD)[0] == "OK"
    assert client.select("INBOX")[0] == "OK"
    client.logout()


def test_client_mode_with_imaplib(tunnel: TunnelFactory, pki: PKIFiles, dovecot: Dovecot) -> None:
    before = dovecot.tls_logins("imap")
    process = tunnel(client_section(dovecot.imap_port, pki))
    client = imaplib.IMAP4("127.0.0.1", process.port("out"), timeout=10)
    assert client.welcome == b"* OK Dovecot (Debian) ready."
    # imaplib asked CAPABILITY itself, inside TLS: no STARTTLS there.
    assert "STARTTLS" not in client.capabilities
    assert "IMAP4REV1" in client.capabilities
    log_in(client)
    dovecot.wait_for_log("imap-login: Info: Login: user=<alice>")
    assert dovecot.tls_logins("imap") == before + 1, "Dovecot saw the login over TLS"
    process.wait_for_log("TLS connected")


def test_server_mode_with_imaplib(tunnel: TunnelFactory, pki: PKIFiles, dovecot: Dovecot) -> None:
    process = tunnel(server_section(dovecot.imap_port, pki))
    client = imaplib.IMAP4("127.0.0.1", process.port("in"), timeout=10)
    assert client.capabilities == ("IMAP4REV1", "STARTTLS", "LOGINDISABLED")
    client.starttls(client_context(pki.ca))
    assert "AUTH=PLAIN" in client.capabilities, "inside TLS Dovecot answers CAPABILITY"
    log_in(client)
    process.wait_for_log("TLS accepted")


@pytest.mark.interop
def test_server_mode_with_openssl_s_client(
    tunnel: TunnelFactory, pki: PKIFiles, dovecot: Dovecot
) -> None:
    process = tunnel(server_section(dovecot.imap_port, pki))
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{process.port('in')}",
         "-starttls", "imap", "-CAfile", str(pki.ca), "-verify_return_error", "-quiet"],
        input=f"a LOGIN {USER} {PASSWORD}\r\nb LOGOUT\r\n", capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert "a OK" in result.stdout and "Logged in" in result.stdout, result.stdout + result.stderr


def test_server_mode_discards_plaintext_pipelined_after_starttls(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    with ScriptedServer([b"* OK ready\r\n", b"* BYE\r\nz OK bye\r\n"]) as backend:
        process = tunnel(server_section(backend.port, pki))
        plaintext, inside = start_tls_by_hand(
            process.port("in"), pki.ca, b"a STARTTLS\r\nb LOGIN evil x\r\n", 1, b"z LOGOUT\r\n"
        )
        assert plaintext == [b"* OK ready\r\n", b"a OK Begin TLS negotiation now\r\n"]
        assert inside == b"* BYE\r\nz OK bye\r\n"
        log = process.wait_for_log("Connection closed")
        assert "imap: 16 byte(s) of plaintext the client sent after the request for TLS" in log
        assert backend.bytes_received() == b"z LOGOUT\r\n"


@pytest.mark.parametrize(
    ("script", "logged"),
    [
        (
            [b"HTTP/1.0 200 OK\r\n"],
            "imap: the server's greeting is not an IMAP greeting: 'HTTP/1.0 200 OK'",
        ),
        (
            [BARE_GREETING, CAPABILITY, b"TT2 NO [UNAVAILABLE] TLS not now\r\n"],
            "imap: the server refused STARTTLS: 'TT2 NO [UNAVAILABLE] TLS not now'",
        ),
        (
            [BARE_GREETING, CAPABILITY],
            "imap: the server closed the connection while waiting for the reply to STARTTLS",
        ),
        ([b"* PREAUTH hello alice\r\n"], "imap: the server's greeting is PREAUTH"),
    ],
    ids=["garbage-greeting", "starttls-refused", "closed-midway", "preauth"],
)
def test_client_mode_failures_end_to_end(
    tunnel: TunnelFactory, pki: PKIFiles, script: list[bytes], logged: str
) -> None:
    with ScriptedServer(script) as backend:
        process = tunnel(client_section(backend.port, pki))
        log = refused_by(process, "out", b"a LOGIN leak x\r\n", imap.CLIENT_MODE_FAILURE)
        assert logged in log
        assert b"leak" not in backend.bytes_received()


def test_client_mode_server_without_starttls(
    tunnel: TunnelFactory, pki: PKIFiles, dovecot_without_tls: Dovecot
) -> None:
    process = tunnel(client_section(dovecot_without_tls.imap_port, pki))
    log = refused_by(process, "out", b"a LOGIN leak x\r\n", imap.CLIENT_MODE_FAILURE)
    assert "imap: the server does not offer STARTTLS (its capabilities: 'IMAP4rev1 " in log


# -- interop: stunnel4 on the other side ---------------------------------------------------


@pytest.mark.interop
def test_stunnel4_client_mode_into_tlstunnel_server_mode(
    tunnel: TunnelFactory, pki: PKIFiles, dovecot: Dovecot
) -> None:
    ours = tunnel(server_section(dovecot.imap_port, pki), name="ours")
    theirs = tunnel(client_section(ours.port("in"), pki), program="stunnel4", name="stunnel4")
    client = imaplib.IMAP4("127.0.0.1", theirs.port("out"), timeout=10)
    log_in(client)
    ours.wait_for_log("TLS accepted")


@pytest.mark.interop
def test_tlstunnel_client_mode_into_stunnel4_server_mode(
    tunnel: TunnelFactory, pki: PKIFiles, dovecot: Dovecot
) -> None:
    theirs = tunnel(server_section(dovecot.imap_port, pki), program="stunnel4", name="stunnel4")
    ours = tunnel(client_section(theirs.port("in"), pki), name="ours")
    client = imaplib.IMAP4("127.0.0.1", ours.port("out"), timeout=10)
    log_in(client)
    ours.wait_for_log("TLS connected")


# -- examples/mail-starttls.conf ---------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mail-starttls.conf"


@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "program", ["tlstunnel", pytest.param("stunnel4", marks=pytest.mark.interop)]
)
def test_the_mail_example_runs_as_written(
    tunnel: TunnelFactory, pki: PKIFiles, dovecot: Dovecot, program: str
) -> None:
    """The example file with only its ports and paths changed: IMAP and POP3 in front
    of Dovecot, submission with AUTH PLAIN to a mail server that requires it."""
    with SMTPServer(
        tls_context=server_context(pki.server),
        users={"printer@example.org": "change-me"},
        require_starttls=True,
        auth_required=True,
    ) as smtp:
        text = EXAMPLE.read_text()
        for old, new in [
            ("accept = 143", "accept = 127.0.0.1:0"),
            ("accept = 110", "accept = 127.0.0.1:0"),
            ("accept = 127.0.0.1:2525", "accept = 127.0.0.1:0"),
            ("127.0.0.1:1143", f"127.0.0.1:{dovecot.imap_port}"),
            ("127.0.0.1:1110", f"127.0.0.1:{dovecot.pop3_port}"),
            ("smtp.example.net:587", f"127.0.0.1:{smtp.port}"),
            ("/etc/stunnel/mail.pem", str(pki.server)),
            ("/etc/ssl/certs/ca-certificates.crt", str(pki.ca)),
            ("checkHost = smtp.example.net", "checkHost = localhost"),
        ]:
            assert old in text, old
            text = text.replace(old, new)
        process = tunnel(text.replace("foreground = yes\npid =\n", ""), program=program)
        client = imaplib.IMAP4("127.0.0.1", process.port("imap"), timeout=10)
        client.starttls(client_context(pki.ca))
        log_in(client)
        mailbox = poplib.POP3("127.0.0.1", process.port("pop3"), timeout=10)
        mailbox.stls(client_context(pki.ca))
        mailbox.user(USER)
        mailbox.pass_(PASSWORD)
        mailbox.quit()
        if program == "stunnel4":
            # stunnel 5.68 says HELO, not EHLO, inside TLS and then AUTH, which RFC 4954
            # allows only after EHLO: aiosmtpd answers 500 and stunnel gives up.
            return
        with smtplib.SMTP("127.0.0.1", process.port("submission"), timeout=10) as sender:
            sender.sendmail("printer@example.org", ["b@example.org"], "Subject: hi\r\n\r\nx\r\n")
        assert smtp.authenticated == ["PLAIN printer@example.org"]
        assert b"EHLO printer.example.org\r\n" in smtp.bytes_received()
        assert len(smtp.messages) == 1
