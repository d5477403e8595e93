"""Fault injection: the backend is killed and restarted while 100 connections stream.

Each client sends 4 MB through the tunnel to an echo backend (a separate process), at
a pace, and checks every byte that comes back.  80 clients start in the first 0.4 s;
0.3 s in, the backend is killed with SIGKILL, and 0.3 s later started again on the same
port; the last 20 clients start after that and must come through whole.  Each
connection must end one of two ways -- complete and byte-exact, or closed -- and none
may hang (a client that sees no progress for 10 s counts as hung).  Every client that
saw a reset must find a ``Connection reset`` line for its connection in the tunnel's
log, and every connection must have exactly one line saying how it ended.

Until the relay stops calling "a backend that sent FIN, then RST" a clean close, some
runs end as an expected failure with that count; the second test pins it down.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import socket
import ssl
import subprocess
import time

from tests.conftest import TunnelFactory
from tests.load.helpers import (
    LoopThread,
    read_client_ids,
    read_connection_ends,
    server_service,
    start_agent,
    stop_agent,
)
from tests.support.backends import _ThreadedServer
from tests.support.clients import client_context, tls_connect
from tests.support.pki import PKIFiles

CONNECTIONS = 100
FIRST_WAVE = 80
START_EVERY = 0.005  # the first wave: all streaming when the backend dies
KILL_AT = 0.3
DOWN_FOR = 0.3
SECOND_WAVE_AT = 1.0  # after the restart, one every 20 ms
PAYLOAD = os.urandom(4 << 20)
CHUNK = 64 * 1024
PACE = 0.002  # seconds between chunks: 4 MB take at least 0.13 s
NO_PROGRESS = 10.0  # seconds without a byte: hung


async def _stream(port: int, context: ssl.SSLContext, delay: float) -> tuple[int, str, int]:
    """One client; returns its source port, how it ended and how many bytes came back."""
    await asyncio.sleep(delay)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"),
            NO_PROGRESS,
        )
    except TimeoutError:
        return 0, "hang", 0
    source_port: int = writer.get_extra_info("sockname")[1]

    async def send() -> None:
        for offset in range(0, len(PAYLOAD), CHUNK):
            writer.write(PAYLOAD[offset : offset + CHUNK])
            await writer.drain()
            await asyncio.sleep(PACE)  # a stream lasts long enough to be hit

    sender = asyncio.create_task(send())
    received = 0
    outcome = "complete"
    try:
        while received < len(PAYLOAD):
            data = await asyncio.wait_for(reader.read(CHUNK), NO_PROGRESS)
            if not data:
                outcome = "eof"
                break
            if data != PAYLOAD[received : received + len(data)]:
                outcome = "corrupt"
                break
            received += len(data)
    except TimeoutError:
        outcome = "hang"
    except (ConnectionError, ssl.SSLError, OSError):
        outcome = "reset"
    sender.cancel()
    # The sender fails with the connection; the reader has already said how.
    with contextlib.suppress(asyncio.CancelledError, ConnectionError, ssl.SSLError, OSError):
        await sender
    if outcome == "complete":
        writer.close()  # close_notify: the tunnel should log a clean close
        with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError, OSError):
            await asyncio.wait_for(writer.wait_closed(), NO_PROGRESS)
    writer.transport.abort()
    return source_port, outcome, received


async def _all_streams(port: int, context: ssl.SSLContext) -> list[tuple[int, str, int]]:
    starts = [n * START_EVERY for n in range(FIRST_WAVE)]
    starts += [SECOND_WAVE_AT + n * 0.02 for n in range(CONNECTIONS - FIRST_WAVE)]
    return list(await asyncio.gather(*(_stream(port, context, delay) for delay in starts)))


def _restart(port: int) -> subprocess.Popen[str]:
    backend = start_agent("echo", str(port))
    assert backend.stdout is not None
    assert json.loads(backend.stdout.readline())["port"] == port
    return backend


def test_backend_killed_and_restarted_mid_stream(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    backend = start_agent("echo", "0")
    assert backend.stdout is not None
    backend_port: int = json.loads(backend.stdout.readline())["port"]
    proc = tunnel(server_service("tls", pki, backend_port))
    port = proc.port("tls")
    context = client_context(pki.ca)
    try:
        with LoopThread() as helper:
            clients = helper.submit(_all_streams(port, context))
            time.sleep(KILL_AT)
            stop_agent(backend)  # SIGKILL: its sockets end in a FIN, or a RST if data was unread
            time.sleep(DOWN_FOR)
            backend = _restart(backend_port)
            results = clients.result(timeout=90)
    finally:
        stop_agent(backend)
    outcomes = collections.Counter(outcome for _port, outcome, _received in results)
    cut = sum(1 for _port, outcome, got in results if outcome != "complete" and got > 0)
    ids = read_client_ids(
        proc.wait_for_log("Connection (closed|reset)", count=CONNECTIONS, timeout=20), "tls"
    )
    log = proc.log()
    ends = read_connection_ends(log)
    lines = collections.Counter(ends.values())
    causes = collections.Counter(
        cause
        for cause in ("Connection reset by peer", "Connection refused", "Broken pipe")
        for _ in range(log.count(cause))
    )
    print(
        f"\nclient outcomes {dict(outcomes)} ({cut} cut mid-stream); tunnel end lines "
        f"{dict(lines)}; causes in the log {dict(causes)}"
    )
    assert outcomes["hang"] == 0, outcomes
    assert outcomes["corrupt"] == 0, outcomes
    assert outcomes["complete"] + outcomes["reset"] + outcomes["eof"] == CONNECTIONS
    # The fault hit streams in flight, and the ones after the restart came through.
    assert cut > 0, "no stream was cut mid-way: the test missed its moment"
    assert outcomes["complete"] >= CONNECTIONS - FIRST_WAVE, outcomes
    assert len(ends) == CONNECTIONS, "every connection logs exactly one end"
    assert "Internal error" not in log and "Traceback" not in log
    unmatched: list[str] = []
    for source_port, outcome, _received in results:
        connection = ids[source_port]
        story = "\n".join(line for line in log.splitlines() if f"[{connection}]: " in line)
        if outcome == "complete":
            assert ends[connection] in ("closed", "reset"), story
        elif outcome == "reset" and ends[connection] != "reset":
            unmatched.append(story)
    assert not unmatched, f"client resets without a 'Connection reset' line: {unmatched}"


def test_a_backend_gone_while_the_client_still_sends_is_a_reset(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    """The backend answers, closes its socket entirely, and the client goes on sending:
    what the client sends from then on cannot be delivered, so the tunnel must say
    "Connection reset" (what the client sees), not "Connection closed"."""

    def answer_and_vanish(conn: socket.socket) -> None:
        assert conn.recv(64) == b"request"
        conn.sendall(b"bye")
        conn.close()  # nothing unread: a FIN; later bytes from the tunnel meet a RST

    backend = _ThreadedServer(answer_and_vanish)
    try:
        proc = tunnel(server_service("tls", pki, backend.port))
        with tls_connect(proc.port("tls"), pki.ca) as conn:
            conn.sendall(b"request")
            assert conn.recv(3) == b"bye"
            deadline = time.monotonic() + 5
            with contextlib.suppress(OSError, ssl.SSLError):
                while time.monotonic() < deadline:
                    conn.sendall(b"x" * 65536)
                    time.sleep(0.01)
        log = proc.wait_for_log(r"Connection (closed|reset)")
    finally:
        backend.close()
    assert "Connection reset: 3 byte(s) sent to TLS" in log, log
