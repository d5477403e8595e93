"""``protocol = ldap`` (client mode StartTLS): the negotiator with no network, the BER
reader under hypothesis, then real slapd servers through a real tlstunnel, and
stunnel4 side by side with it.

slapd answers StartTLS without a certificate configured with protocolError (2),
"unsupported extended operation"; with ``security tls=1`` it refuses any plain
operation with confidentialityRequired (13), which is how the end-to-end tests know
the tunnel really ran TLS.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import TunnelFactory
from tests.interop.helpers import read_until_closed
from tests.protocols.db_servers import (
    LDAPServer,
    ScriptedServer,
    ldap_client_path,
    start_slapd,
    unused_port,
)
from tests.support.pki import PKIFiles
from tests.support.tunnel import run_tlstunnel
from tlstunnel.protocols import ber, ldap, negotiator_class
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

SETTINGS = ProtocolSettings(name="ldap", client_mode=True)


def negotiator() -> ldap.LDAPStartTLSClient:
    return ldap.LDAPStartTLSClient(SETTINGS, ConnectionFacts())


def step(events: list[Event]) -> Event:
    """The last event, checking the contract: Send/Note first, then one step."""
    assert events, "no events"
    *before, last = events
    assert all(isinstance(event, Send | Note) for event in before), events
    assert not isinstance(last, Send | Note), events
    return last


def answer(
    code: int = 0,
    diagnostic: bytes = b"",
    *,
    message_id: int = 1,
    name: bytes | None = None,
    tag: int = ldap.EXTENDED_RESPONSE,
) -> bytes:
    """An ExtendedResponse as a server writes it."""
    fields = (
        ber.encode(ber.ENUMERATED, bytes([code]))
        + ber.encode(ber.OCTET_STRING, b"")
        + ber.encode(ber.OCTET_STRING, diagnostic)
    )
    if name is not None:
        fields += ber.encode(ldap.RESPONSE_NAME, name)
    body = ber.encode(ber.INTEGER, bytes([message_id])) + ber.encode(tag, fields)
    return ber.encode(ber.SEQUENCE, body)


def up_to_response(n: ldap.LDAPStartTLSClient) -> list[Event]:
    """start → Connect; connected → request sent; return that call's events."""
    assert n.start() == [Connect()]
    events = n.connected(None)
    assert Send(Side.SERVER, ldap.START_TLS_REQUEST) in events
    assert step(events) == Receive(Side.SERVER)
    return events


def fail_reason(n: ldap.LDAPStartTLSClient, data: bytes) -> str:
    try:
        last = step(n.received(Side.SERVER, data))
    except NegotiationError as exc:
        return str(exc)
    assert isinstance(last, Failed), last
    return last.reason


# -- the negotiator, no network ------------------------------------------------------------


def test_only_client_mode_exists_as_in_stunnel() -> None:
    assert negotiator_class("ldap", True) is ldap.LDAPStartTLSClient
    assert negotiator_class("ldap", False) is None


def test_request_is_stunnels_bytes() -> None:
    # What stunnel 5.68 writes (RFC 4511: messageID 1, ExtendedRequest [APPLICATION 23],
    # requestName [0] "1.3.6.1.4.1.1466.20037"); checked against the binary below too.
    assert (
        bytes.fromhex("301d02010177188016312e332e362e312e342e312e313436362e3230303337")
        == ldap.START_TLS_REQUEST
    )


def test_success_starts_tls_then_done() -> None:
    n = negotiator()
    up_to_response(n)
    assert step(n.received(Side.SERVER, answer(0, name=ldap.STARTTLS_OID))) == StartTLS(Side.SERVER)
    assert n.tls_started(Side.SERVER) == [Done()]


def test_response_in_single_bytes() -> None:
    n = negotiator()
    up_to_response(n)
    data = answer(0)
    for byte in data[:-1]:
        assert step(n.received(Side.SERVER, bytes([byte]))) == Receive(Side.SERVER)
    assert step(n.received(Side.SERVER, data[-1:])) == StartTLS(Side.SERVER)


def test_long_form_length_is_read() -> None:
    n = negotiator()
    up_to_response(n)
    diagnostic = b"x" * 300  # lengths over 127 use the long form
    assert step(n.received(Side.SERVER, answer(0, diagnostic))) == StartTLS(Side.SERVER)


def test_plaintext_after_the_response_is_dropped() -> None:
    """CVE-2011-0411: what the server sends after its answer, before TLS, is injected."""
    n = negotiator()
    up_to_response(n)
    events = n.received(Side.SERVER, answer(0) + b"injected")
    assert step(events) == StartTLS(Side.SERVER)
    notes = [e.text for e in events if isinstance(e, Note)]
    assert any("8 byte(s) the server sent after its StartTLS response" in t for t in notes)
    assert n.tls_started(Side.SERVER) == [Done()]  # nothing is carried on


def test_refusal_quotes_code_and_diagnostic() -> None:
    n = negotiator()
    up_to_response(n)
    reason = fail_reason(n, answer(2, b"unsupported extended operation"))
    assert (
        reason == "the server refused StartTLS: protocolError (2): unsupported extended operation"
    )


def test_unknown_code_and_hostile_diagnostic() -> None:
    n = negotiator()
    up_to_response(n)
    reason = fail_reason(n, answer(99, b"bad\r\nLOG3 forged" + b"y" * 500))
    assert reason.startswith("the server refused StartTLS: resultCode (99): bad??LOG3 forged")
    assert "\n" not in reason and len(reason) < 300


def test_notice_of_disconnection() -> None:
    n = negotiator()
    up_to_response(n)
    reason = fail_reason(
        n, answer(52, b"shutting down", message_id=0, name=ldap.NOTICE_OF_DISCONNECTION_OID)
    )
    assert reason == "the server sent a notice of disconnection: unavailable (52): shutting down"


def test_wrong_message_id() -> None:
    n = negotiator()
    up_to_response(n)
    assert "answered message 7" in fail_reason(n, answer(0, message_id=7))


def test_wrong_operation() -> None:
    n = negotiator()
    up_to_response(n)
    reason = fail_reason(n, answer(0, tag=0x61))
    assert reason == "the server answered StartTLS with a BindResponse, not an ExtendedResponse"


def test_other_response_name() -> None:
    n = negotiator()
    up_to_response(n)
    assert "names another operation" in fail_reason(n, answer(0, name=b"1.2.3"))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"220 smtp.example.com ESMTP\r\n", "not an LDAP message"),
        (b"\x30\x80\x02\x01\x01", "indefinite length"),
        (b"\x30\x85\x01\x02\x03\x04\x05", "a length of 5 octets"),
        (b"\x30\xff", "reserved length"),
        (b"\x30\x03\x1f\x01\x00", "multi-octet tag"),
        (b"\x30\x84\x7f\xff\xff\xff", "the limit is 8192"),
        (b"\x30\x03\x02\x05\x01", "longer than its parent"),
        (b"\x30\x03\x02\x01\x01", "not an LDAP message"),  # no protocolOp
        (b"\x30\x05\x02\x01\x01\x78\x00", "lacks its LDAPResult"),
        (b"\x30\x0b\x02\x01\x01\x78\x06\x0a\x01\x00\x04\x00\x04", "cut short"),
        (b"\x30\x0a\x02\x00\x78\x06\x0a\x01\x00\x04\x00\x04\x00", "an integer of 0 octets"),
    ],
)
def test_garbage_is_refused(data: bytes, expected: str) -> None:
    n = negotiator()
    up_to_response(n)
    assert expected in fail_reason(n, data)


def test_server_closes_before_answering() -> None:
    n = negotiator()
    up_to_response(n)
    n.received(Side.SERVER, answer(0)[:5])
    assert fail_reason(n, b"") == ("the server closed the connection instead of answering StartTLS")


def test_connect_failure_is_passed_on() -> None:
    n = negotiator()
    n.start()
    assert n.connected("Connection refused") == [Failed("Connection refused")]


def test_calls_out_of_order_are_refused() -> None:
    n = negotiator()
    n.start()
    with pytest.raises(NegotiationError):
        n.received(Side.SERVER, b"x")
    with pytest.raises(NegotiationError):
        n.tls_started(Side.SERVER)


# -- the BER reader under hypothesis ------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=64), max_size=40))
def test_fuzz_response_chunks(chunks: list[bytes]) -> None:
    """Arbitrary bytes in arbitrary chunks: Receive, StartTLS or a failure -- never
    another exception, never more than the limit buffered."""
    n = negotiator()
    up_to_response(n)
    for chunk in chunks:
        try:
            last = step(n.received(Side.SERVER, chunk))
        except NegotiationError:
            return
        assert len(n._response) <= n.max_line + len(chunk)
        if not isinstance(last, Receive):
            assert isinstance(last, StartTLS | Failed)
            return


@settings(max_examples=300, deadline=None)
@given(
    code=st.integers(0, 127),
    diagnostic=st.binary(max_size=400),
    cut=st.integers(1, 40),
)
def test_fuzz_well_formed_answers(code: int, diagnostic: bytes, cut: int) -> None:
    """Every well-formed answer, cut anywhere: success starts TLS, the rest fail."""
    n = negotiator()
    up_to_response(n)
    data = answer(code, diagnostic)
    chunks = [data[start : start + cut] for start in range(0, len(data), cut)]
    for chunk in chunks[:-1]:
        assert step(n.received(Side.SERVER, chunk)) == Receive(Side.SERVER)
    if code == 0:
        assert step(n.received(Side.SERVER, chunks[-1])) == StartTLS(Side.SERVER)
    else:
        with pytest.raises(NegotiationError, match=rf"\({code}\)"):
            n.received(Side.SERVER, chunks[-1])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_ber_parse(data: bytes) -> None:
    try:
        element = ber.parse(data)
        if element.constructed:
            ber.children(element)
        ber.integer(element)
    except ber.BERError:
        pass


# -- real servers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slapd_tls(tmp_path_factory: pytest.TempPathFactory, pki: PKIFiles) -> Iterator[LDAPServer]:
    """slapd with a certificate and ``security tls=1``: plain operations are refused."""
    server = start_slapd(tmp_path_factory.mktemp("slapd-tls"), pki, tls=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slapd_plain(tmp_path_factory: pytest.TempPathFactory, pki: PKIFiles) -> Iterator[LDAPServer]:
    """slapd without any TLS configuration: StartTLS is refused."""
    server = start_slapd(tmp_path_factory.mktemp("slapd-plain"), pki, tls=False)
    yield server
    server.stop()


def ldap_section(pki: PKIFiles, port: int, extra: str = "") -> str:
    return (
        "[ldap]\n"
        "client = yes\n"
        "accept = 127.0.0.1:0\n"
        f"connect = 127.0.0.1:{port}\n"
        "protocol = ldap\n"
        f"CAfile = {pki.ca}\n"
        "verifyChain = yes\n"
        "checkHost = localhost\n" + extra
    )


def ldapsearch(port: int) -> subprocess.CompletedProcess[str]:
    """A root DSE search, plain, as an application behind the tunnel would do it."""
    return subprocess.run(
        [
            ldap_client_path("ldapsearch"),
            "-x",
            "-H",
            f"ldap://127.0.0.1:{port}",
            "-b",
            "",
            "-s",
            "base",
            "supportedExtension",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


def ldapwhoami(port: int, server: LDAPServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            ldap_client_path("ldapwhoami"),
            "-x",
            "-H",
            f"ldap://127.0.0.1:{port}",
            "-D",
            server.root_dn,
            "-w",
            server.root_password,
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )


@pytest.mark.interop
def test_slapd_refuses_plain_clients(slapd_tls: LDAPServer) -> None:
    """The control: without the tunnel, slapd (security tls=1) refuses the search."""
    result = ldapsearch(slapd_tls.port)
    assert result.returncode == 13, result
    assert "Confidentiality required" in result.stderr


@pytest.mark.interop
def test_ldapsearch_through_tunnel_runs_over_tls(
    tunnel: TunnelFactory, pki: PKIFiles, slapd_tls: LDAPServer
) -> None:
    established = r"TLS established tls_ssf=\d+ ssf=\d+"
    before = len(re.findall(established, slapd_tls.log()))
    process = tunnel(ldap_section(pki, slapd_tls.port), name="ldap")
    port = process.port("ldap")
    result = ldapsearch(port)
    assert result.returncode == 0, result.stderr + process.log()
    assert "supportedExtension: 1.3.6.1.4.1.1466.20037" in result.stdout
    whoami = ldapwhoami(port, slapd_tls)
    assert whoami.returncode == 0, whoami.stderr
    assert whoami.stdout.strip() == f"dn:{slapd_tls.root_dn}"
    log = slapd_tls.wait_for_log(established, count=before + 2)
    assert "EXT oid=1.3.6.1.4.1.1466.20037" in log
    tunnel_log = process.wait_for_log("Connection closed", count=2)
    assert "TLS connected" in tunnel_log


@pytest.mark.interop
def test_slapd_without_tls_is_a_clear_failure(
    tunnel: TunnelFactory, pki: PKIFiles, slapd_plain: LDAPServer
) -> None:
    process = tunnel(ldap_section(pki, slapd_plain.port), name="ldap-notls")
    result = ldapsearch(process.port("ldap"))
    assert result.returncode != 0
    assert "supportedExtension" not in result.stdout  # nothing was relayed
    log = process.wait_for_log("Connection reset")
    assert (
        "ldap: the server refused StartTLS: protocolError (2): unsupported extended operation"
        in log
    )
    # slapd saw the StartTLS request and nothing else: the client's search never left.
    slapd_log = slapd_plain.wait_for_log(r"closed")
    assert "SRCH" not in slapd_log


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"\x30\x80garbage", "ldap: the server's answer is not valid BER: an indefinite length"),
        (b"", "ldap: the server closed the connection instead of answering StartTLS"),
    ],
    ids=["garbage-ber", "server-closes"],
)
def test_broken_servers_end_to_end(
    tunnel: TunnelFactory, pki: PKIFiles, reply: bytes, expected: str
) -> None:
    server = ScriptedServer(reply)
    try:
        process = tunnel(ldap_section(pki, server.port), name="ldap-broken")
        port = process.port("ldap")
        # Closed (reset: the tunnel drops what it did not read), nothing relayed back.
        assert read_until_closed(port, b"client bytes that must never reach the server") == b""
        log = process.wait_for_log("Connection reset")
        assert expected in log
        assert server.done.wait(5)
        assert bytes(server.received) == ldap.START_TLS_REQUEST
    finally:
        server.close()


# -- stunnel4, side by side ---------------------------------------------------------------


@pytest.mark.interop
def test_stunnel4_sends_the_same_request(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    """stunnel has no ldap server mode, so there is no chain to build; instead check
    that stunnel4 and tlstunnel put the same bytes on the wire."""
    server = ScriptedServer(answer(2, b"no"))
    try:
        process = tunnel(ldap_section(pki, server.port), program="stunnel4", name="stunnel4")
        assert read_until_closed(process.port("ldap"), b"") == b""
        assert server.done.wait(5)
        assert bytes(server.received) == ldap.START_TLS_REQUEST
    finally:
        server.close()


@pytest.mark.interop
def test_stunnel4_and_tlstunnel_agree_on_slapd(
    tunnel: TunnelFactory, pki: PKIFiles, slapd_tls: LDAPServer
) -> None:
    for program in ("stunnel4", "tlstunnel"):
        process = tunnel(ldap_section(pki, slapd_tls.port), program=program, name=program)
        result = ldapsearch(process.port("ldap"))
        assert result.returncode == 0, (program, result.stderr, process.log())
        assert "supportedExtension: 1.3.6.1.4.1.1466.20037" in result.stdout


def test_config_refuses_server_mode(tmp_path: Path, pki: PKIFiles) -> None:
    config = tmp_path / "bad.conf"
    config.write_text(
        f"[ldap]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{unused_port()}\n"
        f"protocol = ldap\ncert = {pki.server}\n"
    )
    result = run_tlstunnel("--check", str(config))
    assert result.returncode == 1
    assert "protocol = ldap has no server mode" in result.stderr + result.stdout


# -- examples/ldap-starttls.conf, as users copy it -----------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ldap-starttls.conf"


@pytest.mark.interop
@pytest.mark.parametrize("program", ["tlstunnel", "stunnel4"])
def test_example_ldap_starttls_conf(
    tunnel: TunnelFactory, pki: PKIFiles, slapd_tls: LDAPServer, tmp_path: Path, program: str
) -> None:
    """Only ports and paths change; every other line is the file users copy."""
    text = EXAMPLE.read_text()
    for pattern, replacement in {
        r"^accept = .*$": "accept = 127.0.0.1:0",
        r"^connect = .*$": f"connect = 127.0.0.1:{slapd_tls.port}",
        r"^CAfile = .*$": f"CAfile = {pki.ca}",
        r"^checkHost = .*$": "checkHost = localhost",
        r"^pid = .*$": f"pid = {tmp_path / 'ldap.pid'}",
    }.items():
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count, f"the example no longer has a line matching {pattern}"
    process = tunnel(text, program=program, name=f"example-{program}")
    result = ldapsearch(process.port("ldap"))
    assert result.returncode == 0, result.stderr + process.log()
    assert "supportedExtension: 1.3.6.1.4.1.1466.20037" in result.stdout
