"""``protocol = pgsql`` (PostgreSQL's SSLRequest): both negotiators with no network,
hypothesis on the packet reader, then a real PostgreSQL behind real tlstunnel
processes with the real psql client, and chains with stunnel4 both ways.

Two servers run per module, copies of one initdb: ``pg_tls`` (ssl = on, the test
certificate) for client mode, ``pg_plain`` (ssl = off) behind server-mode tunnels.
``pg_stat_ssl`` says, on the server, whether the session it serves is TLS.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import TunnelFactory
from tests.interop.helpers import read_until_closed
from tests.protocols.db_servers import (
    PostgresServer,
    PostgresTemplate,
    ScriptedServer,
    psql,
    start_postgres,
)
from tests.support.clients import client_context
from tests.support.pki import PKIFiles
from tlstunnel.protocols import negotiator_class, pgsql
from tlstunnel.protocols.base import (
    Connect,
    ConnectionFacts,
    Done,
    Event,
    Failed,
    NegotiationError,
    Note,
    ProtocolSettings,
    Receive,
    Send,
    Side,
    StartTLS,
)

GSSENC_REQUEST = struct.pack("!II", 8, pgsql.GSSENC_REQUEST_CODE)
CANCEL_REQUEST = struct.pack("!IIII", 16, pgsql.CANCEL_REQUEST_CODE, 1234, 5678)
IS_TLS = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def startup_message(user: bytes = b"tester", database: bytes = b"postgres") -> bytes:
    body = struct.pack("!I", 3 << 16) + b"user\0" + user + b"\0database\0" + database + b"\0\0"
    return struct.pack("!I", len(body) + 4) + body


def server_mode() -> pgsql.PgsqlServer:
    return pgsql.PgsqlServer(ProtocolSettings("pgsql", client_mode=False), ConnectionFacts())


def client_mode() -> pgsql.PgsqlClient:
    return pgsql.PgsqlClient(ProtocolSettings("pgsql", client_mode=True), ConnectionFacts())


def step(events: list[Event]) -> Event:
    """The last event, checking the contract: Send/Note first, then one step."""
    assert events, "no events"
    *before, last = events
    assert all(isinstance(event, Send | Note) for event in before), events
    assert not isinstance(last, Send | Note), events
    return last


def sent(events: list[Event], side: Side) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Send) and e.side is side)


def failure(call: object, *args: object) -> str:
    try:
        last = step(call(*args))  # type: ignore[operator]
    except NegotiationError as exc:
        return str(exc)
    assert isinstance(last, Failed), last
    return last.reason


# -- server mode, no network --------------------------------------------------------------


def test_both_modes_exist_as_in_stunnel() -> None:
    assert negotiator_class("pgsql", False) is pgsql.PgsqlServer
    assert negotiator_class("pgsql", True) is pgsql.PgsqlClient


def test_server_mode_answers_s_then_accepts_tls_then_connects() -> None:
    n = server_mode()
    assert n.start() == [Receive(Side.CLIENT)]
    events = n.received(Side.CLIENT, pgsql.SSL_REQUEST)
    assert sent(events, Side.CLIENT) == b"S"
    assert step(events) == StartTLS(Side.CLIENT)
    assert n.tls_started(Side.CLIENT) == [Connect()]
    assert n.connected(None) == [Done()]


def test_server_mode_request_in_single_bytes() -> None:
    n = server_mode()
    n.start()
    for byte in pgsql.SSL_REQUEST[:-1]:
        assert n.received(Side.CLIENT, bytes([byte])) == [Receive(Side.CLIENT)]
    assert step(n.received(Side.CLIENT, pgsql.SSL_REQUEST[-1:])) == StartTLS(Side.CLIENT)


def test_server_mode_drops_plaintext_pipelined_after_sslrequest() -> None:
    """CVE-2021-23214: bytes after the SSLRequest, before TLS, were not encrypted."""
    n = server_mode()
    n.start()
    events = n.received(Side.CLIENT, pgsql.SSL_REQUEST + startup_message())
    assert step(events) == StartTLS(Side.CLIENT)
    notes = [e.text for e in events if isinstance(e, Note)]
    assert any("byte(s) the client sent after its SSLRequest were discarded" in t for t in notes)
    n.tls_started(Side.CLIENT)
    assert n.connected(None) == [Done()]  # nothing carried on to the server


def test_server_mode_refuses_gssenc_then_takes_sslrequest() -> None:
    """As a server without GSSAPI encryption: N, then the client tries SSL."""
    n = server_mode()
    n.start()
    events = n.received(Side.CLIENT, GSSENC_REQUEST)
    assert sent(events, Side.CLIENT) == b"N"
    assert step(events) == Receive(Side.CLIENT)
    events = n.received(Side.CLIENT, pgsql.SSL_REQUEST)
    assert sent(events, Side.CLIENT) == b"S"
    assert step(events) == StartTLS(Side.CLIENT)


def test_server_mode_both_requests_in_one_read() -> None:
    n = server_mode()
    n.start()
    events = n.received(Side.CLIENT, GSSENC_REQUEST + pgsql.SSL_REQUEST)
    assert sent(events, Side.CLIENT) == b"NS"
    assert step(events) == StartTLS(Side.CLIENT)


def test_server_mode_second_gssenc_is_refused() -> None:
    n = server_mode()
    n.start()
    n.received(Side.CLIENT, GSSENC_REQUEST)
    assert "a GSSENCRequest twice" in failure(n.received, Side.CLIENT, GSSENC_REQUEST)


def test_server_mode_plain_startup_gets_an_error_response() -> None:
    """Read whole, then answered as PostgreSQL refuses a connection: FATAL 28000."""
    n = server_mode()
    n.start()
    message = startup_message(user=b"alice")
    assert n.received(Side.CLIENT, message[:12]) == [Receive(Side.CLIENT)]
    events = n.received(Side.CLIENT, message[12:])
    last = step(events)
    assert isinstance(last, Failed)
    assert last.reason == "PostgreSQL client did not request TLS (user 'alice'), rejecting"
    reply = sent(events, Side.CLIENT)
    assert reply[:1] == b"E"
    assert struct.unpack("!I", reply[1:5])[0] == len(reply) - 1
    fields = dict((f[:1], f[1:]) for f in reply[5:-1].split(b"\0") if f)
    assert fields[b"S"] == b"FATAL" and fields[b"C"] == b"28000"
    assert b"only TLS" in fields[b"M"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (CANCEL_REQUEST, "the client did not request TLS (it sent a CancelRequest)"),
        (b"GET / HTTP/1.1\r\n\r\n", "it sent no PostgreSQL startup packet"),
        (struct.pack("!II", 20000, 3 << 16), "it sent no PostgreSQL startup packet"),
        (struct.pack("!II", 4, 3 << 16), "it sent no PostgreSQL startup packet"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc", "started TLS directly (sslnegotiation=direct)"),
    ],
    ids=["cancel", "http", "over-long", "too-short", "direct-tls"],
)
def test_server_mode_refuses_what_is_not_an_sslrequest(data: bytes, expected: str) -> None:
    n = server_mode()
    n.start()
    events = n.received(Side.CLIENT, data)
    assert sent(events, Side.CLIENT) == b""
    last = step(events)
    assert isinstance(last, Failed) and expected in last.reason


def test_server_mode_client_closes() -> None:
    n = server_mode()
    n.start()
    n.received(Side.CLIENT, pgsql.SSL_REQUEST[:3])
    assert failure(n.received, Side.CLIENT, b"") == (
        "the client closed the connection before its startup packet"
    )


def test_server_mode_connect_failure() -> None:
    n = server_mode()
    n.start()
    n.received(Side.CLIENT, pgsql.SSL_REQUEST)
    n.tls_started(Side.CLIENT)
    assert n.connected("Connection refused") == [Failed("Connection refused")]


# -- client mode, no network --------------------------------------------------------------


def to_server_answer(n: pgsql.PgsqlClient, first: bytes = b"") -> list[Event]:
    """Client's first packet in; connect; our SSLRequest out.  Returns the events."""
    assert n.start() == [Receive(Side.CLIENT)]
    assert n.received(Side.CLIENT, first or startup_message()) == [Connect()]
    events = n.connected(None)
    assert sent(events, Side.SERVER) == pgsql.SSL_REQUEST
    assert step(events) == Receive(Side.SERVER)
    return events


def test_client_mode_sends_sslrequest_and_relays_startup_inside_tls() -> None:
    n = client_mode()
    to_server_answer(n)
    assert n.received(Side.SERVER, b"S") == [StartTLS(Side.SERVER)]
    assert n.tls_started(Side.SERVER) == [Done(to_server=startup_message())]


def test_client_mode_answers_the_clients_own_requests_with_n() -> None:
    """libpq's default (sslmode=prefer) asks the tunnel for TLS first: N, go plain."""
    n = client_mode()
    n.start()
    events = n.received(Side.CLIENT, GSSENC_REQUEST + pgsql.SSL_REQUEST)
    assert sent(events, Side.CLIENT) == b"NN"
    assert step(events) == Receive(Side.CLIENT)
    assert n.received(Side.CLIENT, startup_message()) == [Connect()]
    n.connected(None)
    n.received(Side.SERVER, b"S")
    assert n.tls_started(Side.SERVER) == [Done(to_server=startup_message())]


def test_client_mode_second_sslrequest_is_refused() -> None:
    n = client_mode()
    n.start()
    n.received(Side.CLIENT, pgsql.SSL_REQUEST)
    assert "an SSLRequest twice" in failure(n.received, Side.CLIENT, pgsql.SSL_REQUEST)


def test_client_mode_server_says_n() -> None:
    n = client_mode()
    to_server_answer(n)
    assert failure(n.received, Side.SERVER, b"N") == (
        "the server does not accept TLS (it answered N)"
    )


def test_client_mode_drops_plaintext_after_s() -> None:
    """CVE-2021-23222: what the server sends after S, before TLS, is injected."""
    n = client_mode()
    to_server_answer(n)
    events = n.received(Side.SERVER, b"Sinjected")
    assert step(events) == StartTLS(Side.SERVER)
    assert any(
        isinstance(e, Note) and "8 byte(s) the server sent after its S" in e.text for e in events
    )
    assert n.tls_started(Side.SERVER) == [Done(to_server=startup_message())]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            b"Ecould not fork new process for connection: Resource unavailable\n\0",
            "an error: could not fork new process for connection: Resource unavailable",
        ),
        (
            b"E\0\0\0\x1dSFATAL\0C53300\0Mtoo many\0\0",
            "answered the SSLRequest with an error: too many",
        ),
        (b"HTTP/1.1 400 Bad Request\r\n", "with b'H', not S or N"),
        (b"", "the server closed the connection instead of answering the SSLRequest"),
    ],
    ids=["error-v2", "error-v3", "garbage", "closed"],
)
def test_client_mode_bad_answers(answer: bytes, expected: str) -> None:
    n = client_mode()
    to_server_answer(n)
    assert expected in failure(n.received, Side.SERVER, answer)


def test_client_mode_client_closes_first() -> None:
    n = client_mode()
    n.start()
    assert "closed the connection before its startup packet" in failure(
        n.received, Side.CLIENT, b""
    )


# -- hypothesis ----------------------------------------------------------------------------

chunks = st.lists(st.binary(min_size=1, max_size=64), max_size=40)


@settings(max_examples=300, deadline=None)
@given(chunks)
def test_fuzz_server_mode_client_bytes(data: list[bytes]) -> None:
    n = server_mode()
    n.start()
    for chunk in data:
        try:
            last = step(n.received(Side.CLIENT, chunk))
        except NegotiationError:
            return
        assert len(n._buffer) <= pgsql.MAX_STARTUP_PACKET + len(chunk)
        if not isinstance(last, Receive):
            assert isinstance(last, StartTLS | Failed)
            return


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=8, max_size=64), st.binary(min_size=1, max_size=64))
def test_fuzz_client_mode(first: bytes, answer: bytes) -> None:
    """Any first packet from the client, any answer from the server: only S starts
    TLS, and nothing raises but NegotiationError."""
    n = client_mode()
    n.start()
    try:
        last = step(n.received(Side.CLIENT, first))
    except NegotiationError:
        return
    assert len(n._buffer) <= len(first)
    if not isinstance(last, Connect):
        assert last == Receive(Side.CLIENT)  # it answered N to an encryption request
        return
    n.connected(None)
    last = step(n.received(Side.SERVER, answer))
    assert isinstance(last, StartTLS if answer[:1] == b"S" else Failed)


# -- real PostgreSQL -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_template() -> Iterator[PostgresTemplate]:
    template = PostgresTemplate()
    yield template
    template.remove()


@pytest.fixture(scope="module")
def pg_tls(pg_template: PostgresTemplate, pki: PKIFiles) -> Iterator[PostgresServer]:
    server = start_postgres(pg_template, pki, ssl=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pg_plain(pg_template: PostgresTemplate, pki: PKIFiles) -> Iterator[PostgresServer]:
    server = start_postgres(pg_template, pki, ssl=False)
    yield server
    server.stop()


def server_section(pki: PKIFiles, port: int, name: str = "pgsql") -> str:
    """TLS PostgreSQL clients in, plain PostgreSQL out to ``port``."""
    return (
        f"[{name}]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{port}\n"
        f"protocol = pgsql\ncert = {pki.server}\n"
    )


def client_section(pki: PKIFiles, port: int, name: str = "pgsql") -> str:
    """Plain PostgreSQL clients in, TLS to the server at ``port``, verified."""
    return (
        f"[{name}]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{port}\n"
        f"protocol = pgsql\nCAfile = {pki.ca}\nverifyChain = yes\ncheckHost = localhost\n"
    )


def connections(server: PostgresServer) -> int:
    """How many connections the server has received (log_connections = on)."""
    return len(re.findall(r"connection received:", server.log()))


@pytest.mark.interop
def test_server_mode_psql_verify_full(
    tunnel: TunnelFactory, pki: PKIFiles, pg_plain: PostgresServer
) -> None:
    """psql → TLS → tlstunnel → plain PostgreSQL (which has no TLS at all)."""
    process = tunnel(server_section(pki, pg_plain.port))
    result = psql(process.port("pgsql"), "\\conninfo", IS_TLS, ca=pki.ca, sslmode="verify-full")
    assert result.returncode == 0, result.stderr + process.log()
    assert "SSL connection (protocol: TLSv1.3" in result.stdout
    assert result.stdout.strip().endswith("f")  # the server's own session is plain
    assert "TLS accepted" in process.wait_for_log("Connection closed")


@pytest.mark.interop
def test_server_mode_refuses_sslmode_disable_with_a_postgres_error(
    tunnel: TunnelFactory, pki: PKIFiles, pg_plain: PostgresServer
) -> None:
    process = tunnel(server_section(pki, pg_plain.port))
    before = connections(pg_plain)
    result = psql(process.port("pgsql"), "SELECT 1", sslmode="disable")
    assert result.returncode == 2
    assert "FATAL:  this server accepts only TLS (SSL) connections" in result.stderr
    log = process.wait_for_log("Connection reset")
    assert "pgsql: PostgreSQL client did not request TLS (user 'tester'), rejecting" in log
    assert connections(pg_plain) == before  # nothing reached the server


@pytest.mark.interop
def test_server_mode_sslmode_allow_retries_with_tls(
    tunnel: TunnelFactory, pki: PKIFiles, pg_plain: PostgresServer
) -> None:
    """libpq's sslmode=allow tries plain first and retries with TLS after an
    ErrorResponse: stunnel's silent close would end it; ours lets it through."""
    process = tunnel(server_section(pki, pg_plain.port))
    result = psql(process.port("pgsql"), "\\conninfo", ca=pki.ca, sslmode="allow")
    assert result.returncode == 0, result.stderr + process.log()
    assert "SSL connection" in result.stdout


@pytest.mark.interop
def test_client_mode_psql_plain_gets_tls_to_the_server(
    tunnel: TunnelFactory, pki: PKIFiles, pg_tls: PostgresServer
) -> None:
    """psql (sslmode=disable) → tlstunnel → SSLRequest, TLS → PostgreSQL (ssl = on)."""
    process = tunnel(client_section(pki, pg_tls.port))
    result = psql(process.port("pgsql"), IS_TLS, sslmode="disable")
    assert result.returncode == 0, result.stderr + process.log()
    assert result.stdout.strip() == "t"
    assert "TLS connected" in process.wait_for_log("Connection closed")


@pytest.mark.interop
def test_client_mode_psql_default_sslmode_prefer(
    tunnel: TunnelFactory, pki: PKIFiles, pg_tls: PostgresServer
) -> None:
    """libpq asks the tunnel for TLS first: it is told N and goes on in plaintext to
    the tunnel, which still speaks TLS to the server."""
    process = tunnel(client_section(pki, pg_tls.port))
    result = psql(process.port("pgsql"), "\\conninfo", IS_TLS, sslmode="prefer")
    assert result.returncode == 0, result.stderr + process.log()
    assert "SSL connection" not in result.stdout  # psql ↔ tunnel is plain
    assert result.stdout.strip().endswith("t")  # tunnel ↔ server is TLS


@pytest.mark.interop
def test_client_mode_server_without_ssl_says_n(
    tunnel: TunnelFactory, pki: PKIFiles, pg_plain: PostgresServer
) -> None:
    process = tunnel(client_section(pki, pg_plain.port))
    authorized = sum(1 for _ in re.finditer("connection authorized", pg_plain.log()))
    result = psql(process.port("pgsql"), "SELECT 1", sslmode="disable")
    assert result.returncode == 2
    assert "server closed the connection unexpectedly" in result.stderr
    log = process.wait_for_log("Connection reset")
    assert "pgsql: the server does not accept TLS (it answered N)" in log
    # The startup message never went out in plaintext: no session was authorized.
    assert sum(1 for _ in re.finditer("connection authorized", pg_plain.log())) == authorized


@pytest.mark.interop
def test_server_mode_plaintext_pipelined_after_sslrequest_never_reaches_the_server(
    tunnel: TunnelFactory, pki: PKIFiles, pg_plain: PostgresServer
) -> None:
    """CVE-2021-23214 end to end: a StartupMessage written in the same packet as the
    SSLRequest is dropped; only what comes inside TLS is relayed (here: nothing)."""
    process = tunnel(server_section(pki, pg_plain.port))
    authorized = sum(1 for _ in re.finditer("connection authorized", pg_plain.log()))
    with socket.create_connection(("127.0.0.1", process.port("pgsql")), timeout=5) as raw:
        raw.sendall(pgsql.SSL_REQUEST + startup_message())
        assert raw.recv(1) == b"S"
        with client_context(pki.ca).wrap_socket(raw, server_hostname="localhost") as tls:
            log = process.wait_for_log("s_connect: connected")
            tls.unwrap()
    # Ours if it came in the SSLRequest's read, the driver's if it came later.
    assert re.search(r"pgsql: \d+ byte\(s\) .*discarded", log), log
    process.wait_for_log("Connection closed|Connection reset")
    assert sum(1 for _ in re.finditer("connection authorized", pg_plain.log())) == authorized


def test_client_mode_plaintext_after_s_is_dropped(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    """CVE-2021-23222 end to end: a server (or a man in the middle) that sends data
    after its S, before TLS: dropped with a note, and the handshake then fails."""
    server = ScriptedServer(b"S" + b"Z\0\0\0\x05I")  # a forged ReadyForQuery
    try:
        process = tunnel(client_section(pki, server.port))
        assert read_until_closed(process.port("pgsql"), startup_message()) == b""
        log = process.wait_for_log("Connection reset")
        assert re.search(r"pgsql: 6 byte\(s\) .*discarded", log), log
    finally:
        server.close()


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"", "pgsql: the server closed the connection instead of answering the SSLRequest"),
        (b"HTTP/1.1 400 Bad Request\r\n", "pgsql: the server answered the SSLRequest with b'H'"),
    ],
    ids=["server-closes", "garbage"],
)
def test_client_mode_broken_servers(
    tunnel: TunnelFactory, pki: PKIFiles, reply: bytes, expected: str
) -> None:
    server = ScriptedServer(reply)
    try:
        process = tunnel(client_section(pki, server.port))
        assert read_until_closed(process.port("pgsql"), startup_message()) == b""
        assert expected in process.wait_for_log("Connection reset")
        assert server.done.wait(5)
        assert bytes(server.received) == pgsql.SSL_REQUEST  # and no startup message
    finally:
        server.close()


# -- stunnel4 on the other end -------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("ours", ["client", "server"])
def test_chain_with_stunnel4(
    tunnel: TunnelFactory, pki: PKIFiles, pg_plain: PostgresServer, ours: str
) -> None:
    """psql → client-mode pgsql → SSLRequest + TLS → server-mode pgsql → PostgreSQL,
    with tlstunnel at one end and stunnel4 at the other."""
    server_program = "tlstunnel" if ours == "server" else "stunnel4"
    client_program = "stunnel4" if ours == "server" else "tlstunnel"
    server = tunnel(server_section(pki, pg_plain.port), program=server_program, name="srv")
    client = tunnel(client_section(pki, server.port("pgsql")), program=client_program, name="cli")
    result = psql(client.port("pgsql"), "SELECT current_user", sslmode="disable")
    assert result.returncode == 0, result.stderr + server.log() + client.log()
    assert result.stdout.strip() == "tester"
    ours_log = (server if ours == "server" else client).wait_for_log("Connection closed")
    assert ("TLS accepted" if ours == "server" else "TLS connected") in ours_log


# -- examples/pgsql.conf, as users copy it -------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pgsql.conf"


def adapt_example(text: str, *, pki: PKIFiles, front: int, out: int, pid: Path) -> str:
    """Only ports and paths change; every other line is the file users copy."""
    rewrites = {
        r"^accept = .*$": "accept = 127.0.0.1:0",
        r"^connect = 127\.0\.0\.1:5432$": f"connect = 127.0.0.1:{front}",
        r"^connect = db\.example\.com:5432$": f"connect = 127.0.0.1:{out}",
        r"^cert = .*$": f"cert = {pki.server_cert}",
        r"^key = .*$": f"key = {pki.server_key}",
        r"^CAfile = .*$": f"CAfile = {pki.ca}",
        r"^checkHost = .*$": "checkHost = localhost",
        r"^pid = .*$": f"pid = {pid}",
    }
    for pattern, replacement in rewrites.items():
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count, f"the example no longer has a line matching {pattern}"
    return text


@pytest.mark.interop
@pytest.mark.parametrize("program", ["tlstunnel", "stunnel4"])
def test_example_pgsql_conf(
    tunnel: TunnelFactory,
    pki: PKIFiles,
    pg_plain: PostgresServer,
    pg_tls: PostgresServer,
    program: str,
) -> None:
    config = adapt_example(
        EXAMPLE.read_text(),
        pki=pki,
        front=pg_plain.port,
        out=pg_tls.port,
        pid=pki.ca.parent / f"example-pgsql-{program}.pid",
    )
    process = tunnel(config, program=program, name=f"example-{program}")
    front = psql(process.port("pgsql-front"), "\\conninfo", ca=pki.ca, sslmode="verify-full")
    assert front.returncode == 0, front.stderr + process.log()
    assert "SSL connection" in front.stdout
    out = psql(process.port("pgsql-out"), IS_TLS, sslmode="disable")
    assert out.returncode == 0, out.stderr + process.log()
    assert out.stdout.strip() == "t"
