"""The log as stunnel users read and grep it: format, levels, destinations, syslog.

Most tests run a real tunnel and read its stderr and ``output`` file.  Those that check
levels use fixed ports and wait for the port rather than for a log line, because the
level under test may hide the line the harness waits for.  The syslog tests put a real
datagram socket of ours where ``/dev/log`` would be (the machine may have no syslog),
to check the datagram format and that a syslog that never reads cannot stall the tunnel.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tlstunnel.log as log_module
from tests.conftest import TunnelFactory
from tests.lifecycle.helpers import (
    LOG_LINE,
    free_port,
    globals_section,
    port_is_listening,
    server_section,
    tls_echo,
    wait_until,
)
from tests.support.backends import EchoServer
from tests.support.clients import tls_connect
from tests.support.pki import PKIFiles
from tests.support.tunnel import TunnelProcess, run_tlstunnel
from tlstunnel.config.model import Foreground, GlobalConfig, LogLevel
from tlstunnel.log import DEBUG, ERR, INFO, NOTICE, WARNING, Log

EARLY_LINE = r"^\[[!. ]\] "


def _start_on_port(tunnel: TunnelFactory, text: str, port: int) -> TunnelProcess:
    """Start a tunnel and wait until ``port`` listens (whatever the log level hides)."""
    proc = tunnel(text, ready=False)
    wait_until(
        lambda: port_is_listening(port) or proc.process.poll() is not None,
        15,
        f"port {port} to listen",
    )
    assert proc.process.poll() is None, proc.log()
    return proc


def _levels(text: str) -> set[int]:
    return {int(level) for level in re.findall(r"^\S+ \S+ LOG(\d)\[", text, re.MULTILINE)}


# -- format ------------------------------------------------------------------------------


def test_lines_have_stunnels_format_and_connection_ids_count_up(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    port = free_port()
    proc = _start_on_port(
        tunnel,
        globals_section(debug="notice")
        + server_section("a", f"127.0.0.1:{port}", echo_server.port, pki),
        port,
    )
    for _ in range(3):
        assert tls_echo(port, pki) == b"ping"
    log = proc.wait_for_log(r"Connection closed", count=3)
    lines = log.splitlines()
    assert lines, log
    for line in lines:
        assert re.match(LOG_LINE, line), f"not in stunnel's format: {line!r}"
    stamp = time.mktime(time.strptime(lines[0][:19], "%Y.%m.%d %H:%M:%S"))
    assert abs(stamp - time.time()) < 120, "timestamps are the local time of the line"
    accepted = re.findall(r" LOG5\[(\w+)\]: Service \[a\] accepted connection from 127\.0", log)
    closed = re.findall(r" LOG5\[(\w+)\]: Connection closed: ", log)
    assert accepted == ["0", "1", "2"]
    assert closed == ["0", "1", "2"]
    assert re.search(r" LOG5\[ui\]: Configuration successful$", log, re.MULTILINE)


def test_early_lines_carry_stunnels_markers(tmp_path: Path, pki: PKIFiles) -> None:
    """Before logging is configured (here: it never is) lines use [!] [.] [ ]."""
    config = tmp_path / "stunnel.conf"
    config.write_text(
        globals_section()
        + "[a]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n"
        + f"cert = {pki.server_cert}\nkey = {pki.client}\n"  # a key of another certificate
    )
    run = run_tlstunnel(str(config))
    assert run.returncode == 1
    lines = run.stderr.splitlines()
    for line in lines:
        assert re.match(EARLY_LINE, line), f"no early marker on {line!r}"
    assert f"[.] Reading configuration from file {config}" in lines
    assert "[ ] Initializing service [a]" in lines, "info lines are shown when it fails"
    failure = next(i for i, line in enumerate(lines) if line.startswith("[!] Service [a]: "))
    assert lines.index("[ ] Initializing service [a]") < failure, "lines keep their order"
    assert lines[-1] == "[!] Configuration failed"


def test_configuration_error_lines_start_with_the_error_marker(tmp_path: Path) -> None:
    config = tmp_path / "stunnel.conf"
    config.write_text("foreground = yes\nnonsense = 1\n[a]\naccept = 0\nconnect = 1\n")
    run = run_tlstunnel(str(config))
    assert run.returncode == 1
    assert re.search(rf"^\[!\] {re.escape(str(config))}:2: nonsense: ", run.stderr, re.M)
    assert run.stderr.splitlines()[0].startswith("[.] tlstunnel ")


# -- levels ------------------------------------------------------------------------------


def test_debug_3_shows_errors_only(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    port, dead = free_port(), free_port()
    proc = _start_on_port(
        tunnel,
        globals_section(debug="3") + server_section("a", f"127.0.0.1:{port}", dead, pki),
        port,
    )
    closed_either_way = contextlib.suppress(ssl.SSLError, ConnectionResetError)
    with tls_connect(port, pki.ca, timeout=5) as conn, closed_either_way:
        assert conn.recv(10) == b"", "there is no backend: the tunnel must close"
    proc.wait_for_log(r"No more addresses to connect")
    assert proc.stop() == 0
    log = proc.log()
    assert re.search(rf"LOG3\[0\]: s_connect: connect 127\.0\.0\.1:{dead}: Connection refused", log)
    assert _levels(log) <= {0, 1, 2, 3}, log
    assert not re.search(EARLY_LINE, log, re.MULTILINE), f"debug = 3 hides notices:\n{log}"
    assert "Terminated" not in log


def test_debug_7_shows_debug_lines_from_start_to_end(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    pid_file = tmp_path / "debug.pid"
    proc = tunnel(
        globals_section(debug="debug", pid=pid_file)
        + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    )
    assert tls_echo(proc.port("a"), pki) == b"ping"
    log = proc.wait_for_log("Connection closed")
    assert f"LOG7[ui]: Created pid file {pid_file}" in log
    assert "LOG6[ui]: Initializing service [a]" in log, "startup lines are kept until configured"
    assert re.search(r"LOG7\[ui\]: TLS mode: server", log)
    assert re.search(r"LOG7\[0\]: ", log), "a connection's debug lines"
    assert _levels(log) >= {5, 6, 7}


def test_debug_levels_are_filtered_per_service(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    port_quiet, port_loud = free_port(), free_port()
    proc = _start_on_port(
        tunnel,
        globals_section(debug="notice")
        + server_section("quiet", f"127.0.0.1:{port_quiet}", echo_server.port, pki)
        + "debug = err\n"
        + server_section("loud", f"127.0.0.1:{port_loud}", echo_server.port, pki)
        + "debug = info\n",
        port_loud,
    )
    assert tls_echo(port_quiet, pki) == b"ping"
    assert tls_echo(port_loud, pki) == b"ping"
    log = proc.wait_for_log(r"Connection closed")
    assert "Service [quiet] accepted" not in log
    assert "Service [loud] accepted" in log
    assert re.search(r"LOG6\[1\]: ", log), "the loud service logs its info lines"


# -- destinations ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["append", "overwrite"])
def test_output_file_appends_or_overwrites(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path, mode: str
) -> None:
    output = tmp_path / "out.log"
    output.write_text("a line from the previous run\n")
    proc = tunnel(
        globals_section(output=output, extra=f"log = {mode}\n")
        + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    )
    assert tls_echo(proc.port("a"), pki) == b"ping"
    proc.wait_for_log("Connection closed")
    assert proc.stop() == 0
    text = output.read_text()
    kept = text.startswith("a line from the previous run\n")
    assert kept is (mode == "append"), text[:300]
    body = text.splitlines()[1:] if kept else text.splitlines()
    for line in body:
        assert re.match(LOG_LINE, line), f"not in stunnel's format: {line!r}"
    assert "LOG5[0]: Service [a] accepted connection" in text
    assert text.rstrip().endswith("LOG5[ui]: Terminated")


def test_output_file_starts_with_the_banner_like_stunnel(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    output = tmp_path / "out.log"
    tunnel(
        globals_section(output=output) + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    )
    wait_until(lambda: "Accepting new connections" in output.read_text(), 5, "the log file")
    first = output.read_text().splitlines()
    assert re.match(LOG_LINE + r"tlstunnel \S+ on ", first[0]), first[:3]
    assert any("LOG5[ui]: Reading configuration from file" in line for line in first)


def test_foreground_quiet_logs_to_the_file_only(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    output = tmp_path / "quiet.log"
    port = free_port()
    proc = _start_on_port(
        tunnel,
        globals_section(output=output, foreground="quiet")
        + server_section("a", f"127.0.0.1:{port}", echo_server.port, pki),
        port,
    )
    assert tls_echo(port, pki) == b"ping"
    wait_until(lambda: "Connection closed" in output.read_text(), 5, "the log file")
    assert proc.stop() == 0
    assert proc.log() == "", "foreground = quiet writes nothing to stderr"
    assert "Terminated" in output.read_text()


# -- syslog --------------------------------------------------------------------------------


def test_syslog_yes_runs_whether_or_not_there_is_a_syslog(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    proc = tunnel(
        globals_section(syslog="yes") + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    )
    assert tls_echo(proc.port("a"), pki) == b"ping"
    proc.wait_for_log("Connection closed")
    assert proc.stop() == 0
    assert "Traceback" not in proc.log()
    assert "Terminated" in proc.log()


@pytest.fixture
def fake_syslog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket of ours where the log looks for ``/dev/log``; it never reads."""
    path = tmp_path / "log"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    receiver.bind(str(path))
    monkeypatch.setattr(log_module, "SYSLOG_SOCKET_PATHS", (str(tmp_path / "absent"), str(path)))
    yield receiver
    receiver.close()


def _settings(
    *,
    foreground: Foreground = Foreground.QUIET,
    log_level: LogLevel | None = None,
    service_name: str = "stunnel",
) -> GlobalConfig:
    """Syslog on, stderr off unless asked: what the syslog tests configure."""
    return GlobalConfig(
        foreground=foreground,
        syslog=True,
        log_level=log_level or LogLevel(),
        service_name=service_name,
    )


def test_syslog_datagrams_use_the_facility_level_and_service_name(
    fake_syslog: socket.socket,
) -> None:
    log = Log()
    try:
        log.configure(
            _settings(log_level=LogLevel(level=INFO, facility="local3"), service_name="edge")
        )
        log(ERR, "something broke")
        log(INFO, "something happened", ident="7")
        log(DEBUG, "not at this level")
    finally:
        log.close()
    fake_syslog.settimeout(1)
    first = fake_syslog.recv(4096).decode()
    second = fake_syslog.recv(4096).decode()
    local3 = 19
    assert first == f"<{local3 * 8 + ERR}>edge[{os.getpid()}]: LOG3[ui]: something broke"
    assert second == f"<{local3 * 8 + INFO}>edge[{os.getpid()}]: LOG6[7]: something happened"
    fake_syslog.setblocking(False)
    with pytest.raises(BlockingIOError):
        fake_syslog.recv(4096)


def test_syslog_name_defaults_to_stunnel(fake_syslog: socket.socket) -> None:
    """A drop-in replacement keeps the syslog tag that filters and alerts match on."""
    log = Log()
    try:
        log.configure(_settings())
        log(WARNING, "hello")
    finally:
        log.close()
    fake_syslog.settimeout(1)
    assert (
        fake_syslog.recv(4096).decode()
        == f"<{3 * 8 + WARNING}>stunnel[{os.getpid()}]: LOG4[ui]: hello"
    )


def test_a_syslog_that_never_reads_cannot_stall_logging(fake_syslog: socket.socket) -> None:
    log = Log()
    count = 20_000
    try:
        log.configure(_settings())
        started = time.monotonic()
        for number in range(count):
            log(NOTICE, f"line {number} " + "x" * 200)
        elapsed = time.monotonic() - started
    finally:
        log.close()
    assert elapsed < 2.0, f"{count} lines took {elapsed:.1f} s: the syslog socket blocked"
    fake_syslog.setblocking(False)
    received = 0
    while True:
        try:
            fake_syslog.recv(4096)
        except BlockingIOError:
            break
        received += 1
    assert 0 < received < count, "some lines arrive; the rest are dropped, not queued"


def test_no_syslog_socket_means_no_syslog_and_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    a_folder = tmp_path / "folder"
    a_folder.mkdir()
    monkeypatch.setattr(log_module, "SYSLOG_SOCKET_PATHS", (str(tmp_path / "none"), str(a_folder)))
    log = Log()
    try:
        log.configure(_settings(foreground=Foreground.YES))
        log(NOTICE, "still logging")
    finally:
        log.close()
    assert re.match(LOG_LINE + "still logging$", capsys.readouterr().err)


# -- before and after configuration (in process) -----------------------------------------


def test_lines_before_configuration_are_replayed_at_the_configured_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "replay.log"
    log = Log()
    try:
        log(NOTICE, "banner")
        log(INFO, "details")
        log(DEBUG, "noise")
        assert capsys.readouterr().err == "", "nothing is written before the level is known"
        log.configure(
            GlobalConfig(
                foreground=Foreground.YES,
                output=str(output),
                syslog=False,
                log_level=LogLevel(level=INFO),
            )
        )
        log(NOTICE, "after")
    finally:
        log.close()
    for text in (capsys.readouterr().err, output.read_text()):
        bodies = [line[20:] for line in text.splitlines()]
        assert bodies == ["LOG5[ui]: banner", "LOG6[ui]: details", "LOG5[ui]: after"]


def test_lines_of_a_failed_start_are_flushed_with_markers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = Log()
    log(NOTICE, "Reading configuration")
    log(INFO, "Initializing service [a]")
    log(DEBUG, "TLS options: 0x0")
    log(WARNING, "a warning")
    log(ERR, "Configuration failed")
    log.flush_early()
    log.flush_early()  # a second flush writes nothing again
    assert capsys.readouterr().err.splitlines() == [
        "[.] Reading configuration",
        "[ ] Initializing service [a]",
        "[!] a warning",
        "[!] Configuration failed",
    ]
