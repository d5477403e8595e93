"""The log's writer thread in process: a stuck destination, order, rotation, exit.

These drive ``tlstunnel.log.Log`` directly inside a running event loop (where lines go
through the writer thread) and outside one (where they are written at once).  The
stuck destination is a FIFO whose reader never reads: a synchronous writer would block
on its first full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lifecycle.helpers import LOG_LINE
from tlstunnel.config.model import Foreground, GlobalConfig, LogLevel
from tlstunnel.log import NOTICE, QUEUE_LIMIT, Log


def _settings(output: Path) -> GlobalConfig:
    return GlobalConfig(
        foreground=Foreground.QUIET, output=str(output), syslog=False, log_level=LogLevel()
    )


@contextlib.contextmanager
def _stuck_fifo(path: Path) -> Iterator[int]:
    """A FIFO with a reader that does not read (until the test drains it)."""
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
    try:
        yield reader
    finally:
        os.close(reader)


def _drain(reader: int, into: bytearray) -> None:
    with contextlib.suppress(BlockingIOError):
        while data := os.read(reader, 1 << 20):
            into += data


def _drain_until(reader: int, into: bytearray, done: threading.Event) -> None:
    while not done.is_set():
        _drain(reader, into)
        time.sleep(0.005)


def test_a_destination_that_never_drains_cannot_stall_the_loop(tmp_path: Path) -> None:
    fifo = tmp_path / "stuck.fifo"
    count = 3 * QUEUE_LIMIT
    received = bytearray()
    with _stuck_fifo(fifo) as reader:
        log = Log()
        log.configure(_settings(fifo))

        async def flood() -> tuple[float, float]:
            started = time.monotonic()
            worst = 0.0
            for number in range(count):
                before = time.perf_counter()
                log(NOTICE, f"line {number} " + "x" * 100)
                worst = max(worst, time.perf_counter() - before)
            return time.monotonic() - started, worst

        elapsed, worst = asyncio.run(flood())
        dropped = log.dropped
        # Now let it through: close() writes out what is queued while we read.
        done = threading.Event()
        drainer = threading.Thread(target=_drain_until, args=(reader, received, done))
        drainer.start()
        try:
            log.close()
        finally:
            done.set()
            drainer.join(10)
        _drain(reader, received)
    assert elapsed < 2.0, f"{count} lines took {elapsed:.1f} s: the loop waited for the pipe"
    assert worst < 0.1, f"one log call took {worst * 1000:.0f} ms"
    assert dropped > 0, "the queue is bounded: most of these lines cannot be kept"
    lines = received.decode().splitlines()
    for line in lines:
        assert re.match(LOG_LINE, line), f"torn or foreign line: {line!r}"
    # One notice per stretch of drops (the writer may catch up in between): together
    # they account for every line dropped.
    notices = [line for line in lines if "log line(s) dropped" in line]
    assert notices, "dropped lines must be reported"
    counts = [re.search(r"LOG4\[ui\]: (\d+) log line\(s\) dropped: ", n) for n in notices]
    total_dropped = sum(int(match[1]) for match in counts if match)
    assert total_dropped >= dropped, notices  # log.dropped counts since the last notice
    kept = [line for line in lines if " line " in line]
    assert len(kept) + total_dropped == count, "every line is either written or counted"
    numbers = [int(line.split(" line ")[1].split()[0]) for line in kept]
    assert numbers == sorted(numbers), "lines keep their order"


def test_lines_before_the_loop_are_written_at_once(tmp_path: Path) -> None:
    output = tmp_path / "out.log"
    log = Log()
    try:
        log.configure(_settings(output))
        log(NOTICE, "no loop yet")
        assert output.read_text().endswith("LOG5[ui]: no loop yet\n"), "synchronous"
    finally:
        log.close()


def test_lines_in_the_loop_arrive_in_order_and_close_writes_them_out(tmp_path: Path) -> None:
    output = tmp_path / "out.log"
    log = Log()
    log.configure(_settings(output))

    async def run() -> None:
        for number in range(5000):
            log(NOTICE, f"line {number}")

    asyncio.run(run())
    log.close()
    lines = output.read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [f"line {n}" for n in range(5000)]
    log(NOTICE, "after close")  # written synchronously to nowhere: no file, no error
    assert "after close" not in output.read_text()


def test_reopen_through_the_writer_splits_lines_at_the_right_point(tmp_path: Path) -> None:
    output = tmp_path / "out.log"
    rotated = tmp_path / "out.log.1"
    log = Log()
    log.configure(_settings(output))

    async def run() -> None:
        for number in range(1000):
            log(NOTICE, f"before {number}")
        # Like logrotate: rename the file under the writer, then SIGUSR1.
        await asyncio.sleep(0.05)
        output.rename(rotated)
        log.reopen()
        for number in range(1000):
            log(NOTICE, f"after {number}")

    asyncio.run(run())
    log.close()
    old, new = rotated.read_text(), output.read_text()
    assert old.count("before") == 1000 and "after" not in old
    assert new.count("after") == 1000 and "before" not in new


def test_a_failed_reopen_is_reported_and_logging_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    output = folder / "out.log"
    log = Log()
    log.configure(
        GlobalConfig(
            foreground=Foreground.YES, output=str(output), syslog=False, log_level=LogLevel()
        )
    )

    async def run() -> None:
        log(NOTICE, "first")
        await asyncio.sleep(0.05)
        output.unlink()
        folder.rmdir()  # the file cannot be created again
        log.reopen()
        log(NOTICE, "second")

    asyncio.run(run())
    log.close()
    err = capsys.readouterr().err
    assert re.search(r"LOG3\[ui\]: Cannot reopen log file .*out\.log: No such file", err), err
    assert err.rstrip().endswith("LOG5[ui]: second"), "stderr still gets every line"


def test_a_line_that_cannot_be_encoded_does_not_lose_its_batch(tmp_path: Path) -> None:
    output = tmp_path / "out.log"
    log = Log()
    log.configure(_settings(output))

    async def run() -> None:
        log(NOTICE, "before")
        log(NOTICE, "a name from the wire: \udcff")  # a lone surrogate: not UTF-8
        log(NOTICE, "after")

    asyncio.run(run())
    log.close()
    bodies = [line.split(": ", 1)[1] for line in output.read_text().splitlines()]
    assert bodies == ["before", "a name from the wire: \\udcff", "after"]
