"""Drive two TLS endpoints against each other: in memory, or over loopback sockets.

``handshake`` connects two ``SSLObject``s through ``MemoryBIO`` pairs (fast, no
network), then sends one message each way so that TLS 1.3 alerts which arrive after
the client's handshake (a refused client certificate) surface too.  ``serve_once``
runs a server on 127.0.0.1 in a thread for tests that need a real socket.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tlstunnel.tls import ServiceTLS


@dataclass
class Outcome:
    """How a handshake between two endpoints ended."""

    server: ssl.SSLObject
    client: ssl.SSLObject
    server_error: ssl.SSLError | None = None
    client_error: ssl.SSLError | None = None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None

    def error(self) -> ssl.SSLError:
        """The first error (the server's when both failed)."""
        err = self.server_error or self.client_error
        assert err is not None, "the handshake succeeded"
        return err


def _context(side: ServiceTLS | ssl.SSLContext) -> ssl.SSLContext:
    return side.context if isinstance(side, ServiceTLS) else side


def handshake(
    server: ServiceTLS | ssl.SSLContext,
    client: ServiceTLS | ssl.SSLContext,
    server_hostname: str | None = None,
) -> Outcome:
    """Handshake ``client`` with ``server`` in memory, then exchange one message."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    outcome = Outcome(
        server=_context(server).wrap_bio(s_in, s_out, server_side=True),
        client=_context(client).wrap_bio(c_in, c_out, server_hostname=server_hostname),
    )
    done = {"server": False, "client": False}

    def step(name: str, action: Callable[[], object]) -> None:
        try:
            action()
            done[name] = True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            if name == "server":
                outcome.server_error = outcome.server_error or exc
            else:
                outcome.client_error = outcome.client_error or exc

    def pump() -> bool:
        moved = False
        for src, dst in ((c_out, s_in), (s_out, c_in)):
            data = src.read()
            if data:
                dst.write(data)
                moved = True
        return moved

    for _ in range(50):
        if not done["client"] and outcome.client_error is None:
            step("client", outcome.client.do_handshake)
        if not done["server"] and outcome.server_error is None:
            step("server", outcome.server.do_handshake)
        if not pump() and (all(done.values()) or not outcome.ok):
            break
    if not done["client"] or outcome.client_error is not None:
        return outcome
    # One message each way.  A TLS 1.3 server judges the client certificate after the
    # client considers the handshake done: its alert reaches the client here.
    step("client", lambda: outcome.client.write(b"ping"))
    pump()
    if done["server"] and outcome.server_error is None:

        def answer() -> None:
            assert outcome.server.read(100) == b"ping"
            outcome.server.write(b"pong")

        step("server", answer)
        pump()
    try:
        reply = outcome.client.read(100)
    except ssl.SSLWantReadError:
        reply = b""
    except ssl.SSLError as exc:
        outcome.client_error = exc
        return outcome
    if outcome.ok:
        assert reply == b"pong"
    return outcome


@dataclass
class ServerResult:
    """What the thread behind ``serve_once`` saw."""

    error: BaseException | None = None
    version: str | None = None
    peer_refusal: str | None = None
    finished: threading.Event = field(default_factory=threading.Event)


@contextmanager
def serve_once(
    server: ServiceTLS, reply: bytes = b"hello\n"
) -> Iterator[tuple[tuple[str, int], ServerResult]]:
    """Accept one connection on 127.0.0.1, handshake, send ``reply``, close.

    Yields the listening address and the result (complete once the block exits).
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    result = ServerResult()

    def run() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            result.error = exc
            result.finished.set()
            return
        conn.settimeout(10)
        try:
            with server.context.wrap_socket(conn, server_side=True) as tls:
                result.version = tls.version()
                result.peer_refusal = server.check_peer(tls)
                tls.sendall(reply)
                tls.unwrap()
        except (OSError, ValueError) as exc:
            result.error = result.error or exc
        finally:
            conn.close()
            result.finished.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2], result
    finally:
        thread.join(15)
        listener.close()
