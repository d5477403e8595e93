"""OCSP stapling against real peers: our server staples, our client uses staples.

Server side: the tunnel's certificate names an OCSP responder in its AIA extension (an
``openssl ocsp`` process, or for answers valid only a few seconds a small signing
responder below); ``openssl s_client -status`` and ``curl --cert-status`` show what was
stapled.  Client side: ``openssl s_server -status_file`` staples an answer recorded from
``openssl ocsp`` while the tunnel's own ``OCSP`` URL points at a closed port, so only the
staple can let the connection through.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from tests.conftest import TunnelFactory
from tests.support.backends import EchoServer, RecordingServer
from tests.support.tunnel import TunnelProcess

from .revocation_peers import OpenSSLResponder, closed_port, fetch_ocsp_response
from .revocation_pki import Issued, RevocationPKI, index_line, make_revocation_pki

GOOD_LINE = r'OCSP stapling: "[^"]+" says good'


@pytest.fixture(scope="module")
def rpki(tmp_path_factory: pytest.TempPathFactory) -> RevocationPKI:
    return make_revocation_pki(tmp_path_factory.mktemp("stapling"))


@contextlib.contextmanager
def stapled_leaf(rpki: RevocationPKI, name: str, *, revoked: bool = False) -> Iterator[Issued]:
    """A certificate whose AIA names a running ``openssl ocsp`` that knows it."""
    port = closed_port()
    leaf = rpki.issue(name, ocsp_url=f"http://127.0.0.1:{port}/")
    with OpenSSLResponder(
        rpki.directory,
        rpki.intermediate.issued.cert_path,
        rpki.responder.bundle_path,
        [index_line(leaf.cert, revoked=revoked)],
        port=port,
    ):
        yield leaf


def server_tunnel(tunnel: TunnelFactory, cert: Path, backend: int) -> TunnelProcess:
    """A server-mode service with no OCSP option at all: stapling needs none."""
    return tunnel(f"[web]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{backend}\ncert = {cert}\n")


def s_client_status(port: int, rpki: RevocationPKI) -> str:
    """``openssl s_client -status``: what it printed about the stapled answer."""
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-status", "-CAfile",
         str(rpki.ca_bundle), "-verify_return_error"],
        input=b"", capture_output=True, timeout=15, check=False,
    )  # fmt: skip
    return result.stdout.decode("utf-8", "replace")


def echo_through(port: int, rpki: RevocationPKI, payload: bytes) -> bytes:
    """Send ``payload`` through the tunnel (TLS, verified) and read the echo."""
    context = ssl.create_default_context(cafile=str(rpki.ca_bundle))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=15) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(payload)
        return tls.recv(100)


# --- server side ------------------------------------------------------------------------------


@pytest.mark.interop
def test_the_server_staples_a_good_answer(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    with stapled_leaf(rpki, "good-staple.example") as leaf:
        proc = server_tunnel(tunnel, leaf.bundle_path, echo_server.port)
        proc.wait_for_log(GOOD_LINE)
        shown = s_client_status(proc.port("web"), rpki)
        assert echo_through(proc.port("web"), rpki, b"ping\n") == b"ping\n"
    assert "OCSP Response Status: successful" in shown
    assert "Cert Status: good" in shown
    serial = re.search(r"Serial Number: ([0-9A-F]+)", shown)
    assert serial is not None and int(serial.group(1), 16) == leaf.serial


@pytest.mark.interop
def test_the_server_staples_revoked_for_a_revoked_certificate(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    with stapled_leaf(rpki, "revoked-staple.example", revoked=True) as leaf:
        proc = server_tunnel(tunnel, leaf.bundle_path, echo_server.port)
        log = proc.wait_for_log(r"OCSP stapling: .* says revoked")
        shown = s_client_status(proc.port("web"), rpki)
    assert "Cert Status: revoked" in shown
    assert "Revocation Reason: keyCompromise" in shown
    assert re.search(r"LOG4\[ui\]: Service \[web\]: OCSP stapling: .* says revoked", log)


@pytest.mark.interop
def test_curl_cert_status_accepts_the_staple(tunnel: TunnelFactory, rpki: RevocationPKI) -> None:
    """curl --cert-status fails outright ("No OCSP response received") without one."""
    reply = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    backend = RecordingServer(reply, reply_first=True)
    try:
        with stapled_leaf(rpki, "curl-staple.example") as leaf:
            proc = server_tunnel(tunnel, leaf.bundle_path, backend.port)
            proc.wait_for_log(GOOD_LINE)
            result = subprocess.run(
                ["curl", "-sS", "--cert-status", "--cacert", str(rpki.ca_bundle),
                 f"https://localhost:{proc.port('web')}/"],
                capture_output=True, timeout=15, check=False,
            )  # fmt: skip
    finally:
        backend.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ok"


def test_an_unreachable_responder_does_not_stop_the_service(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/"
    leaf = rpki.issue("unreachable-staple.example", ocsp_url=url)
    proc = server_tunnel(tunnel, leaf.bundle_path, echo_server.port)
    proc.wait_for_log(r"OCSP stapling: no usable answer")
    shown = s_client_status(proc.port("web"), rpki)
    assert "OCSP response: no response sent" in shown
    assert echo_through(proc.port("web"), rpki, b"still here\n") == b"still here\n"
    time.sleep(1.2)  # the next try is a minute away: no second line meanwhile
    lines = [line for line in proc.log().splitlines() if "OCSP stapling:" in line]
    assert lines == [lines[0]]
    assert re.search(
        rf'LOG3\[ui\]: Service \[web\]: OCSP stapling: no usable answer from "{re.escape(url)}": '
        r"Connection refused; nothing to staple; next try in 60 s",
        lines[0],
    )


def test_a_certificate_without_a_responder_staples_nothing(
    tunnel: TunnelFactory, rpki: RevocationPKI, echo_server: EchoServer
) -> None:
    proc = tunnel(
        f"debug = debug\n[web]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo_server.port}\n"
        f"cert = {rpki.server.bundle_path}\n"
    )
    shown = s_client_status(proc.port("web"), rpki)
    assert "OCSP response: no response sent" in shown
    assert "OCSP" not in proc.log()


# A responder with answers valid for a few seconds (openssl ocsp's -nmin is a minute at
# least): the tunnel must come back for a new one, and see a status that changed.


class SigningResponder:
    """Signs a fresh answer for each request: ``status`` for every certificate asked
    about, valid for ``validity`` seconds, signed by the delegated responder."""

    def __init__(self, rpki: RevocationPKI, validity: float) -> None:
        self.rpki = rpki
        self.validity = validity
        self.revoked = False
        self.leaves: list[Issued] = []  # the certificates it answers for
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    conn.sendall(self._answer(self._request_body(conn)))

    @staticmethod
    def _request_body(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += conn.recv(65536)
        return body

    def _answer(self, body: bytes) -> bytes:
        request = ocsp.load_der_ocsp_request(body)
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        leaf = next(i.cert for i in self.leaves if i.cert.serial_number == request.serial_number)
        status = ocsp.OCSPCertStatus.REVOKED if self.revoked else ocsp.OCSPCertStatus.GOOD
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=leaf,
            issuer=self.rpki.intermediate.cert,
            algorithm=hashes.SHA1(),
            cert_status=status,
            this_update=now,
            next_update=now + datetime.timedelta(seconds=self.validity),
            revocation_time=now if self.revoked else None,
            revocation_reason=None,
        )
        responder = self.rpki.responder
        signed = (
            builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder.cert)
            .certificates([responder.cert])
            .sign(responder.key, hashes.SHA256())
            .public_bytes(Encoding.DER)
        )
        return (
            b"HTTP/1.0 200 OK\r\nContent-Type: application/ocsp-response\r\n"
            + f"Content-Length: {len(signed)}\r\n\r\n".encode()
            + signed
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def short_lived(rpki: RevocationPKI) -> Iterator[tuple[SigningResponder, Issued]]:
    responder = SigningResponder(rpki, validity=3)
    leaf = rpki.issue(f"short-{os.getpid()}-{time.monotonic_ns()}.example", ocsp_url=responder.url)
    responder.leaves = [leaf]
    yield responder, leaf
    responder.close()


@pytest.mark.interop
def test_the_refresh_picks_up_a_changed_status(
    tunnel: TunnelFactory,
    rpki: RevocationPKI,
    echo_server: EchoServer,
    short_lived: tuple[SigningResponder, Issued],
) -> None:
    responder, leaf = short_lived
    proc = server_tunnel(tunnel, leaf.bundle_path, echo_server.port)
    proc.wait_for_log(GOOD_LINE)
    assert "Cert Status: good" in s_client_status(proc.port("web"), rpki)
    responder.revoked = True  # the CA revokes it; the tunnel keeps running
    proc.wait_for_log(r"OCSP stapling: .* says revoked", timeout=4)
    assert "Cert Status: revoked" in s_client_status(proc.port("web"), rpki)


@pytest.mark.interop
def test_a_failed_refresh_keeps_the_last_answer_until_it_expires(
    tunnel: TunnelFactory,
    rpki: RevocationPKI,
    echo_server: EchoServer,
    short_lived: tuple[SigningResponder, Issued],
) -> None:
    responder, leaf = short_lived
    proc = server_tunnel(tunnel, leaf.bundle_path, echo_server.port)
    proc.wait_for_log(GOOD_LINE)
    responder.close()  # the responder goes away after one answer
    proc.wait_for_log(r"OCSP stapling: no usable answer .*still stapling the previous answer")
    assert "Cert Status: good" in s_client_status(proc.port("web"), rpki)
    proc.wait_for_log(r"OCSP stapling: no usable answer .*nothing to staple", timeout=5)
    assert "OCSP response: no response sent" in s_client_status(proc.port("web"), rpki)


# --- client side ------------------------------------------------------------------------------


class StaplingServer:
    """``openssl s_server -status_file``: staples ``answer``; ``-rev`` sends lines back
    reversed; what it printed is in ``output``."""

    def __init__(self, directory: Path, rpki: RevocationPKI, cert: Issued, answer: bytes) -> None:
        self.status_file = directory / f"staple-{time.monotonic_ns()}.der"
        self.status_file.write_bytes(answer)
        self.port = closed_port()
        self.process = subprocess.Popen(
            ["openssl", "s_server", "-accept", f"127.0.0.1:{self.port}", "-cert",
             str(cert.bundle_path), "-status_file", str(self.status_file), "-rev", "-naccept",
             "1"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert self.process.stdout is not None
        self.output = self.process.stdout.readline().decode()  # "Using default temp DH..."
        while "ACCEPT" not in self.output:
            line = self.process.stdout.readline().decode()
            if not line:
                raise AssertionError(f"openssl s_server did not start: {self.output}")
            self.output += line

    def close(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
        out, _ = self.process.communicate(timeout=5)
        return self.output + out.decode("utf-8", "replace")


def client_tunnel(tunnel: TunnelFactory, rpki: RevocationPKI, port: int) -> TunnelProcess:
    dead_responder = f"http://127.0.0.1:{closed_port()}/"  # only a staple can answer
    return tunnel(
        f"[out]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{port}\n"
        f"verifyChain = yes\nCAfile = {rpki.ca_bundle}\nOCSP = {dead_responder}\n"
    )


def plain_talk(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        try:
            sock.sendall(payload)
            return sock.recv(100)
        except OSError:
            return b""


@pytest.fixture(scope="module")
def recorded(rpki: RevocationPKI) -> dict[str, bytes]:
    """Answers from a real ``openssl ocsp`` for the good and the revoked server."""
    index = [index_line(rpki.server.cert), index_line(rpki.revoked_server.cert, revoked=True)]
    with OpenSSLResponder(
        rpki.directory, rpki.intermediate.issued.cert_path, rpki.responder.bundle_path, index
    ) as responder:
        return {
            "good": fetch_ocsp_response(responder.url, rpki.server.cert, rpki.intermediate.cert),
            "revoked": fetch_ocsp_response(
                responder.url, rpki.revoked_server.cert, rpki.intermediate.cert
            ),
        }


@pytest.mark.interop
def test_the_client_uses_a_stapled_good_answer(
    tunnel: TunnelFactory, rpki: RevocationPKI, recorded: dict[str, bytes], tmp_path: Path
) -> None:
    server = StaplingServer(tmp_path, rpki, rpki.server, recorded["good"])
    try:
        proc = client_tunnel(tunnel, rpki, server.port)
        answer = plain_talk(proc.port("out"), b"hello\n")
    finally:
        output = server.close()
    assert answer == b"olleh\n", output
    log = proc.wait_for_log(r"OCSP: Accepted \(good\)")
    assert "OCSP: OCSP stapling response received" in log
    assert "OCSP: Connecting" not in log  # the closed responder was never needed


@pytest.mark.interop
def test_the_client_refuses_a_stapled_revoked_answer(
    tunnel: TunnelFactory, rpki: RevocationPKI, recorded: dict[str, bytes], tmp_path: Path
) -> None:
    server = StaplingServer(tmp_path, rpki, rpki.revoked_server, recorded["revoked"])
    try:
        proc = client_tunnel(tunnel, rpki, server.port)
        answer = plain_talk(proc.port("out"), b"secret\n")
        log = proc.wait_for_log(r"OCSP: Rejected \(revoked\)")
    finally:
        output = server.close()
    assert answer == b""
    assert "OCSP: OCSP stapling response received" in log
    assert "OCSP: Certificate revoked" in log
    assert re.search(r"Service \[out\]: peer 127\.0\.0\.1:\d+ refused: certificate at depth 0 "
                     r"revoked \(OCSP\)", log)  # fmt: skip
    assert "terces" not in output and "secret" not in output  # nothing reached the server


@pytest.mark.interop
def test_without_a_staple_the_client_asks_the_responder(
    tunnel: TunnelFactory, rpki: RevocationPKI, tmp_path: Path
) -> None:
    """The same server without -status_file: the closed responder decides (refused)."""
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{(port := closed_port())}", "-cert",
         str(rpki.server.bundle_path), "-rev", "-naccept", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        while b"ACCEPT" not in server.stdout.readline():
            pass
        proc = client_tunnel(tunnel, rpki, port)
        assert plain_talk(proc.port("out"), b"hello\n") == b""
        log = proc.wait_for_log(r"OCSP: Rejected \(OCSPrequire = yes\)")
    finally:
        server.kill()
        server.communicate(timeout=5)
    assert "OCSP: No OCSP stapling response received" in log
    assert "OCSP: Connecting the configured responder" in log
