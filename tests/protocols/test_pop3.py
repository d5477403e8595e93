"""``protocol = pop3``: the negotiator with no network (both modes, every failure),
hypothesis, then Dovecot through a real tlstunnel with poplib and openssl, and
stunnel4 on either side of tlstunnel."""

from __future__ import annotations

import poplib
import subprocess

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
    dovecot_fixture,
    refused_by,
    start_tls_by_hand,
)
from tests.support.clients import client_context
from tests.support.pki import PKIFiles
from tlstunnel.protocols import lines, pop3
from tlstunnel.protocols.base import Done, Failed, Side, StartTLS

GREETING = b"+OK Dovecot ready. <1896.697170952@mail.test>\r\n"
CAPA = b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nSTLS\r\nSASL PLAIN\r\n.\r\n"


def client_mode() -> Conversation:
    return Conversation.client_mode("pop3")


# -- client mode, no network -------------------------------------------------------------


def test_client_mode_asks_capa_then_stls_and_greets_the_client_after_tls() -> None:
    conversation = client_mode()
    conversation.server(GREETING)
    assert conversation.take(Side.SERVER) == b"CAPA\r\n"
    assert conversation.take(Side.CLIENT) == b""
    conversation.server(CAPA)
    assert conversation.take(Side.SERVER) == b"STLS\r\n"
    assert conversation.server(b"+OK Begin TLS negotiation now.\r\n") == StartTLS(Side.SERVER)
    assert conversation.tls() == Done()
    assert conversation.take(Side.CLIENT) == GREETING, "APOP timestamp intact"


def test_client_mode_tries_stls_on_a_server_without_capa() -> None:
    conversation = client_mode()
    conversation.server(GREETING)
    conversation.server(b"-ERR unknown command\r\n")
    assert conversation.take(Side.SERVER) == b"CAPA\r\nSTLS\r\n"


def test_client_mode_drops_plaintext_after_the_stls_answer() -> None:
    conversation = client_mode()
    conversation.server(GREETING + CAPA)
    assert conversation.server(b"+OK go\r\n+OK injected\r\n") == StartTLS(Side.SERVER)
    assert any("14 byte(s) of plaintext the server sent" in n for n in conversation.notes)
    assert conversation.tls() == Done()
    assert conversation.take(Side.CLIENT) == GREETING


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ([b"-ERR busy\r\n"], "the server refused the session: '-ERR busy'"),
        (
            [b"220 mail ESMTP\r\n"],
            "the server's greeting is neither +OK nor -ERR: '220 mail ESMTP'",
        ),
        (
            [GREETING, b"+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n"],
            "the server does not offer STLS (its CAPA list: 'SASL USER')",
        ),
        ([GREETING, CAPA, b"-ERR TLS busy\r\n"], "the server refused STLS: '-ERR TLS busy'"),
        ([GREETING, b"+OK\r\n" + b"X\r\n" * 101], "the CAPA list is longer than 100 lines"),
        ([GREETING, b"+OK\r\nSTLS\r\n"], "the server closed the connection while reading"),
        (
            [GREETING, CAPA, b""],
            "the server closed the connection while waiting for the reply to STLS",
        ),
        ([b"+OK " + b"x" * 9000], "a line longer than 8192 bytes"),
    ],
)
def test_client_mode_failures(script: list[bytes], reason: str) -> None:
    conversation = client_mode()
    for data in script:
        conversation.server(data)
        if isinstance(conversation.step, Failed):
            break
    if script[-1] == b"+OK\r\nSTLS\r\n":
        conversation.server(b"")
    assert conversation.reason.startswith(reason)
    assert conversation.take(Side.CLIENT) == pop3.CLIENT_MODE_FAILURE


# -- server mode, no network -------------------------------------------------------------


def server_mode() -> Conversation:
    return Conversation.server_mode("pop3", GREETING, passed_on=GREETING)


def test_server_mode_offers_stls_and_starts_tls() -> None:
    conversation = server_mode()
    conversation.client(b"CAPA\r\n")
    assert conversation.take(Side.CLIENT) == b"+OK Capability list follows\r\nSTLS\r\n.\r\n"
    assert conversation.client(b"stls\r\n") == StartTLS(Side.CLIENT)
    assert conversation.take(Side.CLIENT) == b"+OK Begin TLS negotiation\r\n"
    assert conversation.tls() == Done()
    assert conversation.take(Side.SERVER) == b""


def test_server_mode_refuses_credentials_before_tls() -> None:
    conversation = server_mode()
    conversation.client(b"USER alice\r\nPASS s3cret\r\n")
    assert conversation.take(Side.CLIENT) == b"-ERR Command not permitted before STLS\r\n" * 2
    assert conversation.take(Side.SERVER) == b""


def test_server_mode_drops_plaintext_pipelined_after_stls() -> None:
    conversation = server_mode()
    assert conversation.client(b"STLS\r\nUSER evil\r\n") == StartTLS(Side.CLIENT)
    assert any("11 byte(s) of plaintext the client sent" in n for n in conversation.notes)
    assert conversation.tls() == Done()


def test_server_mode_too_many_commands_never_logs_arguments() -> None:
    conversation = server_mode()
    conversation.client(b"PASS hunter2\r\n" * (lines.MAX_REFUSED + 1))
    assert conversation.reason == "the client sent 10 commands other than STLS (the last: 'PASS')"


def test_server_mode_quit_and_backend_refusal() -> None:
    conversation = server_mode()
    conversation.client(b"QUIT\r\n")
    assert conversation.reason == "the client quit before STLS"
    assert conversation.take(Side.CLIENT) == b"+OK Bye\r\n"
    refused = Conversation.begin("pop3", False)
    refused.connected()
    refused.server(b"-ERR [SYS/TEMP] maintenance\r\n")
    assert refused.reason == "the server refused the session: '-ERR [SYS/TEMP] maintenance'"
    assert refused.take(Side.CLIENT) == pop3.SERVER_MODE_FAILURE


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=30), st.booleans())
def test_arbitrary_bytes_never_break_the_negotiator(chunks: list[bytes], client: bool) -> None:
    fuzz("pop3", client, chunks)


line = st.sampled_from([GREETING, CAPA, b"+OK\r\n", b"-ERR\r\n", b".\r\n", b"STLS\r\n"])


@settings(max_examples=200, deadline=None)
@given(st.lists(line | st.binary(min_size=1, max_size=20), max_size=20), st.booleans())
def test_plausible_lines_never_break_the_negotiator(chunks: list[bytes], client: bool) -> None:
    fuzz("pop3", client, chunks)


# -- end to end: Dovecot, poplib, openssl ------------------------------------------------


dovecot = dovecot_fixture("dovecot")
dovecot_without_tls = dovecot_fixture("dovecot_without_tls", ssl=False)


def client_section(port: int, pki: PKIFiles) -> str:
    return mail_servers.client_section("pop3", port, pki)


def server_section(port: int, pki: PKIFiles) -> str:
    return mail_servers.server_section("pop3", port, pki)


def log_in(client: poplib.POP3) -> None:
    client.user(USER)
    client.pass_(PASSWORD)
    assert client.stat() == (0, 0)
    client.quit()


def test_client_mode_with_poplib(tunnel: TunnelFactory, pki: PKIFiles, dovecot: Dovecot) -> None:
    before = dovecot.tls_logins("pop3")
    process = tunnel(client_section(dovecot.pop3_port, pki))
    client = poplib.POP3("127.0.0.1", process.port("out"), timeout=10)
    assert client.getwelcome() == b"+OK Dovecot (Debian) ready."
    assert "STLS" not in client.capa(), "inside TLS Dovecot offers no STLS"
    log_in(client)
    dovecot.wait_for_log("pop3-login: Info: Login: user=<alice>")
    assert dovecot.tls_logins("pop3") == before + 1, "Dovecot saw the login over TLS"
    process.wait_for_log("TLS connected")


def test_server_mode_with_poplib(tunnel: TunnelFactory, pki: PKIFiles, dovecot: Dovecot) -> None:
    process = tunnel(server_section(dovecot.pop3_port, pki))
    client = poplib.POP3("127.0.0.1", process.port("in"), timeout=10)
    assert client.getwelcome() == b"+OK Dovecot (Debian) ready."
    assert client.capa() == {"STLS": []}
    with pytest.raises(poplib.error_proto, match="not permitted before STLS"):
        client.user(USER)
    client.stls(client_context(pki.ca))
    assert "SASL" in client.capa(), "inside TLS Dovecot answers CAPA"
    log_in(client)
    process.wait_for_log("TLS accepted")


@pytest.mark.interop
def test_server_mode_with_openssl_s_client(
    tunnel: TunnelFactory, pki: PKIFiles, dovecot: Dovecot
) -> None:
    process = tunnel(server_section(dovecot.pop3_port, pki))
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{process.port('in')}",
         "-starttls", "pop3", "-CAfile", str(pki.ca), "-verify_return_error", "-quiet"],
        input=f"USER {USER}\r\nPASS {PASSWORD}\r\nQUIT\r\n", capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert "+OK Logged in." in result.stdout, result.stdout + result.stderr


def test_server_mode_discards_plaintext_pipelined_after_stls(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    with ScriptedServer([b"+OK ready\r\n", b"+OK bye\r\n"]) as backend:
        process = tunnel(server_section(backend.port, pki))
        plaintext, inside = start_tls_by_hand(
            process.port("in"), pki.ca, b"STLS\r\nUSER evil\r\n", 1, b"QUIT\r\n"
        )
        assert plaintext == [b"+OK ready\r\n", b"+OK Begin TLS negotiation\r\n"]
        assert inside == b"+OK bye\r\n"
        log = process.wait_for_log("Connection closed")
        assert "pop3: 11 byte(s) of plaintext the client sent after the request for TLS" in log
        assert backend.bytes_received() == b"QUIT\r\n"


@pytest.mark.parametrize(
    ("script", "logged"),
    [
        (
            [b"* OK IMAP4rev1 ready\r\n"],
            "pop3: the server's greeting is neither +OK nor -ERR: '* OK IMAP4rev1 ready'",
        ),
        (
            [b"+OK hi\r\n", b"+OK\r\nSTLS\r\n.\r\n", b"-ERR [IN-USE] TLS not now\r\n"],
            "pop3: the server refused STLS: '-ERR [IN-USE] TLS not now'",
        ),
        (
            [b"+OK hi\r\n", b"+OK\r\nSTLS\r\n.\r\n"],
            "pop3: the server closed the connection while waiting for the reply to STLS",
        ),
    ],
    ids=["garbage-greeting", "stls-refused", "closed-midway"],
)
def test_client_mode_failures_end_to_end(
    tunnel: TunnelFactory, pki: PKIFiles, script: list[bytes], logged: str
) -> None:
    with ScriptedServer(script) as backend:
        process = tunnel(client_section(backend.port, pki))
        log = refused_by(process, "out", b"USER leak\r\n", pop3.CLIENT_MODE_FAILURE)
        assert logged in log
        assert b"leak" not in backend.bytes_received()


def test_client_mode_server_without_stls(
    tunnel: TunnelFactory, pki: PKIFiles, dovecot_without_tls: Dovecot
) -> None:
    process = tunnel(client_section(dovecot_without_tls.pop3_port, pki))
    log = refused_by(process, "out", b"USER leak\r\n", pop3.CLIENT_MODE_FAILURE)
    assert "pop3: the server does not offer STLS (its CAPA list: '" in log


# -- interop: stunnel4 on the other side ---------------------------------------------------


@pytest.mark.interop
def test_stunnel4_client_mode_into_tlstunnel_server_mode(
    tunnel: TunnelFactory, pki: PKIFiles, dovecot: Dovecot
) -> None:
    ours = tunnel(server_section(dovecot.pop3_port, pki), name="ours")
    theirs = tunnel(client_section(ours.port("in"), pki), program="stunnel4", name="stunnel4")
    client = poplib.POP3("127.0.0.1", theirs.port("out"), timeout=10)
    log_in(client)
    ours.wait_for_log("TLS accepted")


@pytest.mark.interop
def test_tlstunnel_client_mode_into_stunnel4_server_mode(
    tunnel: TunnelFactory, pki: PKIFiles, dovecot: Dovecot
) -> None:
    theirs = tunnel(server_section(dovecot.pop3_port, pki), program="stunnel4", name="stunnel4")
    ours = tunnel(client_section(theirs.port("in"), pki), name="ours")
    client = poplib.POP3("127.0.0.1", ours.port("out"), timeout=10)
    assert client.getwelcome().startswith(b"+OK Dovecot (Debian) ready.")
    log_in(client)
    ours.wait_for_log("TLS connected")
