"""``examples/smtps.conf`` as a user runs it: SMTPS on the outside, plain SMTP inside.

The test reads the example file itself and changes only what cannot work on a test
machine: the ports (465 and 25 become loopback ports), the certificate and key paths
(the test PKI) and the pid file path.  Everything else, comments included, is the
file users copy.  The mail server behind it is a real SMTP server (aiosmtpd) that
records every message; the clients are Python's ``smtplib.SMTP_SSL`` (verifying the
tunnel's certificate) and a hand-typed SMTP dialogue through ``openssl s_client``.
Both messages must arrive byte for byte, with their exact envelopes.

The same file also runs under stunnel4 (marked ``interop``): it is real stunnel syntax.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from tests.conftest import TunnelFactory
from tests.support.pki import PKIFiles

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "smtps.conf"


# --- the mail server behind the tunnel -------------------------------------------------


@dataclass(frozen=True)
class Delivered:
    """One message as the mail server received it."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes


class RecordingHandler:
    """aiosmtpd handler: accept every message and keep it."""

    def __init__(self) -> None:
        self.messages: list[Delivered] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        del server, session
        self.messages.append(
            Delivered(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content))
        )
        return "250 OK"


class SMTPBackend:
    """A real SMTP server on 127.0.0.1 (aiosmtpd's protocol) in its own event loop thread."""

    def __init__(self) -> None:
        self.handler = RecordingHandler()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._server is None:
            raise RuntimeError("the SMTP server did not start")
        self.port: int = self._server.sockets[0].getsockname()[1]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            self._loop.create_server(lambda: SMTP(self.handler, hostname="mx.test"), "127.0.0.1", 0)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def mail_server() -> Iterator[SMTPBackend]:
    server = SMTPBackend()
    yield server
    server.close()


# --- the example, adapted to the test machine ------------------------------------------


def adapt_example(text: str, *, backend_port: int, pki: PKIFiles, pid_file: Path) -> str:
    """Rewrite the example's addresses and paths, and nothing else.

    Each rewrite must hit exactly one line, so a change to the example that this test
    does not understand fails loudly instead of testing something else.
    """
    rewrites = {
        r"^accept = 465$": "accept = 127.0.0.1:0",
        r"^connect = 25$": f"connect = 127.0.0.1:{backend_port}",
        r"^cert = /etc/stunnel/\S+$": f"cert = {pki.server_cert}",
        r"^key = /etc/stunnel/\S+$": f"key = {pki.server_key}",
        r"^pid = /run/\S+$": f"pid = {pid_file}",
    }
    for pattern, replacement in rewrites.items():
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count == 1, f"examples/smtps.conf: expected one line matching {pattern!r}"
    # start_tunnel adds "foreground = yes" and "syslog = no" only when the text does not
    # mention them at all (comments included); without them the tunnel would detach.
    for word in ("foreground", "syslog"):
        assert word not in text, f"examples/smtps.conf mentions {word!r}: see start_tunnel"
    return text


@pytest.fixture(
    params=["tlstunnel", pytest.param("stunnel4", marks=pytest.mark.interop)],
)
def program(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


# --- what the clients send -------------------------------------------------------------

SENDER = "alice@example.org"
RECIPIENTS = ["bob@example.net", "carol@example.com"]

# CRLF line ends, lines that start with a dot (SMTP escapes them on the wire) and
# enough lines to span many TLS records.
SMTPLIB_MESSAGE = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.net>, Carol <carol@example.com>\r\n"
    b"Subject: through the tunnel\r\n"
    b"\r\n"
    + b"".join(b"line %05d of the body, nothing special here\r\n" % n for n in range(3000))
    + b".a line that starts with a dot\r\n"
    + b"..and one with two\r\n"
    + b"the end\r\n"
)

DIALOGUE_BODY_LINES = [
    "From: Alice <alice@example.org>",
    "To: Bob <bob@example.net>",
    "Subject: typed by hand",
    "",
    "Hello Bob,",
    ".this line starts with a dot",
    "",
    "-- ",
    "Alice",
]


def smtp_dialogue() -> bytes:
    """A whole SMTP session as one stdin for ``s_client -crlf`` (LF becomes CRLF)."""
    stuffed = ["." + line if line.startswith(".") else line for line in DIALOGUE_BODY_LINES]
    lines = [
        "EHLO client.test",
        f"MAIL FROM:<{SENDER}>",
        f"RCPT TO:<{RECIPIENTS[0]}>",
        "DATA",
        *stuffed,
        ".",
        "QUIT",
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


def final_reply_codes(transcript: bytes) -> list[str]:
    """The code of each complete SMTP reply (``250-...`` continuation lines skipped)."""
    return [
        line[:3].decode("ascii")
        for line in transcript.split(b"\r\n")
        if len(line) >= 4 and line[3:4] == b" "
    ]


# --- the test --------------------------------------------------------------------------


def test_smtps_example_delivers_mail_byte_for_byte(
    tunnel: TunnelFactory,
    pki: PKIFiles,
    mail_server: SMTPBackend,
    tmp_path: Path,
    program: str,
) -> None:
    pid_file = tmp_path / "smtps.pid"
    config = adapt_example(
        EXAMPLE.read_text(encoding="utf-8"),
        backend_port=mail_server.port,
        pki=pki,
        pid_file=pid_file,
    )
    proc = tunnel(config, program=program, name=program)
    port = proc.port("smtps")
    assert pid_file.read_text(encoding="ascii").strip() == str(proc.process.pid)

    # 1. A mail client: smtplib over implicit TLS, checking the tunnel's certificate.
    context = ssl.create_default_context(cafile=str(pki.ca))
    with smtplib.SMTP_SSL("127.0.0.1", port, context=context, timeout=10) as client:
        code, banner = client.ehlo("client.test")
        assert code == 250
        assert banner.startswith(b"mx.test")
        refused = client.sendmail(SENDER, RECIPIENTS, SMTPLIB_MESSAGE)
        assert refused == {}

    # 2. The same by hand: a raw SMTP dialogue typed into openssl s_client.
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{port}",
            "-CAfile",
            str(pki.ca),
            "-verify_return_error",
            "-verify_ip",
            "127.0.0.1",
            "-quiet",
            "-nocommands",
            "-crlf",
        ],
        input=smtp_dialogue(),
        capture_output=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    transcript = result.stdout
    assert transcript.startswith(b"220 mx.test ")
    assert final_reply_codes(transcript) == ["220", "250", "250", "250", "354", "250", "221"]

    expected_typed = "".join(line + "\r\n" for line in DIALOGUE_BODY_LINES).encode("ascii")
    assert mail_server.handler.messages == [
        Delivered(SENDER, RECIPIENTS, SMTPLIB_MESSAGE),
        Delivered(SENDER, RECIPIENTS[:1], expected_typed),
    ]
    # smtplib closes its socket without reading our close_notify, so its connection may
    # end as a reset on our side: count endings, not clean closes.
    proc.wait_for_log(r"Connection (closed|reset): ", count=2)
