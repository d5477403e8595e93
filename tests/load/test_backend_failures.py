"""Backends that fail: every client is closed on time, and nothing leaks.

Four services in one tunnel, each in front of a backend that fails in its own way:
``refuse`` (nothing listens), ``die`` (answers half a reply, then a TCP RST),
``silent`` (accepts and reads, never answers: ``TIMEOUTidle`` ends it) and ``blackhole``
(its listen queue is full, so the connect hangs: ``TIMEOUTconnect`` ends it).  1,000
clients go through them, 100 at a time; each must see its connection closed within the
configured timeout (plus slack for a shared machine), and afterwards the tunnel's open
descriptors must be back to their count before the run, its RSS within 5 MB.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import statistics
import time

from tests.conftest import TunnelFactory
from tests.load.helpers import (
    Backend,
    DyingProtocol,
    LoopThread,
    SilentProtocol,
    blackhole,
    fd_count,
    gather_limited,
    rss_kb,
    server_service,
    wait_for,
)
from tests.support.clients import client_context
from tests.support.pki import PKIFiles

TIMEOUT_CONNECT = 1.0
TIMEOUT_IDLE = 1.0
SLACK = 2.5  # scheduling on a shared 2-core machine, plus the client's own handshake
CONNECTIONS = 1000
CONCURRENCY = 100
# When each kind of failure must have closed the client, counted from its request.
DEADLINES = {
    "refuse": SLACK,
    "die": SLACK,
    "silent": TIMEOUT_IDLE + SLACK,
    "blackhole": TIMEOUT_CONNECT + SLACK,
}


async def _client(port: int, context: ssl.SSLContext) -> float:
    """Handshake, send a request, wait for the tunnel to close; seconds after the request."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        writer.write(b"request\n")
        sent = time.monotonic()
        try:
            async with asyncio.timeout(30):
                while await reader.read(65536):
                    pass
        except (ConnectionError, ssl.SSLError):
            pass  # a reset is a close too
        return time.monotonic() - sent
    finally:
        writer.transport.abort()


async def _run(
    ports: dict[str, int], context: ssl.SSLContext, count: int
) -> dict[str, list[float]]:
    kinds = list(ports)
    order = [kinds[number % len(kinds)] for number in range(count)]
    results = await gather_limited([_client(ports[kind], context) for kind in order], CONCURRENCY)
    closed: dict[str, list[float]] = {kind: [] for kind in kinds}
    for kind, seconds in zip(order, results, strict=True):
        closed[kind].append(seconds)
    return closed


def test_failing_backends_close_clients_on_time_and_leak_nothing(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        refused_port = placeholder.getsockname()[1]
    timeouts = f"TIMEOUTconnect = {TIMEOUT_CONNECT:g}\nTIMEOUTidle = {TIMEOUT_IDLE:g}\n"
    with LoopThread() as helper, blackhole() as hole_port:
        silent = helper.run(Backend.start(SilentProtocol))
        dying = helper.run(Backend.start(DyingProtocol))
        backends = {
            "refuse": refused_port,
            "die": dying.port,
            "silent": silent.port,
            "blackhole": hole_port,
        }
        config = "".join(
            server_service(kind, pki, port, timeouts) for kind, port in backends.items()
        )
        proc = tunnel(config)
        ports = {kind: proc.port(kind) for kind in backends}
        pid = proc.process.pid
        context = client_context(pki.ca)
        try:
            # Warm up to the same concurrency, so that the "before" includes what the
            # first connections allocate once (caches, the allocator's arenas).
            helper.run(_run(ports, context, 2 * CONCURRENCY), timeout=60)
            wait_for(lambda: not _busy(proc.log()), 10, "the warm-up connections to end")
            fds_before, rss_before = fd_count(pid), rss_kb(pid)
            started = time.monotonic()
            closed = helper.run(_run(ports, context, CONNECTIONS), timeout=120)
            elapsed = time.monotonic() - started
            settle = wait_for(lambda: fd_count(pid) <= fds_before, 15, "descriptors to return")
            fds_after, rss_after = fd_count(pid), rss_kb(pid)
        finally:
            helper.run(silent.close())
            helper.run(dying.close())
    print(
        f"\n{CONNECTIONS} connections to failing backends in {elapsed:.1f} s; tunnel fds "
        f"{fds_before} -> {fds_after} (back {settle:.2f} s after the last client), RSS "
        f"{rss_before} -> {rss_after} KB"
    )
    for kind, seconds in closed.items():
        print(
            f"  {kind:9} closed after median {statistics.median(seconds):.3f} s, "
            f"max {max(seconds):.3f} s (deadline {DEADLINES[kind]:.1f} s)"
        )
    for kind, seconds in closed.items():
        assert len(seconds) == CONNECTIONS // len(closed)
        late = [s for s in seconds if s > DEADLINES[kind]]
        assert not late, f"{kind}: {len(late)} client(s) closed late, worst {max(late):.1f} s"
    # The timeouts are what ended the silent and blackholed connections, not luck.
    assert statistics.median(closed["silent"]) >= TIMEOUT_IDLE * 0.9
    assert statistics.median(closed["blackhole"]) >= TIMEOUT_CONNECT * 0.9
    assert fds_after == fds_before
    assert rss_after - rss_before < 5 * 1024, f"RSS grew {rss_after - rss_before} KB"
    log = proc.log()
    assert log.count("TIMEOUTidle exceeded") >= CONNECTIONS // 4
    assert log.count("TIMEOUTconnect exceeded") >= CONNECTIONS // 4
    assert log.count("Connection refused") >= CONNECTIONS // 4
    assert "Internal error" not in log and "Traceback" not in log


def _busy(log: str) -> bool:
    """True while some accepted connection has not logged how it ended."""
    accepted = log.count("accepted connection from")
    ended = log.count("Connection closed") + log.count("Connection reset")
    return ended < accepted
