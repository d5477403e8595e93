"""OCSP, OCSPaia, OCSPflag, OCSPnonce, OCSPrequire and TIMEOUTocsp against real responders.

The responders are ``openssl ocsp`` processes on loopback (delegated signer, the CA
itself, a stranger, the peer's own key, an expired signer...), plus three misbehaving
ones: a replay of a recorded answer (no nonce), a responder that hangs, and a closed
port.  End-to-end tests run the tlstunnel process with real TLS peers (Python ssl,
``openssl s_client``/``s_server``) and check the log line and that nothing reached the
backend; the OCSPflag tests judge answers fetched from real responders directly.
"""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from tests.conftest import TunnelFactory
from tests.support.backends import EchoServer
from tests.support.tunnel import TunnelProcess
from tlstunnel.config import ConfigError, load_text
from tlstunnel.tls.ocsp import AnswerContext, Status, judge_response
from tlstunnel.tls.ocsp_http import ResponderURL, post_ocsp_request

from .revocation_peers import (
    HangingResponder,
    OpenSSLResponder,
    RecordingTLSServer,
    ReplayResponder,
    closed_port,
    plain_talk,
    talk,
)
from .revocation_pki import (
    Issued,
    RevocationPKI,
    index_line,
    issue,
    make_intermediate,
    make_revocation_pki,
    make_root,
)


@pytest.fixture(scope="module")
def rpki(tmp_path_factory: pytest.TempPathFactory) -> RevocationPKI:
    return make_revocation_pki(tmp_path_factory.mktemp("ocsp"))


def index_of(rpki: RevocationPKI, *extra: tuple[Issued, bool]) -> list[str]:
    return [
        index_line(rpki.server.cert),
        index_line(rpki.revoked_server.cert, revoked=True),
        index_line(rpki.client.cert),
        index_line(rpki.revoked_client.cert, revoked=True),
        *(index_line(issued.cert, revoked) for issued, revoked in extra),
    ]


def responder(rpki: RevocationPKI, signer: Path, *extra: str) -> OpenSSLResponder:
    return OpenSSLResponder(
        rpki.directory,
        rpki.intermediate.issued.cert_path,
        signer,
        index_of(rpki),
        extra=extra,
    )


@pytest.fixture(scope="module")
def delegated(rpki: RevocationPKI) -> Iterator[OpenSSLResponder]:
    with responder(rpki, rpki.responder.bundle_path) as running:
        yield running


# --- end to end: server mode ------------------------------------------------------------------


def server_tunnel(
    tunnel: TunnelFactory, rpki: RevocationPKI, backend_port: int, ocsp_lines: str
) -> TunnelProcess:
    return tunnel(
        f"[ocsp]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{backend_port}\n"
        f"cert = {rpki.server.bundle_path}\nCAfile = {rpki.ca_bundle}\nverifyChain = yes\n"
        f"{ocsp_lines}"
    )


def test_a_good_client_is_let_through(
    tunnel: TunnelFactory,
    rpki: RevocationPKI,
    delegated: OpenSSLResponder,
    echo_server: EchoServer,
) -> None:
    proc = server_tunnel(tunnel, rpki, echo_server.port, f"OCSP = {delegated.url}\n")
    assert talk(proc.port("ocsp"), rpki.client.bundle_path, rpki.ca_file) == b"hello\n"
    log = proc.wait_for_log(r"OCSP: Accepted \(good\)")
    assert f'OCSP: Connecting the configured responder "{delegated.url}"' in log
    assert "OCSP: Status: good" in log
    assert "OCSP: Certificate accepted" in log


def test_a_revoked_client_is_refused_before_the_backend_is_reached(
    tunnel: TunnelFactory,
    rpki: RevocationPKI,
    delegated: OpenSSLResponder,
    echo_server: EchoServer,
) -> None:
    proc = server_tunnel(tunnel, rpki, echo_server.port, f"OCSP = {delegated.url}\n")
    assert talk(proc.port("ocsp"), rpki.revoked_client.bundle_path, rpki.ca_file) == b""
    log = proc.wait_for_log(r"LOG4\[\d+\]: Service \[ocsp\]: peer 127\.0\.0\.1:\d+ refused: "
                            r"certificate at depth 0 revoked \(OCSP\)")  # fmt: skip
    assert "LOG3[0]: OCSP: Certificate revoked: 1: keyCompromise" in log
    assert "OCSP: Rejected (revoked)" in log
    assert "OCSP: Revoked at: " in log
    assert echo_server.accepted == 0


@pytest.mark.interop
def test_openssl_s_client_with_a_revoked_certificate_is_refused(
    tunnel: TunnelFactory,
    rpki: RevocationPKI,
    delegated: OpenSSLResponder,
    echo_server: EchoServer,
) -> None:
    proc = server_tunnel(tunnel, rpki, echo_server.port, f"OCSP = {delegated.url}\n")
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{proc.port('ocsp')}", "-quiet",
         "-cert", str(rpki.revoked_client.bundle_path), "-CAfile", str(rpki.ca_file),
         "-cert_chain", str(rpki.intermediate.issued.cert_path)],
        input=b"hello\n", capture_output=True, timeout=15, check=False,
    )  # fmt: skip
    assert b"hello" not in result.stdout
    proc.wait_for_log(r"OCSP: Rejected \(revoked\)")
    assert echo_server.accepted == 0


def test_an_unreachable_responder_refuses_by_default(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    proc = server_tunnel(tunnel, rpki, echo_server.port, f"OCSP = {url}\n")
    assert talk(proc.port("ocsp"), rpki.client.bundle_path, rpki.ca_file) == b""
    log = proc.wait_for_log(r"refused: no conclusive OCSP answer for the certificate at depth 0")
    assert f'OCSP: the responder "{url}" failed: Connection refused' in log
    assert "OCSP: Rejected (OCSPrequire = yes)" in log
    assert echo_server.accepted == 0


def test_ocsprequire_no_lets_the_peer_in_without_an_answer(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    proc = server_tunnel(tunnel, rpki, echo_server.port, f"OCSP = {url}\nOCSPrequire = no\n")
    assert talk(proc.port("ocsp"), rpki.client.bundle_path, rpki.ca_file) == b"hello\n"
    proc.wait_for_log(r"OCSP: Accepted \(OCSPrequire = no\)")


def test_timeoutocsp_bounds_a_hanging_responder(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    with HangingResponder() as hanging:
        proc = server_tunnel(
            tunnel, rpki, echo_server.port, f"OCSP = {hanging.url}\nTIMEOUTocsp = 1\n"
        )
        started = time.monotonic()
        assert talk(proc.port("ocsp"), rpki.client.bundle_path, rpki.ca_file) == b""
        elapsed = time.monotonic() - started
        log = proc.wait_for_log(r"OCSP: Rejected \(OCSPrequire = yes\)")
    assert f'responder "{hanging.url}" did not answer within TIMEOUTocsp = 1 s' in log
    assert 0.9 < elapsed < 3.5  # the default (5 s) would be too slow here
    assert echo_server.accepted == 0


def test_ocspaia_asks_the_responder_the_certificate_names(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    port = closed_port()
    url = f"http://127.0.0.1:{port}/"
    revoked = rpki.issue("aia-revoked.example", ocsp_url=url)
    good = rpki.issue("aia-good.example", ocsp_url=url)
    with OpenSSLResponder(
        rpki.directory,
        rpki.intermediate.issued.cert_path,
        rpki.responder.bundle_path,
        [index_line(revoked.cert, revoked=True), index_line(good.cert)],
        port=port,
    ):
        proc = server_tunnel(tunnel, rpki, echo_server.port, "OCSPaia = yes\n")
        assert talk(proc.port("ocsp"), good.bundle_path, rpki.ca_file) == b"hello\n"
        assert talk(proc.port("ocsp"), revoked.bundle_path, rpki.ca_file) == b""
        log = proc.wait_for_log(r"OCSP: Rejected \(revoked\)")
    assert f'OCSP: Connecting the AIA responder "{url}"' in log
    assert echo_server.accepted == 1  # the good certificate's connection only


def test_ocspnonce_refuses_a_replayed_answer(
    tunnel: TunnelFactory,
    rpki: RevocationPKI,
    delegated: OpenSSLResponder,
    echo_server: EchoServer,
) -> None:
    recorded = ask(delegated.url, rpki.client, rpki)  # a genuine answer, without a nonce
    with ReplayResponder(recorded) as replay:
        proc = server_tunnel(
            tunnel, rpki, echo_server.port, f"OCSP = {replay.url}\nOCSPnonce = yes\n"
        )
        assert talk(proc.port("ocsp"), rpki.client.bundle_path, rpki.ca_file) == b""
        log = proc.wait_for_log(r"OCSP: Rejected \(OCSPrequire = yes\)")
        request = ocsp.load_der_ocsp_request(replay.requests[0])
    assert "OCSP: Invalid or unsupported nonce" in log
    assert len(request.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce) == 16
    assert echo_server.accepted == 0


def test_without_ocspnonce_the_same_replay_is_accepted(
    tunnel: TunnelFactory,
    rpki: RevocationPKI,
    delegated: OpenSSLResponder,
    echo_server: EchoServer,
) -> None:
    recorded = ask(delegated.url, rpki.client, rpki)
    with ReplayResponder(recorded) as replay:
        proc = server_tunnel(tunnel, rpki, echo_server.port, f"OCSP = {replay.url}\n")
        assert talk(proc.port("ocsp"), rpki.client.bundle_path, rpki.ca_file) == b"hello\n"
        request = ocsp.load_der_ocsp_request(replay.requests[0])
    with pytest.raises(x509.ExtensionNotFound):
        request.extensions.get_extension_for_class(x509.OCSPNonce)
    proc.wait_for_log(r"OCSP: Accepted \(good\)")


def test_ocspnonce_with_a_responder_that_echoes_it(
    tunnel: TunnelFactory,
    rpki: RevocationPKI,
    delegated: OpenSSLResponder,
    echo_server: EchoServer,
) -> None:
    proc = server_tunnel(
        tunnel, rpki, echo_server.port, f"OCSP = {delegated.url}\nOCSPnonce = yes\n"
    )
    assert talk(proc.port("ocsp"), rpki.client.bundle_path, rpki.ca_file) == b"hello\n"
    proc.wait_for_log(r"OCSP: Accepted \(good\)")


def test_ocspflag_nodelegated_refuses_a_delegated_responder(
    tunnel: TunnelFactory,
    rpki: RevocationPKI,
    delegated: OpenSSLResponder,
    echo_server: EchoServer,
) -> None:
    proc = server_tunnel(
        tunnel, rpki, echo_server.port, f"OCSP = {delegated.url}\nOCSPflag = NODELEGATED\n"
    )
    assert talk(proc.port("ocsp"), rpki.client.bundle_path, rpki.ca_file) == b""
    log = proc.wait_for_log(r"OCSP: Rejected \(OCSPrequire = yes\)")
    assert "signed by a delegated responder and OCSPflag = NODELEGATED" in log
    assert echo_server.accepted == 0


def test_an_issuer_missing_from_cafile(
    tunnel: TunnelFactory,
    rpki: RevocationPKI,
    delegated: OpenSSLResponder,
    echo_server: EchoServer,
) -> None:
    """CAfile holds only the root; the intermediate comes from the peer.  Python 3.13
    hands over the verified chain; before it the issuer cannot be found."""
    proc = tunnel(
        f"[ocsp]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo_server.port}\n"
        f"cert = {rpki.server.bundle_path}\nCAfile = {rpki.ca_file}\nverifyChain = yes\n"
        f"OCSP = {delegated.url}\n"
    )
    answer = talk(proc.port("ocsp"), rpki.client.bundle_path, rpki.ca_file)
    if sys.version_info >= (3, 13):
        assert answer == b"hello\n"
        return
    assert answer == b""
    log = proc.wait_for_log(r"OCSP: Rejected \(OCSPrequire = yes\)")
    assert "is not in CAfile/CApath, so no OCSP request can be made" in log


# --- end to end: client mode ------------------------------------------------------------------


def client_tunnel(tunnel: TunnelFactory, rpki: RevocationPKI, port: int, url: str) -> TunnelProcess:
    return tunnel(
        f"[out]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{port}\n"
        f"verifyChain = yes\ncheckHost = localhost\nCAfile = {rpki.ca_bundle}\nOCSP = {url}\n"
    )


def server_context(cert: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert))
    return context


def test_client_mode_checks_the_server(
    tunnel: TunnelFactory, rpki: RevocationPKI, delegated: OpenSSLResponder
) -> None:
    with (
        RecordingTLSServer(server_context(rpki.server.bundle_path)) as good,
        RecordingTLSServer(server_context(rpki.revoked_server.bundle_path)) as revoked,
    ):
        good_tunnel = client_tunnel(tunnel, rpki, good.port, delegated.url)
        assert plain_talk(good_tunnel.port("out")) == b"secret\n"
        bad_tunnel = client_tunnel(tunnel, rpki, revoked.port, delegated.url)
        assert plain_talk(bad_tunnel.port("out")) == b""
        log = bad_tunnel.wait_for_log(r"Service \[out\]: peer 127\.0\.0\.1:\d+ refused: "
                                      r"certificate at depth 0 revoked \(OCSP\)")  # fmt: skip
        assert revoked.handshakes == 1
        assert bytes(revoked.received) == b""
    assert "OCSP: Rejected (revoked)" in log


@pytest.mark.interop
def test_client_mode_refuses_openssl_s_server_with_a_revoked_certificate(
    tunnel: TunnelFactory, rpki: RevocationPKI, delegated: OpenSSLResponder
) -> None:
    port = closed_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-quiet",
         "-cert", str(rpki.revoked_server.bundle_path),
         "-cert_chain", str(rpki.intermediate.issued.cert_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        proc = client_tunnel(tunnel, rpki, port, delegated.url)
        _wait_listening(port)
        assert plain_talk(proc.port("out")) == b""
        proc.wait_for_log(r"OCSP: Rejected \(revoked\)")
    finally:
        server.kill()
        out, _ = server.communicate(timeout=5)
    assert b"secret" not in out


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


# --- OCSPflag: answers from real responders, judged directly ------------------------------------


def ask(url: str, cert: Issued, rpki: RevocationPKI, nonce: bytes | None = None) -> bytes:
    """One answer about ``cert`` (issued by the intermediate), through our HTTP client."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        cert.cert, rpki.intermediate.cert, hashes.SHA1()
    )
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    der = builder.build().public_bytes(serialization.Encoding.DER)
    return asyncio.run(post_ocsp_request(ResponderURL.parse(url), der, 5))


def judge(
    rpki: RevocationPKI, answer: bytes, cert: Issued, *flags: str, nonce: bytes | None = None
) -> tuple[str, str]:
    ctx = AnswerContext(
        cert=cert.cert,
        issuer=rpki.intermediate.cert,
        chain=[cert.cert, rpki.intermediate.cert, rpki.root.cert],
        trusted=[rpki.root.cert, rpki.intermediate.cert],
        flags=frozenset(flags),
        nonce=nonce,
        now=datetime.datetime.now(datetime.UTC),
    )
    finding = judge_response(answer, ctx)
    return finding.status, "\n".join(text for _, text in finding.lines)


def test_a_delegated_and_a_ca_signed_answer_are_both_trusted(
    rpki: RevocationPKI, delegated: OpenSSLResponder
) -> None:
    assert judge(rpki, ask(delegated.url, rpki.client, rpki), rpki.client)[0] == Status.GOOD
    status, text = judge(rpki, ask(delegated.url, rpki.revoked_client, rpki), rpki.revoked_client)
    assert status == Status.REVOKED
    assert "OCSP: Certificate revoked: 1: keyCompromise" in text
    with responder(rpki, rpki.intermediate.issued.bundle_path) as by_ca:
        answer = ask(by_ca.url, rpki.client, rpki)
    assert judge(rpki, answer, rpki.client)[0] == Status.GOOD
    status, text = judge(rpki, answer, rpki.client, "NOCASIGN")
    assert status == Status.UNKNOWN
    assert "signed by the issuing CA and OCSPflag = NOCASIGN forbids it" in text


def test_nointern_ignores_the_certificates_inside_the_answer(
    rpki: RevocationPKI, delegated: OpenSSLResponder
) -> None:
    answer = ask(delegated.url, rpki.client, rpki)
    status, text = judge(rpki, answer, rpki.client, "NOINTERN")
    assert status == Status.UNKNOWN
    assert "signer certificate not found" in text


def test_a_stranger_signer_is_refused_unless_noverify(rpki: RevocationPKI, tmp_path: Path) -> None:
    other_root = make_root(tmp_path, "Stranger Root")
    stranger = issue(other_root, "Stranger Responder", stem="stranger", ocsp_signing=True)
    with responder(rpki, stranger.bundle_path) as rogue:
        answer = ask(rogue.url, rpki.revoked_client, rpki)
    status, text = judge(rpki, answer, rpki.revoked_client)
    assert status == Status.UNKNOWN
    assert "does not chain to CAfile/CApath" in text
    assert judge(rpki, answer, rpki.revoked_client, "NOVERIFY")[0] == Status.REVOKED


def test_a_peer_vouching_for_itself_needs_trustother(rpki: RevocationPKI) -> None:
    """The client's own key signs an answer about the client: not the CA, not delegated."""
    with responder(rpki, rpki.client.bundle_path) as itself:
        answer = ask(itself.url, rpki.client, rpki)
        about_server = ask(itself.url, rpki.server, rpki)
    status, text = judge(rpki, answer, rpki.client)
    assert status == Status.UNKNOWN
    assert "neither the issuing CA nor a responder it delegated" in text
    assert judge(rpki, answer, rpki.client, "TRUSTOTHER")[0] == Status.GOOD
    # NOCHECKS: any signer chaining to CAfile will do (the client's certificate does).
    assert judge(rpki, about_server, rpki.server)[0] == Status.UNKNOWN
    assert judge(rpki, about_server, rpki.server, "NOCHECKS")[0] == Status.GOOD


def test_nosigs_skips_the_signature(rpki: RevocationPKI) -> None:
    with responder(rpki, rpki.intermediate.issued.bundle_path, "-resp_no_certs") as by_ca:
        answer = bytearray(ask(by_ca.url, rpki.client, rpki))
    answer[-1] ^= 0x01  # the last byte of the signature (no certificates follow it)
    status, text = judge(rpki, bytes(answer), rpki.client)
    assert status == Status.UNKNOWN
    assert "signature does not verify" in text
    assert judge(rpki, bytes(answer), rpki.client, "NOSIGS")[0] == Status.GOOD


def test_notime_accepts_an_expired_signer(rpki: RevocationPKI) -> None:
    expired = issue(rpki.intermediate, "Expired Responder", stem="expired-responder",
                    ocsp_signing=True, expired=True)  # fmt: skip
    with responder(rpki, expired.bundle_path) as old:
        answer = ask(old.url, rpki.client, rpki)
    status, text = judge(rpki, answer, rpki.client)
    assert status == Status.UNKNOWN
    assert "outside its validity" in text
    assert judge(rpki, answer, rpki.client, "NOTIME")[0] == Status.GOOD


def test_nochain_does_not_use_the_answers_certificates_as_intermediates(
    rpki: RevocationPKI, tmp_path: Path
) -> None:
    """A signer under a second intermediate that only the answer carries (NOCHECKS, so
    that only the chain matters)."""
    second = make_intermediate(rpki.root, "Second Intermediate")
    signer = issue(second, "Second Responder", stem="second-responder", ocsp_signing=True)
    other = tmp_path / "second.crt"
    other.write_bytes(second.cert.public_bytes(serialization.Encoding.PEM))
    with responder(rpki, signer.bundle_path, "-rother", str(other)) as far:
        answer = ask(far.url, rpki.client, rpki)
    assert judge(rpki, answer, rpki.client, "NOCHECKS")[0] == Status.GOOD
    status, text = judge(rpki, answer, rpki.client, "NOCHECKS", "NOCHAIN")
    assert status == Status.UNKNOWN
    assert "does not chain to CAfile/CApath" in text


def test_the_nonce_must_come_back(rpki: RevocationPKI, delegated: OpenSSLResponder) -> None:
    nonce = b"0123456789abcdef"
    answer = ask(delegated.url, rpki.client, rpki, nonce=nonce)
    assert judge(rpki, answer, rpki.client, nonce=nonce)[0] == Status.GOOD
    status, text = judge(rpki, answer, rpki.client, nonce=b"another nonce...")
    assert status == Status.UNKNOWN
    assert "OCSP: Invalid or unsupported nonce" in text


def test_an_answer_for_another_certificate_is_unknown(
    rpki: RevocationPKI, delegated: OpenSSLResponder
) -> None:
    answer = ask(delegated.url, rpki.server, rpki)
    status, text = judge(rpki, answer, rpki.client)
    assert status == Status.UNKNOWN
    assert "no entry for this certificate" in text


def test_a_responder_that_does_not_know_the_certificate(
    rpki: RevocationPKI, delegated: OpenSSLResponder
) -> None:
    stranger = rpki.issue("not-in-the-index.example")
    status, text = judge(rpki, ask(delegated.url, stranger, rpki), stranger)
    assert status == Status.UNKNOWN
    assert "OCSP: Status: unknown" in text
    assert "OCSP: Unknown verification status" in text


# --- configuration ------------------------------------------------------------------------------


def load(
    rpki: RevocationPKI, tmp_path: Path, lines: str, verify: str = "verifyChain = yes\n"
) -> str:
    text = (
        f"[s]\naccept = 1\nconnect = 2\ncert = {rpki.server.bundle_path}\n"
        f"CAfile = {rpki.ca_file}\n{verify}{lines}"
    )
    try:
        result = load_text(text, "t.conf", str(tmp_path))
    except ConfigError as exc:
        return str(exc)
    return "\n".join(result.notices)


def test_ocsp_needs_verifychain(rpki: RevocationPKI, tmp_path: Path) -> None:
    message = load(rpki, tmp_path, "OCSP = http://127.0.0.1/\n", verify="verifyPeer = yes\n")
    assert 't.conf:7: OCSP: OCSP needs "verifyChain = yes"' in message


def test_https_responders_are_refused_with_stunnels_reason(
    rpki: RevocationPKI, tmp_path: Path
) -> None:
    message = load(rpki, tmp_path, "OCSP = https://ocsp.example/\n")
    assert "t.conf:7: OCSP: TLS is not supported for OCSP" in message


def test_ocspflags_without_meaning_here_are_refused(rpki: RevocationPKI, tmp_path: Path) -> None:
    message = load(
        rpki, tmp_path, "OCSP = http://127.0.0.1/\nOCSPflag = NOCERTS\nOCSPflag = RESPID_KEY\n"
    )
    assert "t.conf:8: OCSPflag: OCSPflag = NOCERTS is not supported: it only shapes" in message
    assert "t.conf:9: OCSPflag: OCSPflag = RESPID_KEY is not supported" in message
    assert "'BOGUS' is not an OCSP flag" in load(
        rpki, tmp_path, "OCSP = http://127.0.0.1/\nOCSPflag = BOGUS\n"
    )


def test_ocsp_companions_alone_are_reported(rpki: RevocationPKI, tmp_path: Path) -> None:
    notices = load(rpki, tmp_path, "OCSPnonce = yes\nTIMEOUTocsp = 3\n")
    assert "t.conf:7: OCSPnonce has no effect in service [s]: it needs OCSP = URL" in notices
    assert "t.conf:8: TIMEOUTocsp has no effect" in notices


def test_ocsp_without_cryptography_names_the_extra(
    rpki: RevocationPKI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.x509.ocsp", None)
    message = load(rpki, tmp_path, "OCSPaia = yes\n")
    assert "t.conf:7: OCSPaia: OCSP needs the cryptography package" in message
    assert "pip install 'tlstunnel[ocsp]'" in message
