"""Out of descriptors: the listener backs off, keeps what it has, and recovers.

The tunnel runs with RLIMIT_NOFILE at 128 (and a ``maxConnections`` above what that
allows, so that ``accept`` itself hits EMFILE rather than the connection budget).  Ten
TLS sessions are established, then TCP connections flood in until the process is out
of descriptors.  While it is:

* the log holds exactly one line about it, not one per attempt;
* the ten sessions go on relaying;
* clients queued in the listen backlog are left there -- none is closed unanswered
  (uvloop's own accept closes them all, silently);
* a TLS client that arrives meanwhile waits, and is served once descriptors free up.

Both event loops run it: uvloop, and the standard loop (whose own accept loop logged
about 100,000 tracebacks in 3 s here).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.load.helpers import (
    Backend,
    EchoProtocol,
    LoopThread,
    fd_count,
    limited_tlstunnel,
    probe,
    server_service,
)
from tests.support.clients import tls_connect
from tests.support.pki import PKIFiles
from tests.support.tunnel import TunnelProcess, write_config
from tlstunnel.config.model import Address, Foreground, GlobalConfig, LogLevel
from tlstunnel.log import Log
from tlstunnel.net.listener import Listener, bind_socket

NOFILE = 128
SESSIONS = 10
FLOOD = NOFILE + 40  # more than the process can hold: the rest waits in the backlog
EXHAUSTED_FOR = 1.0  # ten back-off periods
BACKOFF_LINE = "Too many open files (EMFILE): not accepting new connections"


def _still_queued(sock: socket.socket) -> bool:
    """True if the tunnel has not closed this (never answered) connection."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


@pytest.mark.parametrize("loop", ["uvloop", "stdlib"])
def test_out_of_descriptors_backs_off_and_recovers(
    pki: PKIFiles, tmp_path: Path, loop: str
) -> None:
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    with LoopThread() as helper:
        backend = helper.run(Backend.start(EchoProtocol))
        config = write_config(
            tmp_path / "tunnel.conf",
            "foreground = yes\npid =\ndebug = info\nsyslog = no\nmaxConnections = 100000\n"
            + server_service("tls", pki, backend.port),
        )
        command = limited_tlstunnel(NOFILE, stdlib_loop=loop == "stdlib")
        proc = TunnelProcess(command, config, tmp_path / "tunnel.log")
        sessions: list[ssl.SSLSocket] = []
        flood: list[socket.socket] = []
        try:
            banner = proc.wait_for_log("Accepting new connections", timeout=15)
            assert f"event loop: {'uvloop' if loop == 'uvloop' else 'asyncio'}" in banner
            port, pid = proc.port("tls"), proc.process.pid
            for _ in range(SESSIONS):
                session = tls_connect(port, pki.ca)
                session.sendall(b"s")
                assert session.recv(1) == b"s"
                sessions.append(session)
            flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(FLOOD)]
            proc.wait_for_log(re.escape(BACKOFF_LINE), timeout=10)
            assert fd_count(pid) >= NOFILE - 2
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                arrived = time.monotonic()
                latecomer = pool.submit(probe, port, pki, 30)
                time.sleep(EXHAUSTED_FOR)
                for session in sessions:  # established connections go on
                    session.sendall(b"still here")
                    assert session.recv(10) == b"still here"
                assert not latecomer.done(), "served while out of descriptors?"
                assert all(_still_queued(sock) for sock in flood), (
                    "clients waiting in the backlog were closed unanswered"
                )
                freed = time.monotonic()
                for sock in flood:
                    sock.close()
                latency = latecomer.result(timeout=20)
                served = time.monotonic()
            recovered = proc.wait_for_log("accepting again after", timeout=10)
            assert probe(port, pki) < 1.0
        finally:
            for sock in [*sessions, *flood]:
                sock.close()
            proc.stop()
            helper.run(backend.close())
    log = proc.log()
    print(
        f"\n{loop}: latecomer waited {latency:.2f} s in the backlog, served "
        f"{served - freed:.2f} s after descriptors were freed; log lines about it:\n"
        + "\n".join(line for line in log.splitlines() if "Accept on " in line)
    )
    assert latency > EXHAUSTED_FOR, "the latecomer must have waited for descriptors"
    assert served - arrived < EXHAUSTED_FOR + 10
    assert recovered.count(BACKOFF_LINE) == 1, "one line per back-off period, not a flood"
    assert log.count("Accept on ") == 2
    assert "Traceback" not in log and "out of system resource" not in log
    assert "Internal error" not in log


def test_a_protocol_factory_that_raises_is_logged_and_leaks_nothing(tmp_path: Path) -> None:
    """In process: the per-connection boundary of the accept loop itself."""
    output = tmp_path / "out.log"
    log = Log()
    log.configure(
        GlobalConfig(
            foreground=Foreground.QUIET, output=str(output), syslog=False, log_level=LogLevel()
        )
    )
    address = Address(host="127.0.0.1", port=0)

    def broken() -> asyncio.BaseProtocol:
        raise RuntimeError("factory bug")

    async def run() -> tuple[int, int]:
        listener = Listener(address, bind_socket(address, []), log)
        listener.on_accept = broken
        await listener.start()
        before = fd_count(os.getpid())
        port = listener.sock.getsockname()[1]
        for _ in range(3):
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
        await asyncio.sleep(0.2)
        after = fd_count(os.getpid())
        listener.close()
        return before, after

    before, after = asyncio.run(run())
    log.close()
    assert after == before, "the accepted sockets were closed"
    text = output.read_text()
    assert text.count("internal error: RuntimeError: factory bug") == 3, text
