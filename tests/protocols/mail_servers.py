"""Real mail and news servers for the STARTTLS tests, started on loopback ports.

* ``SMTPServer``: aiosmtpd on its own event loop thread, with or without STARTTLS
  (``tls_context``) and AUTH (``users``); it records every byte each connection
  sent (decrypted, after STARTTLS) and every message it accepted.
* ``Dovecot``: the Debian ``dovecot-imapd``/``dovecot-pop3d`` daemon, run in the
  foreground from a configuration written to a temporary directory (as root, its
  login processes drop to ``dovenull``), IMAP and POP3 on loopback ports, STARTTLS
  with the test certificate, one user ``alice``/``s3cret``.  Its log says ``TLS``
  on each login that came over TLS, which is how the tests know.
* ``NNTPServer``: a small NNTP server (RFC 3977 greeting and CAPABILITIES, RFC 4642
  STARTTLS with Python's ssl on the real socket, GROUP/ARTICLE/QUIT inside).  INN
  (Debian ``inn2``) was tried: its package fails to configure on a host whose name
  has no domain, and ``nnrpd`` run alone from a temporary directory answers ``400``
  without a running ``innd`` and its spool, so it is not practical in a test run.
* ``ScriptedServer``: a line server that answers each line with the next scripted
  reply, for the broken servers no real daemon imitates (garbage greetings, a close
  in mid-negotiation); it records what it received.

Each is a context manager that stops it (``close``), and ``dovecot_fixture`` makes
the module-scoped Dovecot fixture the IMAP and POP3 tests share.  At the end, what
the end-to-end tests of every mail protocol do from the other side of the tunnel:
the service sections (``client_section``/``server_section``), ``closed_after``,
``refused_by`` (a local client the tunnel turns away) and ``start_tls_by_hand`` (a
client pipelining plaintext behind its request for TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.clients import client_context
from tests.support.pki import PKIFiles
from tests.support.tunnel import TunnelProcess

USER = "alice"
PASSWORD = "s3cret"


def free_port() -> int:
    """A loopback port nobody listens on (for daemons that need a fixed one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_context(cert: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert))
    return context


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class _Stoppable:
    """``with Server(...) as server:`` stops the server (``close``) at the end."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class _ThreadedServer(_Stoppable):
    """A listening socket on 127.0.0.1 whose connections are each served by
    ``_serve`` in a thread of its own.  ``received`` holds what each connection sent
    (``_serve`` appends its record)."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._closing = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def bytes_received(self) -> bytes:
        return b"".join(bytes(record) for record in self.received)

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)


# -- SMTP: aiosmtpd ------------------------------------------------------------------------


class _RecordingSMTP(SMTP):
    """aiosmtpd's server, keeping what each connection sent."""

    def __init__(self, owner: SMTPServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._record = bytearray()
        owner.received.append(self._record)
        self._refuse_starttls = owner.refuse_starttls

    def data_received(self, data: bytes) -> None:
        self._record += data
        super().data_received(data)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._refuse_starttls:
            await self.push("454 4.7.0 TLS not available due to temporary reason")
            return
        await super().smtp_STARTTLS(arg)


class _Handler:
    def __init__(self, owner: SMTPServer) -> None:
        self.owner = owner

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.owner.messages.append(envelope)
        return "250 2.0.0 Message accepted"


class SMTPServer(_Stoppable):
    """aiosmtpd on 127.0.0.1 (its own loop in a thread).  ``tls_context`` offers
    STARTTLS; ``users`` enables AUTH PLAIN/LOGIN (inside TLS only);
    ``refuse_starttls`` advertises STARTTLS but answers it with 454."""

    def __init__(
        self,
        *,
        tls_context: ssl.SSLContext | None = None,
        users: dict[str, str] | None = None,
        refuse_starttls: bool = False,
        require_starttls: bool = False,
        auth_required: bool = False,
    ) -> None:
        self.received: list[bytearray] = []
        self.messages: list[Envelope] = []
        self.refuse_starttls = refuse_starttls
        self.authenticated: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        handler = _Handler(self)
        users = users or {}

        def authenticator(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and users.get(data.login.decode()) == data.password.decode()
            )
            if ok:
                self.authenticated.append(f"{mechanism} {data.login.decode()}")
            return AuthResult(success=ok, handled=False)

        def factory() -> SMTP:
            return _RecordingSMTP(
                self,
                handler,
                hostname="mx.test",
                tls_context=tls_context,
                require_starttls=require_starttls,
                authenticator=authenticator if users else None,
                auth_required=auth_required,
                loop=self._loop,
            )

        started = asyncio.run_coroutine_threadsafe(
            self._loop.create_server(factory, "127.0.0.1", 0), self._loop
        )
        self._server = started.result(10)
        self.port: int = self._server.sockets[0].getsockname()[1]

    def bytes_received(self) -> bytes:
        return b"".join(bytes(record) for record in self.received)

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


# -- IMAP and POP3: Dovecot ------------------------------------------------------------------


def dovecot_path() -> str:
    path = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None
    )
    if path is None:
        raise RuntimeError("dovecot is not installed (apt-get install dovecot-imapd dovecot-pop3d)")
    return path


DOVECOT_CONF = """\
protocols = imap pop3
instance_name = {name}
base_dir = {dir}/run
state_dir = {dir}/state
log_path = {dir}/dovecot.log
listen = 127.0.0.1
ssl = {ssl}
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={mail}/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


class Dovecot(_Stoppable):
    """A Dovecot instance in ``directory`` with IMAP on ``imap_port`` and POP3 on
    ``pop3_port``; ``ssl`` False: no STARTTLS offered at all."""

    def __init__(self, directory: Path, cert: Path, key: Path, *, ssl: bool = True) -> None:
        self.directory = directory
        self.imap_port = free_port()
        self.pop3_port = free_port()
        # Mail processes run as nobody, who cannot enter pytest's 0700 directories.
        self.mail = Path(tempfile.mkdtemp(prefix="tlstunnel-dovecot-mail-"))
        self.mail.chmod(0o777)
        config = directory / "dovecot.conf"
        config.write_text(
            DOVECOT_CONF.format(
                name=f"tlstunnel-test-{os.getpid()}-{directory.name}",
                dir=directory,
                mail=self.mail,
                ssl="yes" if ssl else "no",
                cert=cert,
                key=key,
                password=PASSWORD,
                imap=self.imap_port,
                pop3=self.pop3_port,
            )
        )
        self.log_path = directory / "dovecot.log"
        with open(directory / "stderr.log", "wb") as stderr:
            self.process = subprocess.Popen(
                [dovecot_path(), "-F", "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            wait_for_port(self.imap_port)
            wait_for_port(self.pop3_port)
        except OSError:
            self.close()
            raise RuntimeError(
                "dovecot did not start:\n" + (directory / "stderr.log").read_text()
            ) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tls_logins(self, service: str) -> int:
        """How many logins to ``service`` (imap, pop3) came over TLS."""
        return sum(
            1
            for row in self.log().splitlines()
            if f"{service}-login: Info: Login:" in row and "TLS" in row
        )

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the Dovecot log:\n{self.log()}")
            time.sleep(0.05)
        return self.log()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.mail, ignore_errors=True)


def dovecot_fixture(name: str, *, ssl: bool = True) -> Any:
    """The module-scoped fixture ``name``: one Dovecot (``ssl`` as in ``Dovecot``)
    for a test module, started on first use and stopped after its last test."""

    def fixture(pki: PKIFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dovecot]:
        directory = tmp_path_factory.mktemp(name.replace("_", "-"))
        with Dovecot(directory, pki.server_cert, pki.server_key, ssl=ssl) as server:
            yield server

    return pytest.fixture(scope="module", name=name)(fixture)


# -- NNTP: a small RFC 3977 / RFC 4642 server ------------------------------------------------

ARTICLE = (
    b"Path: news.test!not-for-mail\r\n"
    b"From: alice@example.org\r\n"
    b"Newsgroups: local.test\r\n"
    b"Subject: hello over TLS\r\n"
    b"Message-ID: <1@news.test>\r\n"
    b"\r\n"
    b"Body line.\r\n"
)


class NNTPServer(_ThreadedServer):
    """A news server with one group (``local.test``) holding one article.

    ``starttls`` "yes": offered and done; "refuse": offered, answered with 580;
    "absent": not in CAPABILITIES (and 502 if asked anyway).  ``capabilities``
    False: the server predates RFC 3977 (500 to CAPABILITIES).  It records what
    each connection sent and whether TLS was started on it."""

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        starttls: str = "yes",
        capabilities: bool = True,
        greeting: bytes = b"200 news.test NNTP service ready, posting allowed\r\n",
    ) -> None:
        self.context = context
        self.starttls = starttls
        self.capabilities = capabilities
        self.greeting = greeting
        self.tls_sessions = 0
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        record = bytearray()
        self.received.append(record)
        stream: socket.socket = conn
        conn.settimeout(10)
        try:
            stream.sendall(self.greeting)
            reader = stream.makefile("rb")
            while True:
                line = reader.readline(4096)
                if not line:
                    return
                record += line
                command = line.strip().split(b" ")[0].upper()
                tls = isinstance(stream, ssl.SSLSocket)
                if command == b"CAPABILITIES" and self.capabilities:
                    listed = b"VERSION 2\r\nREADER\r\n"
                    if self.starttls != "absent" and not tls:
                        listed += b"STARTTLS\r\n"
                    stream.sendall(b"101 Capability list:\r\n" + listed + b".\r\n")
                elif command == b"STARTTLS" and not tls and self.starttls == "yes":
                    stream.sendall(b"382 Continue with TLS negotiation\r\n")
                    # RFC 4642 2.2.2: nothing buffered before the handshake counts.
                    reader.close()
                    stream = self.context.wrap_socket(conn, server_side=True)
                    self.tls_sessions += 1
                    reader = stream.makefile("rb")
                elif command == b"STARTTLS" and self.starttls == "refuse":
                    stream.sendall(b"580 Can not initiate TLS negotiation\r\n")
                elif command == b"GROUP" and tls:
                    stream.sendall(b"211 1 1 1 local.test\r\n")
                elif command == b"ARTICLE" and tls:
                    stream.sendall(b"220 1 <1@news.test>\r\n" + ARTICLE + b".\r\n")
                elif command == b"QUIT":
                    stream.sendall(b"205 closing connection\r\n")
                    return
                elif command in (b"GROUP", b"ARTICLE"):
                    stream.sendall(b"483 Encryption required\r\n")
                elif command in (b"CAPABILITIES", b"STARTTLS") and not self.capabilities:
                    stream.sendall(b"500 Unknown command\r\n")
                else:
                    stream.sendall(b"502 Command unavailable\r\n")
        except (OSError, ssl.SSLError):
            return
        finally:
            with contextlib.suppress(OSError):
                stream.close()
            conn.close()


# -- broken servers ------------------------------------------------------------------------


class ScriptedServer(_ThreadedServer):
    """Sends ``replies[0]`` on connect, then the next reply after each line it
    receives; after the last reply it closes (``close_at_end``) or keeps reading.
    Records what each connection sent."""

    def __init__(self, replies: list[bytes], *, close_at_end: bool = True) -> None:
        self.replies = replies
        self.close_at_end = close_at_end
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        record = bytearray()
        self.received.append(record)
        conn.settimeout(10)
        with conn, contextlib.suppress(OSError):
            reader = conn.makefile("rb")
            for index, reply in enumerate(self.replies):
                if index:
                    line = reader.readline(8192)
                    if not line:
                        return
                    record += line
                conn.sendall(reply)
            if not self.close_at_end:
                while data := conn.recv(4096):
                    record += data


# -- the other side of the tunnel ----------------------------------------------------------


def client_section(
    protocol: str, port: int, pki: PKIFiles, extra: str = "", *, service: str = "out"
) -> str:
    """Service ``[out]``: plain ``protocol`` in, STARTTLS out to ``port``, the
    server's certificate verified."""
    return (
        f"[{service}]\nclient = yes\naccept = 127.0.0.1:0\n"
        f"connect = 127.0.0.1:{port}\nprotocol = {protocol}\n"
        f"CAfile = {pki.ca}\nverifyChain = yes\ncheckHost = localhost\n" + extra
    )


def server_section(protocol: str, port: int, pki: PKIFiles, extra: str = "") -> str:
    """Service ``[in]``: STARTTLS in, plain ``protocol`` out to ``port``."""
    return (
        "[in]\naccept = 127.0.0.1:0\n"
        f"connect = 127.0.0.1:{port}\nprotocol = {protocol}\ncert = {pki.server}\n" + extra
    )


def closed_after(sock: socket.socket) -> bytes:
    """Everything the tunnel sends until it closes."""
    sock.settimeout(10)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


def refused_by(process: TunnelProcess, service: str, says: bytes, notice: bytes) -> str:
    """A local client connects to ``service`` and ``says`` something; the tunnel must
    answer exactly ``notice`` and close.  Returns the log once the tunnel has
    reset the connection."""
    with socket.create_connection(("127.0.0.1", process.port(service)), timeout=10) as sock:
        sock.sendall(says)
        assert closed_after(sock) == notice
    return process.wait_for_log("Connection reset")


def start_tls_by_hand(
    port: int, ca: Path, request: bytes, answers: int, inside: bytes
) -> tuple[list[bytes], bytes]:
    """A client on ``port`` reads the greeting line, sends ``request`` (its request
    for TLS, and whatever it pipelines around it) in one packet, reads ``answers``
    lines, then starts TLS and sends ``inside``.  Returns the plaintext lines it read
    (the greeting first) and all it got inside TLS until the tunnel closed."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    reader = raw.makefile("rb")
    plaintext = [reader.readline()]
    raw.sendall(request)
    plaintext += [reader.readline() for _ in range(answers)]
    with client_context(ca).wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(inside)
        return plaintext, closed_after(tls)
