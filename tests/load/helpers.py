"""Tools for the load tests: a loop thread, backends and clients that scale, gauges.

The load tests hold thousands of sockets, so nothing here spends a thread per
connection: backends and clients run as asyncio protocols on one event loop in a helper
thread (``LoopThread``), or in a helper process (``tests/load/agents.py``) when their CPU
must not share the GIL with the client that measures.  ``fd_count`` and ``rss_kb`` read
a tunnel's descriptors and memory from /proc.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import resource
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tests.support.clients import client_context, tls_connect
from tests.support.pki import PKIFiles

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


def raise_nofile_limit() -> int:
    """Lift this process's soft RLIMIT_NOFILE to the hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``predicate`` holds; return how long it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def server_service(name: str, pki: PKIFiles, backend_port: int, extra: str = "") -> str:
    return (
        f"[{name}]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{backend_port}\n"
        f"cert = {pki.server}\n" + extra
    )


def probe(port: int, pki: PKIFiles, timeout: float = 10.0) -> float:
    """One fresh client: TCP connect, full TLS handshake, 4-byte echo, close; seconds."""
    started = time.perf_counter()
    with tls_connect(port, pki.ca, timeout=timeout) as conn:
        conn.sendall(b"ping")
        assert conn.recv(4) == b"ping"
    return time.perf_counter() - started


def linger_reset(sock: socket.socket) -> None:
    """Make ``close`` send a TCP RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# -- a loop in a thread ------------------------------------------------------------------


class LoopThread:
    """An asyncio loop on a daemon thread; ``run`` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop; the caller collects its result later."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# -- backends (protocols on the loop thread) ---------------------------------------------


class _Tracked(asyncio.Protocol):
    """A backend connection that its server can abort when the test ends."""

    def __init__(self, live: set[asyncio.Transport]) -> None:
        self.live = live
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.live.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.live.discard(self.transport)


class EchoProtocol(_Tracked):
    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close once our echo is flushed


class SilentProtocol(_Tracked):
    """Accepts and reads, never answers: the tunnel's idle deadline must end it."""

    def data_received(self, data: bytes) -> None:
        pass


class DyingProtocol(_Tracked):
    """Answers the first bytes with half a reply, then dies: a TCP RST mid-stream."""

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"partial ")
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            linger_reset(sock)
        self.transport.abort()


class Backend:
    """A listening backend on the loop thread; ``port`` is where it listens."""

    def __init__(self, server: asyncio.Server, live: set[asyncio.Transport]) -> None:
        self.server = server
        self.live = live
        self.port: int = server.sockets[0].getsockname()[1]

    @classmethod
    async def start(cls, make: Callable[[set[asyncio.Transport]], _Tracked]) -> Backend:
        live: set[asyncio.Transport] = set()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: make(live), "127.0.0.1", 0, backlog=4096)
        return cls(server, live)

    async def close(self) -> None:
        self.server.close()
        for transport in list(self.live):
            transport.abort()
        await self.server.wait_closed()


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A port whose listen queue is full: new connects hang (SYNs dropped) until the
    caller's timeout -- what a backend that has stopped accepting looks like."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # takes the one queue slot
    try:
        yield port
    finally:
        filler.close()
        listener.close()


# -- clients on the loop thread ----------------------------------------------------------


async def open_tls_sessions(
    port: int, pki: PKIFiles, count: int, concurrency: int = 64
) -> list[asyncio.StreamWriter]:
    """``count`` TLS sessions through the tunnel, each proven end to end by an echo."""
    context = client_context(pki.ca)
    gate = asyncio.Semaphore(concurrency)

    async def one() -> asyncio.StreamWriter:
        async with gate:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            )
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            return writer

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def open_half_open(port: int, count: int, concurrency: int = 256) -> list[socket.socket]:
    """``count`` TCP connections whose TLS handshake never finishes: half of them send
    nothing, the other half the first 64 bytes of a ClientHello and then nothing."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    hello_start = client_hello()[:64]

    async def one(number: int) -> socket.socket:
        async with gate:
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            if number % 2:
                await loop.sock_sendall(sock, hello_start)
            return sock

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def client_hello() -> bytes:
    """The bytes a TLS client sends first."""
    tls = client_context(None).wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO())
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def abort_all(writers: list[asyncio.StreamWriter], sockets: list[socket.socket]) -> None:
    for writer in writers:
        writer.transport.abort()
    for sock in sockets:
        sock.close()


async def gather_limited(
    coros: list[Awaitable[T]] | list[Coroutine[Any, Any, T]], concurrency: int
) -> list[T]:
    gate = asyncio.Semaphore(concurrency)

    async def one(coro: Awaitable[T]) -> T:
        async with gate:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


# -- tunnels with a lowered descriptor limit ---------------------------------------------


def limited_tlstunnel(nofile: int, *, stdlib_loop: bool = False) -> list[str]:
    """A command that runs tlstunnel with RLIMIT_NOFILE at ``nofile`` (soft and hard:
    tlstunnel lifts its soft limit to the hard one at start).  ``stdlib_loop`` hides
    uvloop so that the standard event loop runs."""
    hide = "sys.modules['uvloop'] = None; " if stdlib_loop else ""
    code = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); {hide}"
        "sys.argv = ['tlstunnel', *sys.argv[1:]]; "
        "runpy.run_module('tlstunnel', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code]


def start_agent(*args: str) -> subprocess.Popen[str]:
    """``python -m tests.load.agents ARGS`` with its stdout as a pipe (for its JSON)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.load.agents", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def stop_agent(agent: subprocess.Popen[str]) -> None:
    """SIGKILL (what the fault-injection test wants), reap, close the pipe."""
    if agent.poll() is None:
        agent.kill()
    agent.wait()
    if agent.stdout is not None:
        agent.stdout.close()


def read_connection_ends(log_text: str) -> dict[str, str]:
    """Connection id -> "closed" or "reset", from the tunnel's final line for each."""
    ends: dict[str, str] = {}
    for match in re.finditer(r" LOG\d\[(\d+)\]: Connection (closed|reset)", log_text):
        ends[match[1]] = match[2]
    return ends


def read_client_ids(log_text: str, service: str) -> dict[int, str]:
    """Client source port -> connection id, from ``accepted connection from`` lines."""
    found: dict[int, str] = {}
    name = re.escape(service)
    pattern = rf" LOG\d\[(\d+)\]: Service \[{name}\] accepted connection from 127\.0\.0\.1:(\d+)"
    for match in re.finditer(pattern, log_text):
        found[int(match[2])] = match[1]
    return found
