"""The benchmark's helper processes: plaintext endpoints, a backend and TLS load generators.

Each role runs in its own process, started by the harness as
``python3 bench/agents.py ROLE --option ...``, so that no role's work (or GIL) slows
another's.  A role prints exactly one JSON object on stdout when it is done (``hold``
prints one when its connections are open, then waits for stdin to close).  This file
imports nothing from the rest of ``bench`` so it runs as a plain script.

Roles:

``bulk``
    One plaintext connection, listening or connecting, that sends or receives ``--bytes``
    bytes with 1 MiB buffers, then reports monotonic timestamps.  ``time.monotonic()`` is
    CLOCK_MONOTONIC, shared by all processes, so the harness may subtract one agent's
    start from another's end.
``backend``
    An asyncio server holding any number of plaintext connections cheaply.  ``greet``
    writes one byte on accept (proof for the client that the tunnel reached the backend)
    and closes on EOF; ``echo`` sends back what it receives.
``handshakes``
    Full TLS handshakes in a loop (no session reuse), each waiting for the backend's greeting
    byte, then closing; counts those finished inside ``[--start, --start + --seconds]``.
``short``
    Short connections: connect, resume the TLS session, send a small request, read the
    echo, close properly (close_notify both ways); counts connections and resumptions.
``keepalive``
    One TLS connection and many small request/response round trips; reports latencies.
``hold``
    Opens ``--count`` TLS connections, waits for each one's greeting, reports, and keeps
    them open and idle until its stdin is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import ssl
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

HOST = "127.0.0.1"
CHUNK = 1 << 20
GREETING = b"+"
IO_TIMEOUT_S = 10.0  # no progress for this long means the tunnel is stuck


def _report(result: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def _client_context() -> ssl.SSLContext:
    """TLS 1.3 only; no chain verification (the signature in CertificateVerify still is)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _sleep_until(instant: float) -> None:
    delay = instant - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    parts, remaining = [], size
    while remaining:
        part = sock.recv(remaining)
        if not part:
            raise ConnectionError(f"EOF after {size - remaining} of {size} bytes")
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


# --- bulk ---------------------------------------------------------------------------


def _bulk_socket(args: argparse.Namespace) -> socket.socket:
    if args.connect:
        return _connect(args.connect)
    with socket.create_server((HOST, args.listen), backlog=1) as server:
        server.settimeout(IO_TIMEOUT_S)
        sock, _ = server.accept()
    sock.settimeout(IO_TIMEOUT_S)
    return sock


def _bulk_send(sock: socket.socket, total: int) -> dict[str, object]:
    block = memoryview(os.urandom(CHUNK))
    started = time.monotonic()
    remaining = total
    while remaining >= CHUNK:
        sock.sendall(block)
        remaining -= CHUNK
    if remaining:
        sock.sendall(block[:remaining])
    sent_at = time.monotonic()
    sock.shutdown(socket.SHUT_WR)
    # Wait for the far end to close so the whole chain has drained before we report.
    while sock.recv(CHUNK):
        pass
    return {"bytes": total, "t_start": started, "t_sent": sent_at, "t_closed": time.monotonic()}


def _bulk_receive(sock: socket.socket, total: int) -> dict[str, object]:
    buffer = bytearray(CHUNK)
    received, first = 0, 0.0
    while received < total:
        count = sock.recv_into(buffer)
        if not count:
            break
        if not received:
            first = time.monotonic()
        received += count
    last = time.monotonic()
    return {"bytes": received, "t_first": first, "t_last": last}


def run_bulk(args: argparse.Namespace) -> None:
    with _bulk_socket(args) as sock:
        if args.send:
            _report(_bulk_send(sock, args.bytes))
        else:
            _report(_bulk_receive(sock, args.bytes))


# --- backend ------------------------------------------------------------------------


class _Greeter(asyncio.Protocol):
    """Writes one byte on accept, discards input, closes on EOF."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        _nodelay(transport)
        transport.write(GREETING)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False


class _Echo(asyncio.Protocol):
    """Sends back everything it receives, closes on EOF."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        _nodelay(transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False


def _nodelay(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _serve(port: int, mode: str) -> None:
    factory: Callable[[], asyncio.Protocol] = _Greeter if mode == "greet" else _Echo
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, HOST, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def run_backend(args: argparse.Namespace) -> None:
    asyncio.run(_serve(args.port, args.mode))


# --- TLS load generators ------------------------------------------------------------


def _greeted_handshake(context: ssl.SSLContext, port: int) -> None:
    with _connect(port) as raw, context.wrap_socket(raw) as tls:
        if tls.recv(1) != GREETING:
            raise ConnectionError("no greeting from the backend")


def _warm_up(one: Callable[[], object], start: float, rounds: int = 5) -> None:
    """A few untimed rounds before ``start`` (imports, caches), as long as time allows."""
    for _ in range(rounds):
        if time.monotonic() > start - 0.2:
            break
        try:
            one()
        except OSError:
            break


def run_handshakes(args: argparse.Namespace) -> None:
    context = _client_context()
    end = args.start + args.seconds
    count = errors = 0
    _warm_up(lambda: _greeted_handshake(context, args.port), args.start)
    _sleep_until(args.start)
    while time.monotonic() < end:
        try:
            _greeted_handshake(context, args.port)
        except OSError:
            errors += 1
            time.sleep(0.01)
            continue
        if time.monotonic() <= end:
            count += 1
    _report({"count": count, "errors": errors})


def run_short(args: argparse.Namespace) -> None:
    context = _client_context()
    request = b"r" * args.size
    end = args.start + args.seconds
    count = resumed = errors = 0
    session: ssl.SSLSession | None = None

    def one() -> bool:
        nonlocal session
        with _connect(args.port) as raw, context.wrap_socket(raw, session=session) as tls:
            tls.sendall(request)
            _recv_exactly(tls, len(request))
            # Taken after reading data, when the TLS 1.3 tickets have arrived.  A client
            # that does not send close_notify has its session marked non-resumable.
            session, reused = tls.session, bool(tls.session_reused)
            tls.unwrap()
            return reused

    _warm_up(one, args.start)
    _sleep_until(args.start)
    while time.monotonic() < end:
        try:
            reused = one()
        except OSError:
            errors += 1
            session = None
            time.sleep(0.01)
            continue
        if time.monotonic() <= end:
            count += 1
            resumed += reused
    _report({"count": count, "resumed": resumed, "errors": errors})


def run_keepalive(args: argparse.Namespace) -> None:
    context = _client_context()
    request = b"k" * args.size
    latencies_ns: list[int] = []
    end = args.start + args.seconds
    with _connect(args.port) as raw, context.wrap_socket(raw) as tls:
        for _ in range(200):  # warm-up, not counted
            tls.sendall(request)
            _recv_exactly(tls, len(request))
        _sleep_until(args.start)
        while time.monotonic() < end:
            began = time.perf_counter_ns()
            tls.sendall(request)
            _recv_exactly(tls, len(request))
            latencies_ns.append(time.perf_counter_ns() - began)
    latencies_ns.sort()
    _report(
        {
            "count": len(latencies_ns),
            "median_us": statistics.median(latencies_ns) / 1000,
            "p99_us": latencies_ns[min(len(latencies_ns) - 1, len(latencies_ns) * 99 // 100)]
            / 1000,
            "mean_us": statistics.fmean(latencies_ns) / 1000,
        }
    )


def run_hold(args: argparse.Namespace) -> None:
    context = _client_context()
    held: list[ssl.SSLSocket] = []
    lock = threading.Lock()

    deadline = time.monotonic() + args.within

    def open_one(_: int) -> bool:
        if time.monotonic() > deadline:
            return False
        raw: socket.socket | None = None
        try:
            raw = _connect(args.port)
            tls = context.wrap_socket(raw)
            if tls.recv(1) != GREETING:
                tls.close()
                return False
        except OSError:
            if raw is not None:
                raw.close()
            return False
        with lock:
            held.append(tls)
        return True

    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        opened = sum(pool.map(open_one, range(args.count)))
    _report({"open": opened, "errors": args.count - opened})
    sys.stdin.read()  # hold until the harness closes our stdin
    sys.stdout.flush()
    os._exit(0)  # the kernel closes every socket at once


# --- command line -------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    roles = parser.add_subparsers(dest="role", required=True)

    bulk = roles.add_parser("bulk")
    where = bulk.add_mutually_exclusive_group(required=True)
    where.add_argument("--listen", type=int)
    where.add_argument("--connect", type=int)
    what = bulk.add_mutually_exclusive_group(required=True)
    what.add_argument("--send", action="store_true")
    what.add_argument("--receive", action="store_true")
    bulk.add_argument("--bytes", type=int, required=True)

    backend = roles.add_parser("backend")
    backend.add_argument("--port", type=int, required=True)
    backend.add_argument("--mode", choices=("greet", "echo"), required=True)

    for name in ("handshakes", "short", "keepalive"):
        role = roles.add_parser(name)
        role.add_argument("--port", type=int, required=True)
        role.add_argument("--start", type=float, required=True, help="time.monotonic() value")
        role.add_argument("--seconds", type=float, required=True)
        role.add_argument("--size", type=int, default=64, help="request size in bytes")

    hold = roles.add_parser("hold")
    hold.add_argument("--port", type=int, required=True)
    hold.add_argument("--count", type=int, required=True)
    hold.add_argument("--threads", type=int, default=8)
    hold.add_argument("--within", type=float, default=120.0, help="give up after seconds")
    return parser


ROLES: dict[str, Callable[[argparse.Namespace], None]] = {
    "bulk": run_bulk,
    "backend": run_backend,
    "handshakes": run_handshakes,
    "short": run_short,
    "keepalive": run_keepalive,
    "hold": run_hold,
}


def main() -> None:
    args = _parser().parse_args()
    ROLES[args.role](args)


if __name__ == "__main__":
    main()
