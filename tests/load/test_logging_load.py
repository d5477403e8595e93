"""Logging never stalls serving.

One tunnel, two services, ``debug = info`` and an ``output`` file: a storm of 2,000
connections at 200 per second goes to ``loud`` (eight log lines each), while a probe
client measures full handshakes on ``quiet``.  The probe's p99 must stay low.

The ``slow-fifo`` variant is the proof that the test can fail: ``output`` is a FIFO
whose reader takes 512 bytes every 100 ms, far less than the storm logs.  A tunnel that
writes its log on the event loop stalls with the pipe (the probe then waits for the
reader); ours must drop lines, say how many, and keep serving at full speed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TunnelFactory
from tests.lifecycle.helpers import LOG_LINE
from tests.load.helpers import (
    Backend,
    EchoProtocol,
    LoopThread,
    percentile,
    probe,
    server_service,
    start_agent,
)
from tests.support.pki import PKIFiles

STORM = 2000
RATE = 200.0
PROBE_EVERY = 0.02


class SlowFifo:
    """A FIFO and a thread that drains it slowly (``fast()`` lets it catch up)."""

    def __init__(self, path: Path, chunk: int = 512, pause: float = 0.1) -> None:
        os.mkfifo(path)
        self.path = path
        # Open the read end first (non-blocking): a writer's open then succeeds at once.
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe there is
        self._chunk = chunk
        self._pause = pause
        self._stop = threading.Event()
        self.received = bytearray()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(BlockingIOError):
                self.received += os.read(self._fd, self._chunk)
            time.sleep(self._pause)

    def fast(self) -> None:
        self._chunk, self._pause = 1 << 20, 0.005

    def close(self) -> str:
        """Stop draining, take what is left, close; returns everything received."""
        if self._fd >= 0:
            self._stop.set()
            self._thread.join(5)
            with contextlib.suppress(BlockingIOError):
                while data := os.read(self._fd, 1 << 20):
                    self.received += data
            os.close(self._fd)
            self._fd = -1
        return self.received.decode("utf-8", "replace")


@contextlib.contextmanager
def _output(kind: str, directory: Path) -> Iterator[tuple[Path, SlowFifo | None]]:
    path = directory / ("out.log" if kind == "file" else "out.fifo")
    if kind == "file":
        yield path, None
        return
    fifo = SlowFifo(path)
    try:
        yield path, fifo
    finally:
        fifo.close()


@pytest.mark.parametrize("destination", ["file", "slow-fifo"])
def test_a_storm_with_heavy_logging_does_not_slow_another_service(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path, destination: str
) -> None:
    with LoopThread() as helper, _output(destination, tmp_path) as (output, fifo):
        backend = helper.run(Backend.start(EchoProtocol))
        proc = tunnel(
            f"debug = info\noutput = {output}\n"
            + server_service("loud", pki, backend.port)
            + server_service("quiet", pki, backend.port)
        )
        loud, quiet = proc.port("loud"), proc.port("quiet")
        storm = start_agent("storm", str(loud), str(pki.ca), str(STORM), str(RATE))
        latencies: list[float] = []
        try:
            time.sleep(1.0)  # let the storm (and, for the FIFO, the backlog) build up
            while storm.poll() is None:
                latencies.append(probe(quiet, pki, timeout=30))
                time.sleep(PROBE_EVERY)
            assert storm.stdout is not None
            outcome = json.loads(storm.stdout.read())
        finally:
            if storm.poll() is None:
                storm.kill()
            storm.wait()
            if storm.stdout is not None:
                storm.stdout.close()
            if fifo is not None:
                fifo.fast()
            proc.stop()
            helper.run(backend.close())
        logged = fifo.close() if fifo is not None else output.read_text()
    p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
    print(
        f"\n{destination}: storm {outcome}; probe on the other service: {len(latencies)} "
        f"handshakes, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms; {len(logged.splitlines())} lines logged"
    )
    assert outcome["ok"] == STORM, outcome
    assert outcome["seconds"] < STORM / RATE * 1.5, "the storm itself was held up"
    assert len(latencies) >= 100
    assert p99 < 0.1, f"p99 {p99 * 1000:.0f} ms"
    if fifo is None:
        # The file kept up: every connection's last line is there, nothing dropped.
        assert logged.count("Connection closed") >= STORM + len(latencies)
        assert "dropped" not in logged
    else:
        # The slow reader really was too slow, and the log says what it lost.
        assert re.search(r" LOG4\[ui\]: \d+ log line\(s\) dropped: ", logged), logged[-500:]
    # Batched and dropped, but never torn: every line is whole, in stunnel's format.
    for line in logged.splitlines():
        assert re.match(LOG_LINE, line), f"not a whole log line: {line!r}"
