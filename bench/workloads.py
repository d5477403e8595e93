"""The measurements: each runs one program through one workload and returns its numbers.

Every workload starts its own fresh tunnel process(es), backend and load generators in a
step directory, measures, and stops them all (``tunnels.Processes``).  Only the tunnel
processes are measured: CPU and RSS are read from /proc over their process trees at the
start and end of a timed window, and the load generators report counts and timestamps.

bulk / bulk_reverse
    sender → client-mode tunnel → TLS → server-mode tunnel → sink, one TCP stream.
    Gbit/s = payload bits / (last byte received - first byte sent); CPU-s per GB = CPU of
    both tunnels over the transfer / payload in 10^9 bytes.  ``bulk_reverse`` has the
    backend send instead, so the server-mode tunnel encrypts and the client-mode one decrypts.
handshakes
    Several client processes doing full TLS 1.3 handshakes (no resumption) through a
    server-mode tunnel to a backend that greets with one byte; handshakes/s and the
    tunnel's CPU ms per handshake.
idle_memory
    RSS of a server-mode tunnel before and after N connections are open (each handshaken,
    connected to the backend and idle): KB per connection = growth / N.
short
    Short connections with session resumption: connect, one 64-byte request and echo,
    close_notify both ways.  Connections/s, tunnel CPU ms per connection, % resumed.
keepalive
    One TLS connection, 64-byte request/echo round trips: median and p99 latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import procstat
from bench.certs import Credentials
from bench.tunnels import (
    BenchError,
    Child,
    Processes,
    Program,
    free_ports,
    read_result,
    stop,
    wait_listening,
    write_config,
)

GB = 1e9
LEAD_IN_S = 1.0  # load generators start this long after launch, when Python is up
WARMUP_CONNECTIONS = 100


@dataclass(frozen=True, slots=True)
class Settings:
    """Sizes and durations of one benchmark run."""

    bulk_bytes: int
    bulk_reverse_bytes: int
    handshake_seconds: float
    handshake_clients: int
    idle_connections: int
    hold_processes: int
    short_seconds: float
    short_clients: int
    keepalive_seconds: float
    step_timeout_s: float


@dataclass(frozen=True, slots=True)
class Step:
    """Where one measurement runs and what it may use."""

    workdir: Path
    credentials: Credentials
    settings: Settings


Metrics = dict[str, float]
Workload = Callable[[Program, Step], Metrics]


def _number(result: dict[str, object], key: str) -> float:
    value = result.get(key)
    if not isinstance(value, int | float):
        raise BenchError(f"agent result lacks a number for {key!r}: {result}")
    return float(value)


def _server_tunnel(procs: Processes, program: Program, step: Step, mode: str) -> tuple[Child, int]:
    """A backend in ``mode`` and a server-mode tunnel in front of it; returns (tunnel, port)."""
    backend_port, accept_port = free_ports(2)
    backend = procs.start_agent("backend", "backend", "--port", backend_port, "--mode", mode)
    wait_listening(backend, backend_port)
    config = write_config(
        step.workdir / "server.conf",
        accept=accept_port,
        connect=backend_port,
        client=False,
        credentials=step.credentials,
    )
    return procs.start_tunnel("server", program, config, accept_port), accept_port


def _bulk(program: Program, step: Step, *, forward: bool) -> Metrics:
    size = step.settings.bulk_bytes if forward else step.settings.bulk_reverse_bytes
    timeout = step.settings.step_timeout_s
    backend_port, server_port, client_port = free_ports(3)
    with Processes(step.workdir) as procs:
        backend = procs.start_agent(
            "backend",
            "bulk",
            "--listen",
            backend_port,
            "--receive" if forward else "--send",
            "--bytes",
            size,
        )
        wait_listening(backend, backend_port)
        server_conf = write_config(
            step.workdir / "server.conf",
            accept=server_port,
            connect=backend_port,
            client=False,
            credentials=step.credentials,
        )
        client_conf = write_config(
            step.workdir / "client.conf",
            accept=client_port,
            connect=server_port,
            client=True,
            credentials=step.credentials,
        )
        server = procs.start_tunnel("server", program, server_conf, server_port)
        client = procs.start_tunnel("client", program, client_conf, client_port)
        before = procstat.usage(server.pid).cpu_s + procstat.usage(client.pid).cpu_s
        front = procs.start_agent(
            "front",
            "bulk",
            "--connect",
            client_port,
            "--send" if forward else "--receive",
            "--bytes",
            size,
        )
        sender, receiver = (front, backend) if forward else (backend, front)
        sent = read_result(sender, timeout)
        received = read_result(receiver, timeout)
        after = procstat.usage(server.pid).cpu_s + procstat.usage(client.pid).cpu_s
    if _number(received, "bytes") != size:
        raise BenchError(f"sent {size} bytes, received {received['bytes']}")
    seconds = _number(received, "t_last") - _number(sent, "t_start")
    return {
        "gbps": size * 8 / seconds / 1e9,
        "cpu_s_per_gb": (after - before) / (size / GB),
        "seconds": seconds,
    }


def bulk(program: Program, step: Step) -> Metrics:
    return _bulk(program, step, forward=True)


def bulk_reverse(program: Program, step: Step) -> Metrics:
    return _bulk(program, step, forward=False)


def _timed_clients(
    procs: Processes, role: str, *, port: int, clients: int, seconds: float, tunnel: Child
) -> tuple[list[dict[str, object]], float, float]:
    """Run ``clients`` load generators for ``seconds``.

    Returns their results, the tunnel's CPU seconds and how busy the machine was (%).
    """
    start = time.monotonic() + LEAD_IN_S
    agents = [
        procs.start_agent(
            f"{role}{i}", role, "--port", port, "--start", start, "--seconds", seconds
        )
        for i in range(clients)
    ]
    time.sleep(max(0.0, start - time.monotonic()))
    before, machine_before = procstat.usage(tunnel.pid).cpu_s, procstat.machine_ticks()
    time.sleep(max(0.0, start + seconds - time.monotonic()))
    cpu, machine_after = procstat.usage(tunnel.pid).cpu_s - before, procstat.machine_ticks()
    tunnel.check_alive()
    results = [read_result(agent, 30.0) for agent in agents]
    busy = machine_after[0] - machine_before[0]
    total = machine_after[1] - machine_before[1]
    return results, cpu, 100 * busy / max(total, 1)


def handshakes(program: Program, step: Step) -> Metrics:
    settings = step.settings
    with Processes(step.workdir) as procs:
        tunnel, port = _server_tunnel(procs, program, step, "greet")
        results, cpu, busy = _timed_clients(
            procs,
            "handshakes",
            port=port,
            clients=settings.handshake_clients,
            seconds=settings.handshake_seconds,
            tunnel=tunnel,
        )
    count = sum(_number(r, "count") for r in results)
    errors = sum(_number(r, "errors") for r in results)
    if count == 0:
        raise BenchError(f"no handshake completed ({errors:.0f} errors)")
    return {
        "per_s": count / settings.handshake_seconds,
        "cpu_ms": cpu / count * 1000,
        "count": count,
        "errors": errors,
        "machine_busy_pct": busy,
    }


def _hold(procs: Processes, port: int, count: int, processes: int, timeout: float) -> list[Child]:
    """Open ``count`` idle connections from ``processes`` holders; returns the holders."""
    shares = [count // processes + (i < count % processes) for i in range(processes)]
    holders = [
        procs.start_agent(
            f"hold{i}-{share}",
            "hold",
            "--port",
            port,
            "--count",
            share,
            "--within",
            timeout,
            stdin=True,
        )
        for i, share in enumerate(shares)
        if share
    ]
    opened = errors = 0.0
    for holder in holders:
        result = read_result(holder, timeout)
        opened += _number(result, "open")
        errors += _number(result, "errors")
    if errors:
        raise BenchError(f"only {opened:.0f} of {count} connections opened ({errors:.0f} failed)")
    return holders


def idle_memory(program: Program, step: Step) -> Metrics:
    settings = step.settings
    count = settings.idle_connections
    with Processes(step.workdir) as procs:
        tunnel, port = _server_tunnel(procs, program, step, "greet")
        # Warm up first, so one-time allocations (lazy imports, caches, the first thread
        # stacks) are not charged to the connections being counted.
        for holder in _hold(procs, port, WARMUP_CONNECTIONS, 1, settings.step_timeout_s):
            stop(holder)
        time.sleep(1.0)
        start = procstat.usage(tunnel.pid)
        _hold(procs, port, count, settings.hold_processes, settings.step_timeout_s)
        time.sleep(1.0)  # let the tunnel settle with every connection idle
        tunnel.check_alive()
        held = procstat.usage(tunnel.pid)
        threads = procstat.thread_count(tunnel.pid)
        processes = len(procstat.process_tree(tunnel.pid))
    return {
        "kb_per_conn": (held.rss_kb - start.rss_kb) / count,
        "start_mb": start.rss_kb / 1024,
        "held_mb": held.rss_kb / 1024,
        "threads": threads,
        "processes": processes,
    }


def short(program: Program, step: Step) -> Metrics:
    settings = step.settings
    with Processes(step.workdir) as procs:
        tunnel, port = _server_tunnel(procs, program, step, "echo")
        results, cpu, busy = _timed_clients(
            procs,
            "short",
            port=port,
            clients=settings.short_clients,
            seconds=settings.short_seconds,
            tunnel=tunnel,
        )
    count = sum(_number(r, "count") for r in results)
    if count == 0:
        raise BenchError("no short connection completed")
    return {
        "per_s": count / settings.short_seconds,
        "cpu_ms": cpu / count * 1000,
        "resumed_pct": 100 * sum(_number(r, "resumed") for r in results) / count,
        "errors": sum(_number(r, "errors") for r in results),
        "machine_busy_pct": busy,
    }


def keepalive(program: Program, step: Step) -> Metrics:
    settings = step.settings
    with Processes(step.workdir) as procs:
        tunnel, port = _server_tunnel(procs, program, step, "echo")
        results, cpu, busy = _timed_clients(
            procs,
            "keepalive",
            port=port,
            clients=1,
            seconds=settings.keepalive_seconds,
            tunnel=tunnel,
        )
    result = results[0]
    count = _number(result, "count")
    if count == 0:
        raise BenchError("no keep-alive round trip completed")
    return {
        "median_us": _number(result, "median_us"),
        "p99_us": _number(result, "p99_us"),
        "per_s": count / settings.keepalive_seconds,
        "cpu_us": cpu / count * 1e6,
        "machine_busy_pct": busy,
    }


WORKLOADS: dict[str, Workload] = {
    "bulk": bulk,
    "bulk_reverse": bulk_reverse,
    "handshakes": handshakes,
    "idle_memory": idle_memory,
    "short": short,
    "keepalive": keepalive,
}
