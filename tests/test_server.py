"""The server's lifecycle driven by real signals: stop, reload, reopen, list, daemonize.

Each test runs tlstunnel as a separate process, sends it the signal an operator (or
systemd, or logrotate) would, and checks what the outside world sees: exit codes, the
pid file, which ports accept, where new connections go, and that connections already
open survive a reload.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TunnelFactory
from tests.lifecycle.helpers import (
    free_port,
    globals_section,
    kill_pid,
    launch,
    occupied_port,
    pid_running,
    port_is_listening,
    processes_with_argument,
    read_pid_file,
    server_section,
    tls_echo,
    wait_until,
)
from tests.support.backends import EchoServer
from tests.support.clients import tls_connect
from tests.support.pki import PKIFiles
from tests.support.tunnel import TunnelProcess, wait_port_closed


@pytest.fixture
def second_echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def _reload(proc: TunnelProcess, text: str, outcome: str = "Configuration successful") -> str:
    """Rewrite the configuration, send SIGHUP and wait for the reload's last line."""
    before = len(re.findall(re.escape(outcome), proc.log()))
    proc.config_path.write_text(text)
    proc.send_signal(signal.SIGHUP)
    return proc.wait_for_log(re.escape(outcome), count=before + 1)


def _bound_ports(proc: TunnelProcess, service: str) -> list[int]:
    """Every port a service was reported bound to, at start and at each reload."""
    return [int(address.rsplit(":", 1)[1]) for address in proc.addresses().get(service, [])]


def _echo_through(port: int, pki: PKIFiles, payload: bytes = b"ping") -> None:
    assert tls_echo(port, pki, payload) == payload


# -- stopping ----------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_stop_signal_exits_0_closing_port_connections_and_pid_file(
    tunnel: TunnelFactory,
    pki: PKIFiles,
    echo_server: EchoServer,
    tmp_path: Path,
    signum: signal.Signals,
) -> None:
    pid_file = tmp_path / "stop.pid"
    proc = tunnel(
        globals_section(pid=pid_file) + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    )
    port = proc.port("a")
    assert pid_file.read_text() == f"{proc.process.pid}\n"
    with tls_connect(port, pki.ca, timeout=5) as live:
        live.sendall(b"alive")
        assert live.recv(5) == b"alive"
        proc.wait_for_log(r"LOG5\[\d+\]: Service \[a\] accepted connection")
        started = time.monotonic()
        proc.send_signal(signum)
        live.settimeout(3)
        try:
            tail = live.recv(100)
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            tail = b""
        assert tail == b"", "the live connection must be closed, not left open"
        assert time.monotonic() - started < 2.5, "the client waited too long for the close"
    assert proc.process.wait(5) == 0
    assert time.monotonic() - started < 4
    log = proc.log()
    assert re.search(r"LOG5\[ui\]: Terminated", log), log
    assert not pid_file.exists(), "the pid file must be removed on exit"
    assert not port_is_listening(port)


def test_pid_file_holds_the_pid_while_running(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    pid_file = tmp_path / "nested" / "run.pid"
    pid_file.parent.mkdir()
    proc = tunnel(
        globals_section(pid=pid_file) + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    )
    assert pid_file.read_text() == f"{proc.process.pid}\n"
    _echo_through(proc.port("a"), pki)
    assert pid_file.read_text() == f"{proc.process.pid}\n"


def test_pid_file_of_another_instance_is_left_alone(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    """If another instance has since written its pid there, exiting must not remove it."""
    pid_file = tmp_path / "shared.pid"
    proc = tunnel(
        globals_section(pid=pid_file) + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    )
    pid_file.write_text("999999\n")
    assert proc.stop() == 0
    assert pid_file.read_text() == "999999\n"


# -- SIGHUP: reload ----------------------------------------------------------------------


class _Prober:
    """Connects to a port in a loop (plain TCP) and counts refusals."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connected = 0
        self.refused: list[OSError] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                    self.connected += 1
            except OSError as exc:
                self.refused.append(exc)
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_reload_sends_new_clients_to_the_new_backend_on_the_same_socket(
    tunnel: TunnelFactory,
    pki: PKIFiles,
    echo_server: EchoServer,
    second_echo: EchoServer,
) -> None:
    head = globals_section()
    proc = tunnel(head + server_section("a", "127.0.0.1:0", echo_server.port, pki))
    port = proc.port("a")
    _echo_through(port, pki)
    assert (echo_server.accepted, second_echo.accepted) == (1, 0)

    prober = _Prober(port)
    try:
        for backend in (second_echo, echo_server, second_echo):
            _reload(proc, head + server_section("a", "127.0.0.1:0", backend.port, pki))
    finally:
        prober.stop()
    assert prober.refused == [], f"clients were refused during the reload: {prober.refused[:3]}"
    assert prober.connected > 0

    first_before = echo_server.accepted
    _echo_through(port, pki)
    assert second_echo.accepted >= 1
    assert echo_server.accepted == first_before, "a new connection went to the old backend"
    assert _bound_ports(proc, "a") == [port] * 4, "the listening socket must be kept"
    assert "Reloading configuration" in proc.log()


def test_connection_open_before_a_reload_keeps_working_after_it(
    tunnel: TunnelFactory,
    pki: PKIFiles,
    echo_server: EchoServer,
    second_echo: EchoServer,
) -> None:
    head = globals_section()
    proc = tunnel(head + server_section("a", "127.0.0.1:0", echo_server.port, pki))
    port = proc.port("a")
    with tls_connect(port, pki.ca, timeout=5) as old:
        old.sendall(b"before")
        assert old.recv(6) == b"before"
        _reload(proc, head + server_section("a", "127.0.0.1:0", second_echo.port, pki))
        _echo_through(port, pki, b"new")
        proc.wait_for_log(r"Connection closed: 3 byte")
        old.sendall(b"after")
        assert old.recv(5) == b"after"
        proc.send_signal(signal.SIGUSR2)
        proc.wait_for_log(r"Listed 1 active connection")
    assert echo_server.accepted == 1, "the old connection keeps its old backend"
    assert second_echo.accepted == 1
    proc.wait_for_log(r"Connection closed: 11 byte\(s\) sent to TLS, 11 byte\(s\) sent to socket")


@pytest.mark.parametrize(
    "case",
    [
        ("this is not an option line\n", r":9: "),
        ("cert = /nonexistent/cert.pem\n", r":9: cert: "),
    ],
    ids=["syntax", "missing-cert"],
)
def test_broken_configuration_on_reload_keeps_the_running_one(
    tunnel: TunnelFactory,
    pki: PKIFiles,
    echo_server: EchoServer,
    second_echo: EchoServer,
    case: tuple[str, str],
) -> None:
    mistake, where = case  # the mistake goes on line 9 and is reported there
    head = globals_section()  # 4 lines; the service takes lines 5-8
    good = head + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    proc = tunnel(good)
    port = proc.port("a")
    broken = head + server_section("a", "127.0.0.1:0", second_echo.port, pki) + mistake
    log = _reload(proc, broken, "still running the previous configuration")
    assert re.search(rf"LOG3\[ui\]: {re.escape(str(proc.config_path))}{where}", log), log
    assert proc.process.poll() is None
    _echo_through(port, pki)
    assert second_echo.accepted == 0, "the broken configuration must not take effect"
    assert echo_server.accepted == 1
    # Fixing the file and reloading again works.
    _reload(proc, head + server_section("a", "127.0.0.1:0", second_echo.port, pki))
    _echo_through(port, pki)
    assert second_echo.accepted == 1


def test_reload_with_an_unusable_key_keeps_the_running_one(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    head = globals_section()
    proc = tunnel(head + server_section("a", "127.0.0.1:0", echo_server.port, pki))
    port = proc.port("a")
    broken = head + (
        f"[a]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo_server.port}\n"
        f"cert = {pki.server_cert}\nkey = {pki.client}\n"
    )
    log = _reload(proc, broken, "still running the previous configuration")
    assert "Service [a]: the private key" in log
    _echo_through(port, pki)


def test_reload_binds_an_added_service_and_closes_a_removed_one(
    tunnel: TunnelFactory,
    pki: PKIFiles,
    echo_server: EchoServer,
    second_echo: EchoServer,
) -> None:
    port_a, port_b = free_port(), free_port()
    head = globals_section()
    section_a = server_section("a", f"127.0.0.1:{port_a}", echo_server.port, pki)
    section_b = server_section("b", f"127.0.0.1:{port_b}", second_echo.port, pki)
    proc = tunnel(head + section_a)
    assert not port_is_listening(port_b)

    _reload(proc, head + section_a + section_b)
    _echo_through(port_b, pki)
    assert second_echo.accepted == 1
    _echo_through(port_a, pki)

    with tls_connect(port_a, pki.ca, timeout=5) as survivor:
        survivor.sendall(b"1")
        assert survivor.recv(1) == b"1"
        _reload(proc, head + section_b)
        wait_port_closed(port_a)
        assert not port_is_listening(port_a), "a removed service must release its port"
        # A live connection of the removed service is not cut by the reload.
        survivor.sendall(b"2")
        assert survivor.recv(1) == b"2"
    _echo_through(port_b, pki)


def test_reload_keeps_a_port_zero_service_on_its_port_while_others_change(
    tunnel: TunnelFactory,
    pki: PKIFiles,
    echo_server: EchoServer,
    second_echo: EchoServer,
) -> None:
    port_b, port_c = free_port(), free_port()
    head = globals_section()
    section_a = server_section("a", "127.0.0.1:0", echo_server.port, pki)
    proc = tunnel(
        head + section_a + server_section("b", f"127.0.0.1:{port_b}", echo_server.port, pki)
    )
    port_a = proc.port("a")
    # [c] comes first now, [b] is gone, [a] is unchanged but in another position.
    _reload(
        proc, head + server_section("c", f"127.0.0.1:{port_c}", second_echo.port, pki) + section_a
    )
    assert _bound_ports(proc, "a") == [port_a, port_a]
    _echo_through(port_a, pki)
    _echo_through(port_c, pki)
    assert second_echo.accepted == 1
    wait_port_closed(port_b)


def test_reload_can_swap_two_fixed_ports_between_services(
    tunnel: TunnelFactory,
    pki: PKIFiles,
    echo_server: EchoServer,
    second_echo: EchoServer,
) -> None:
    port_1, port_2 = free_port(), free_port()
    head = globals_section()
    proc = tunnel(
        head
        + server_section("a", f"127.0.0.1:{port_1}", echo_server.port, pki)
        + server_section("b", f"127.0.0.1:{port_2}", second_echo.port, pki)
    )
    _reload(
        proc,
        head
        + server_section("a", f"127.0.0.1:{port_2}", echo_server.port, pki)
        + server_section("b", f"127.0.0.1:{port_1}", second_echo.port, pki),
    )
    _echo_through(port_1, pki)
    assert (echo_server.accepted, second_echo.accepted) == (0, 1), "port 1 now belongs to [b]"
    _echo_through(port_2, pki)
    assert (echo_server.accepted, second_echo.accepted) == (1, 1), "port 2 now belongs to [a]"
    assert "Error binding" not in proc.log()


def test_reload_that_cannot_bind_keeps_everything_and_binds_nothing_new(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    port_new = free_port()
    head = globals_section()
    section_a = server_section("a", "127.0.0.1:0", echo_server.port, pki)
    proc = tunnel(head + section_a)
    port_a = proc.port("a")
    with occupied_port() as busy:
        log = _reload(
            proc,
            head
            + section_a
            + server_section("fresh", f"127.0.0.1:{port_new}", echo_server.port, pki)
            + server_section("busy", f"127.0.0.1:{busy}", echo_server.port, pki),
            "still running the previous configuration",
        )
    assert re.search(
        rf"Error binding service \[busy\] to 127\.0\.0\.1:{busy}: Address already in use", log
    ), log
    assert not port_is_listening(port_new), "a failed reload must release what it bound"
    _echo_through(port_a, pki)


# -- SIGUSR1 / SIGUSR2 -------------------------------------------------------------------


def test_sigusr1_reopens_the_log_file_at_its_path(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    output = tmp_path / "rotating.log"
    rotated = tmp_path / "rotating.log.1"
    proc = tunnel(
        globals_section(output=output) + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    )
    _echo_through(proc.port("a"), pki)
    proc.wait_for_log(r"LOG5\[\d+\]: Connection closed")
    output.rename(rotated)
    proc.send_signal(signal.SIGUSR1)
    wait_until(output.exists, 5, "a new log file at the original path")
    wait_until(lambda: "Log file reopened" in output.read_text(), 5, "the reopen notice")
    _echo_through(proc.port("a"), pki)
    proc.wait_for_log(r"Connection closed", count=2)
    new_text = output.read_text()
    old_text = rotated.read_text()
    assert re.search(r"LOG5\[\d+\]: Service \[a\] accepted connection", new_text)
    assert new_text.count("accepted connection") == 1, "new lines go to the new file only"
    assert old_text.count("accepted connection") == 1
    assert "Log file reopened" not in old_text
    assert "Accepting new connections" in old_text


def test_sigusr2_lists_the_active_connections(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer
) -> None:
    proc = tunnel(globals_section() + server_section("a", "127.0.0.1:0", echo_server.port, pki))
    with tls_connect(proc.port("a"), pki.ca, timeout=5) as live:
        live.sendall(b"x")
        assert live.recv(1) == b"x"
        client_address = "{}:{}".format(*live.getsockname())
        proc.send_signal(signal.SIGUSR2)
        log = proc.wait_for_log(r"Listed \d+ active connection\(s\)")
    listing = log[log.index("Active connections:") :]
    assert re.search(r"LOG0\[ui\]: Active connections:", log)
    assert re.search(rf"service \[a\] from {re.escape(client_address)}\b", listing), listing
    assert "LOG0[ui]: Listed 1 active connection(s)" in listing


# -- foreground = no ---------------------------------------------------------------------


def test_foreground_no_daemonizes_and_serves(
    tmp_path: Path, pki: PKIFiles, echo_server: EchoServer
) -> None:
    port = free_port()
    pid_file = tmp_path / "daemon.pid"
    output = tmp_path / "daemon.log"
    config = tmp_path / "daemon.conf"
    config.write_text(
        globals_section(pid=pid_file, output=output, foreground="no")
        + server_section("d", f"127.0.0.1:{port}", echo_server.port, pki)
    )
    launcher_log = tmp_path / "launcher.log"
    launcher = launch([str(config)], launcher_log)
    daemon_pid: int | None = None
    try:
        try:
            assert launcher.wait(10) == 0, launcher_log.read_text()
        except subprocess.TimeoutExpired:
            raise AssertionError("foreground = no: the launched process did not exit") from None
        daemon_pid = read_pid_file(pid_file)
        assert daemon_pid != launcher.pid
        assert pid_running(daemon_pid)
        _echo_through(port, pki, b"from the daemon")
        wait_until(lambda: "Connection closed" in output.read_text(), 5, "the daemon's log")
        launcher_text = launcher_log.read_text()
        assert "accepted connection" not in launcher_text, "a daemon does not log to stderr"
        kill_pid(daemon_pid)
        assert not pid_running(daemon_pid)
        wait_until(lambda: not pid_file.exists(), 5, "the daemon to remove its pid file")
        assert "Terminated" in output.read_text()
        assert not port_is_listening(port)
    finally:
        leftovers = processes_with_argument(str(config))
        if daemon_pid is not None:
            leftovers.append(daemon_pid)
        for pid in leftovers:
            kill_pid(pid)
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
