"""``protocol = nntp`` (client mode only, as in stunnel): the negotiator with no
network, hypothesis, then a news server speaking RFC 4642 (``NNTPServer``: INN could
not be run from a test, see ``mail_servers``) through a real tlstunnel, checked
against openssl's own ``-starttls nntp`` and compared with stunnel4 in the same
place."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import TunnelFactory
from tests.protocols import mail_servers
from tests.protocols.mail_script import Conversation, fuzz
from tests.protocols.mail_servers import (
    ARTICLE,
    NNTPServer,
    ScriptedServer,
    refused_by,
    server_context,
)
from tests.support.pki import PKIFiles
from tests.support.tunnel import run_tlstunnel
from tlstunnel.protocols import negotiator_class, nntp
from tlstunnel.protocols.base import Done, Side, StartTLS

GREETING = b"200 news.test InterNetNews NNRP server ready (posting ok)\r\n"
CAPABILITIES = b"101 Capability list:\r\nVERSION 2\r\nREADER\r\nSTARTTLS\r\n.\r\n"


def client_mode() -> Conversation:
    return Conversation.client_mode("nntp")


# -- no network ----------------------------------------------------------------------------


def test_there_is_no_server_mode() -> None:
    assert negotiator_class("nntp", False) is None


def test_asks_capabilities_then_starttls_and_greets_the_client_after_tls() -> None:
    conversation = client_mode()
    conversation.server(GREETING)
    assert conversation.take(Side.SERVER) == b"CAPABILITIES\r\n"
    conversation.server(CAPABILITIES)
    assert conversation.take(Side.SERVER) == b"STARTTLS\r\n"
    assert conversation.take(Side.CLIENT) == b""
    assert conversation.server(b"382 Continue with TLS negotiation\r\n") == StartTLS(Side.SERVER)
    assert conversation.tls() == Done()
    assert conversation.take(Side.CLIENT) == GREETING


def test_a_no_posting_greeting_is_fine_and_old_servers_get_starttls_anyway() -> None:
    conversation = client_mode()
    conversation.server(b"201 news.test ready (no posting)\r\n")
    conversation.server(b"500 What?\r\n")
    assert conversation.take(Side.SERVER) == b"CAPABILITIES\r\nSTARTTLS\r\n"


def test_drops_plaintext_after_the_382() -> None:
    conversation = client_mode()
    conversation.server(GREETING + CAPABILITIES)
    assert conversation.server(b"382 go\r\n211 1 1 1 fake\r\n") == StartTLS(Side.SERVER)
    assert any("16 byte(s) of plaintext the server sent" in n for n in conversation.notes)
    conversation.tls()
    assert conversation.take(Side.CLIENT) == GREETING


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        (
            [b"400 Service temporarily unavailable\r\n"],
            "the server refused the session: '400 Service",
        ),
        ([b"502 Permission denied\r\n"], "the server refused the session: '502 Permission denied'"),
        ([b"* OK IMAP\r\n"], "the server's greeting is not a reply: '* OK IMAP'"),
        (
            [GREETING, b"101 list\r\nVERSION 2\r\nREADER\r\n.\r\n"],
            "the server does not offer STARTTLS (its capabilities: 'READER VERSION')",
        ),
        ([GREETING, b"480 auth first\r\n"], "the server refused CAPABILITIES: '480 auth first'"),
        (
            [GREETING, CAPABILITIES, b"580 Can not initiate TLS negotiation\r\n"],
            "the server refused STARTTLS: '580 Can not",
        ),
        (
            [GREETING, CAPABILITIES, b"502 Command unavailable\r\n"],
            "the server refused STARTTLS: '502",
        ),
        (
            [GREETING, CAPABILITIES, b""],
            "the server closed the connection while waiting for the reply to STARTTLS",
        ),
        ([GREETING, b"101 x\r\n" + b"A\r\n" * 101], "the capability list is longer than 100 lines"),
    ],
)
def test_failures(script: list[bytes], reason: str) -> None:
    conversation = client_mode()
    for data in script:
        conversation.server(data)
    assert conversation.reason.startswith(reason)
    assert conversation.take(Side.CLIENT) == nntp.CLIENT_MODE_FAILURE


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=300), max_size=30))
def test_arbitrary_bytes_never_break_the_negotiator(chunks: list[bytes]) -> None:
    fuzz("nntp", True, chunks)


line = st.sampled_from([GREETING, CAPABILITIES, b"382 go\r\n", b".\r\n", b"500 x\r\n"])


@settings(max_examples=200, deadline=None)
@given(st.lists(line | st.binary(min_size=1, max_size=20), max_size=20))
def test_plausible_lines_never_break_the_negotiator(chunks: list[bytes]) -> None:
    fuzz("nntp", True, chunks)


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture
def news(pki: PKIFiles) -> Iterator[NNTPServer]:
    with NNTPServer(server_context(pki.server)) as server:
        yield server


def client_section(port: int, pki: PKIFiles) -> str:
    return mail_servers.client_section("nntp", port, pki, service="news")


def read_article(port: int) -> bytes:
    """A plain NNTP reader: the article is only served inside TLS (483 outside)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        greeting = reader.readline()
        assert greeting.startswith(b"200 news.test"), greeting
        sock.sendall(b"GROUP local.test\r\nARTICLE 1\r\n")
        assert reader.readline() == b"211 1 1 1 local.test\r\n"
        assert reader.readline() == b"220 1 <1@news.test>\r\n"
        body = b""
        while (row := reader.readline()) != b".\r\n":
            body += row
        sock.sendall(b"QUIT\r\n")
        assert reader.readline() == b"205 closing connection\r\n"
        return body


def test_reads_news_through_tls(tunnel: TunnelFactory, pki: PKIFiles, news: NNTPServer) -> None:
    process = tunnel(client_section(news.port, pki))
    assert read_article(process.port("news")) == ARTICLE
    assert news.tls_sessions == 1
    assert bytes(news.received[0]).startswith(b"CAPABILITIES\r\nSTARTTLS\r\nGROUP local.test")
    process.wait_for_log("TLS connected")


def test_server_mode_is_refused_by_the_configuration(pki: PKIFiles, tmp_path: Path) -> None:
    config = tmp_path / "news.conf"
    config.write_text(
        f"[news]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:119\nprotocol = nntp\n"
        f"cert = {pki.server}\n"
    )
    result = run_tlstunnel("--check", str(config))
    assert result.returncode == 1
    assert (
        f"{config}:4: protocol: service [news]: protocol = nntp has no server mode "
        "(stunnel has only the client side of it)"
    ) in result.stderr


@pytest.mark.parametrize(
    ("server", "logged"),
    [
        (
            {"starttls": "refuse"},
            "nntp: the server refused STARTTLS: '580 Can not initiate TLS negotiation'",
        ),
        (
            {"starttls": "absent"},
            "nntp: the server does not offer STARTTLS (its capabilities: 'READER VERSION')",
        ),
        (
            {"greeting": b"400 news.test: load too high\r\n"},
            "nntp: the server refused the session: '400",
        ),
    ],
    ids=["refused", "absent", "busy"],
)
def test_failures_end_to_end(
    tunnel: TunnelFactory, pki: PKIFiles, server: dict[str, object], logged: str
) -> None:
    with NNTPServer(server_context(pki.server), **server) as news:  # type: ignore[arg-type]
        process = tunnel(client_section(news.port, pki))
        log = refused_by(process, "news", b"GROUP leak\r\n", nntp.CLIENT_MODE_FAILURE)
        assert logged in log
        assert all(b"leak" not in record for record in news.received)


@pytest.mark.parametrize(
    ("script", "logged"),
    [
        (
            [b"SSH-2.0-OpenSSH_9.2\r\n"],
            "nntp: the server's greeting is not a reply: 'SSH-2.0-OpenSSH_9.2'",
        ),
        (
            [GREETING, CAPABILITIES],
            "nntp: the server closed the connection while waiting for the reply to STARTTLS",
        ),
    ],
    ids=["garbage-greeting", "closed-midway"],
)
def test_broken_servers_end_to_end(
    tunnel: TunnelFactory, pki: PKIFiles, script: list[bytes], logged: str
) -> None:
    with ScriptedServer(script) as backend:
        process = tunnel(client_section(backend.port, pki))
        log = refused_by(process, "news", b"GROUP leak\r\n", nntp.CLIENT_MODE_FAILURE)
        assert logged in log
        assert b"leak" not in backend.bytes_received()


@pytest.mark.interop
def test_the_news_server_fixture_speaks_rfc_4642_to_openssl(
    pki: PKIFiles, news: NNTPServer
) -> None:
    """openssl's own NNTP STARTTLS client agrees with the fixture (so the fixture is
    not just shaped like our negotiator)."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{news.port}", "-starttls", "nntp",
         "-CAfile", str(pki.ca), "-verify_return_error", "-quiet"],
        input="GROUP local.test\r\nQUIT\r\n", capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert "211 1 1 1 local.test" in result.stdout, result.stdout + result.stderr
    assert news.tls_sessions == 1


@pytest.mark.interop
def test_stunnel4_and_tlstunnel_side_by_side(
    tunnel: TunnelFactory, pki: PKIFiles, news: NNTPServer
) -> None:
    """stunnel has only the client side of NNTP: both tunnels stand in the same place
    before the same server and the same reader gets the same article."""
    theirs = tunnel(client_section(news.port, pki), program="stunnel4", name="stunnel4")
    ours = tunnel(client_section(news.port, pki), name="ours")
    assert read_article(theirs.port("news")) == read_article(ours.port("news")) == ARTICLE
    assert news.tls_sessions == 2
    # stunnel sends STARTTLS blind; we ask CAPABILITIES first (RFC 4642 2.1).
    assert sorted(bytes(r).split(b"\r\n")[0] for r in news.received) == [
        b"CAPABILITIES",
        b"STARTTLS",
    ]
