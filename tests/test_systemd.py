"""systemd integration against a fake service manager: real processes, sockets and signals.

A test plays systemd's part.  For ``Type=notify`` it binds the Unix datagram socket named
in ``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract namespace) and records every
datagram tlstunnel sends: ``READY=1`` once the ports accept, ``RELOADING=1`` then
``READY=1`` around a SIGHUP, ``STOPPING=1`` on SIGTERM, ``WATCHDOG=1`` at the rate asked.
For socket activation it binds and listens itself, then starts tlstunnel through a small
launcher that puts the sockets at descriptors 3, 4, ... and sets ``LISTEN_PID`` to its own
pid before exec'ing tlstunnel, as systemd does between fork and exec.

The in-process tests at the end pin down the parts a process test cannot see: the
address rules for adopting a socket, the environment parsing, and that the watchdog
pings stop while the event loop is stalled.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.lifecycle.helpers import (
    free_port,
    globals_section,
    server_section,
    tls_echo,
    tunnel_env,
    wait_until,
)
from tests.support.backends import EchoServer
from tests.support.pki import PKIFiles
from tests.support.tunnel import TLSTUNNEL, TunnelProcess
from tlstunnel import systemd

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="systemd is POSIX-only")

# Runs in the child between fork and exec: move the sockets passed by number to 3, 4, ...
# (through descriptors >= 100 so no move overwrites another), set the named variables to
# this pid (LISTEN_PID, WATCHDOG_PID: only known after the fork), then exec tlstunnel.
LAUNCHER = """
import fcntl, json, os, sys
fds = json.loads(sys.argv[1])
moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in fds]
for fd in fds:
    os.close(fd)
for index, fd in enumerate(moved):
    os.dup2(fd, 3 + index)  # inheritable, as systemd leaves them
    os.close(fd)
for name in json.loads(sys.argv[2]):
    os.environ[name] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "tlstunnel", *sys.argv[3:]])
"""


# -- the fake service manager ------------------------------------------------------------


class NotifyReceiver:
    """The ``NOTIFY_SOCKET`` end: records each datagram with the time it arrived."""

    def __init__(self, bind_address: str | bytes, env_value: str) -> None:
        self.env_value = env_value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._changed = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closing:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            arrived = time.monotonic()
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            with self._changed:
                self.messages.append((arrived, fields))
                self._changed.notify_all()

    def wait_for(
        self, key: str, *, since: int = 0, timeout: float = 10.0
    ) -> tuple[int, dict[str, str]]:
        """The first message at position ``since`` or later that sets ``key``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(since, len(self.messages)):
                    if key in self.messages[index][1]:
                        return index, self.messages[index][1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key} within {timeout} s: {self.states()}")
                self._changed.wait(left)

    def states(self, since: int = 0) -> list[str]:
        """Every message but the watchdog's, as its first key: READY, RELOADING, ..."""
        with self._changed:
            return [
                next(iter(fields))
                for _arrived, fields in self.messages[since:]
                if "WATCHDOG" not in fields
            ]

    def pings(self) -> list[float]:
        with self._changed:
            return [arrived for arrived, fields in self.messages if "WATCHDOG" in fields]

    def close(self) -> None:
        self._closing = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(params=["path"])
def notify(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyReceiver]:
    """A notify socket: ``path`` (the default) or ``abstract``, chosen by parametrizing."""
    if request.param == "abstract":
        if not sys.platform.startswith("linux"):
            pytest.skip("abstract Unix sockets are Linux-only")
        name = f"tlstunnel-test-{uuid.uuid4().hex}"
        receiver = NotifyReceiver(b"\0" + name.encode(), "@" + name)
    else:
        path = tmp_path / "notify.sock"
        receiver = NotifyReceiver(str(path), str(path))
    yield receiver
    receiver.close()


both_notify_forms = pytest.mark.parametrize("notify", ["path", "abstract"], indirect=True)


def _without_service_manager(env: dict[str, str]) -> dict[str, str]:
    """The test's own environment minus systemd's variables (pytest may run under it)."""
    return {k: v for k, v in env.items() if k not in systemd.SERVICE_MANAGER_VARIABLES}


class SystemdTunnel(TunnelProcess):
    """A tunnel started as systemd would: with its variables, and sockets at fd 3, 4, ...
    (or behind ``prefix``, a real launcher such as systemd-socket-activate).

    Only the start differs from the harness's ``TunnelProcess`` (which cannot pass
    descriptors or extra variables), so everything after it is reused.
    """

    def __init__(
        self,
        directory: Path,
        config_text: str,
        env: dict[str, str],
        *,
        sockets: Sequence[socket.socket] = (),
        own_pid: Sequence[str] = (),
        prefix: Sequence[str] = (),
    ) -> None:
        # Not TunnelProcess.__init__: that one starts the process its own way.
        self.config_path = directory / "tunnel.conf"
        self.config_path.write_text(config_text)
        self.log_path = directory / "tunnel.log"
        self._log_handle = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        fds = [sock.fileno() for sock in sockets]
        command = [*TLSTUNNEL, str(self.config_path)]
        if fds or own_pid:
            launcher = [sys.executable, "-c", LAUNCHER, json.dumps(fds), json.dumps(own_pid)]
            command = [*launcher, str(self.config_path)]
        self.process = subprocess.Popen(
            [*prefix, *command],
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env={**_without_service_manager(tunnel_env()), **env},
            pass_fds=fds,
        )

    def wait_ready(self) -> str:
        return self.wait_for_log(r"Accepting new connections", timeout=15)


Start = Callable[..., SystemdTunnel]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """``start(config_text, env, sockets=..., own_pid=...)``; every tunnel stopped after."""
    started: list[SystemdTunnel] = []

    def launch(config_text: str, env: dict[str, str], **kwargs: Any) -> SystemdTunnel:
        tunnel = SystemdTunnel(tmp_path, config_text, env, **kwargs)
        started.append(tunnel)
        return tunnel

    yield launch
    for tunnel in started:
        tunnel.stop()


def _listening_socket(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(16)
    return sock


def _port(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


def _refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# -- Type=notify: readiness, reload, stop ------------------------------------------------


@both_notify_forms
def test_ready_is_sent_once_every_listener_accepts(
    start: Start,
    notify: NotifyReceiver,
    pki: PKIFiles,
    echo_server: EchoServer,
) -> None:
    ports = [free_port(), free_port()]  # known before READY, without reading the log
    config = (
        globals_section()
        + server_section("a", f"127.0.0.1:{ports[0]}", echo_server.port, pki)
        + server_section("b", f"127.0.0.1:{ports[1]}", echo_server.port, pki)
    )
    tunnel = start(config, {"NOTIFY_SOCKET": notify.env_value})
    _index, ready = notify.wait_for("READY")
    for port in ports:  # at once, no retry: a client told "ready" is never refused
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert tls_echo(ports[0], pki, b"first") == b"first"
    assert tls_echo(ports[1], pki, b"second") == b"second"
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(tunnel.process.pid)
    assert ready["STATUS"] == "Accepting connections on 2 listener(s)"
    assert notify.states() == ["READY"], "READY is sent once, and nothing before it"
    assert tunnel.stop() == 0


@both_notify_forms
def test_sigterm_sends_stopping_then_exits(
    start: Start,
    notify: NotifyReceiver,
    pki: PKIFiles,
    echo_server: EchoServer,
) -> None:
    config = globals_section() + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    tunnel = start(config, {"NOTIFY_SOCKET": notify.env_value})
    notify.wait_for("READY")
    tunnel.send_signal(signal.SIGTERM)
    _index, stopping = notify.wait_for("STOPPING")
    assert stopping["STOPPING"] == "1"
    assert stopping["STATUS"].startswith("Stopping")
    assert tunnel.process.wait(10) == 0
    assert notify.states() == ["READY", "STOPPING"]
    assert "Terminated" in tunnel.log()


@pytest.mark.parametrize("good", [True, False], ids=["good", "broken"])
def test_sighup_sends_reloading_then_ready(
    start: Start,
    notify: NotifyReceiver,
    pki: PKIFiles,
    echo_server: EchoServer,
    good: bool,
) -> None:
    config = globals_section() + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    tunnel = start(config, {"NOTIFY_SOCKET": notify.env_value})
    first, _ready = notify.wait_for("READY")
    port = tunnel.port("a")
    tunnel.config_path.write_text(config + ("" if good else "this is not an option line\n"))
    sent_at = systemd.monotonic_usec()
    tunnel.send_signal(signal.SIGHUP)
    reloading_at, reloading = notify.wait_for("RELOADING", since=first + 1)
    _ready_at, ready = notify.wait_for("READY", since=reloading_at + 1)
    assert reloading["RELOADING"] == "1"
    # MONOTONIC_USEC is CLOCK_MONOTONIC when the reload began: after our SIGHUP, not long.
    assert 0 <= int(reloading["MONOTONIC_USEC"]) - sent_at < 5_000_000
    if good:
        tunnel.wait_for_log("Configuration successful", count=2)
        assert ready["STATUS"] == "Configuration reloaded; accepting connections on 1 listener(s)"
    else:
        tunnel.wait_for_log("still running the previous configuration")
        assert ready["STATUS"].startswith("Reload failed, still running the previous")
    assert notify.states() == ["READY", "RELOADING", "READY"]
    assert tls_echo(port, pki) == b"ping", "the tunnel serves after the reload either way"


def test_notifications_never_stall_the_tunnel(
    start: Start,
    tmp_path: Path,
    pki: PKIFiles,
    echo_server: EchoServer,
) -> None:
    """A manager that never reads (its queue fills up at once with 1 ms watchdog pings):
    sends fail with EAGAIN and are dropped, while the tunnel serves, reloads and stops."""
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    silent.bind(str(tmp_path / "full.sock"))
    try:
        config = globals_section() + server_section("a", "127.0.0.1:0", echo_server.port, pki)
        env = {"NOTIFY_SOCKET": str(tmp_path / "full.sock"), "WATCHDOG_USEC": "2000"}
        tunnel = start(config, env)
        tunnel.wait_ready()
        for _ in range(3):
            assert tls_echo(tunnel.port("a"), pki) == b"ping"
        tunnel.send_signal(signal.SIGHUP)
        tunnel.wait_for_log("Configuration successful", count=2)
        assert tls_echo(tunnel.port("a"), pki) == b"ping"
        started = time.monotonic()
        assert tunnel.stop() == 0
        assert time.monotonic() - started < 5
    finally:
        silent.close()


def test_a_notify_socket_nobody_listens_on_is_ignored(
    start: Start, tmp_path: Path, pki: PKIFiles, echo_server: EchoServer
) -> None:
    config = globals_section() + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    tunnel = start(config, {"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    tunnel.wait_ready()
    assert tls_echo(tunnel.port("a"), pki) == b"ping"
    assert tunnel.stop() == 0


def test_foreground_no_stays_in_the_foreground_under_systemd(
    start: Start,
    tmp_path: Path,
    notify: NotifyReceiver,
    pki: PKIFiles,
    echo_server: EchoServer,
) -> None:
    """``foreground = no`` under Type=notify: no fork (systemd follows the pid it started),
    a warning in the log, and logging goes where ``foreground = no`` sends it."""
    output = tmp_path / "daemon.log"
    config = globals_section(foreground="no", output=output) + server_section(
        "a", "127.0.0.1:0", echo_server.port, pki
    )
    tunnel = start(config, {"NOTIFY_SOCKET": notify.env_value})
    _index, ready = notify.wait_for("READY")
    assert ready["MAINPID"] == str(tunnel.process.pid)
    assert tunnel.process.poll() is None, "the started process must keep running"
    warning = r"LOG4\[ui\]: foreground = no is ignored under systemd"
    wait_until(lambda: re.search(warning, output.read_text()) is not None, 10, "the warning")
    text = output.read_text()
    port = int(re.findall(r"bound to 127\.0\.0\.1:(\d+)", text)[0])
    assert tls_echo(port, pki) == b"ping"
    assert tunnel.stop() == 0
    assert "Terminated" in output.read_text()


def test_notifications_reach_systemd_from_a_chroot_as_nobody(
    start: Start, tmp_path: Path, notify: NotifyReceiver, pki: PKIFiles, echo_server: EchoServer
) -> None:
    """The notify socket's path is out of sight after ``chroot`` (and out of reach after
    ``setuid``): the socket opened and connected at start still gets through."""
    if os.geteuid() != 0:
        pytest.skip("chroot and setuid need root")
    jail = tmp_path / "jail"
    jail.mkdir()
    config = globals_section(extra=f"chroot = {jail}\nsetuid = nobody\n") + server_section(
        "a", "127.0.0.1:0", echo_server.port, pki
    )
    tunnel = start(config, {"NOTIFY_SOCKET": notify.env_value, "WATCHDOG_USEC": "200000"})
    notify.wait_for("READY")
    assert os.readlink(f"/proc/{tunnel.process.pid}/root") == str(jail)
    wait_until(lambda: len(notify.pings()) >= 3, 5, "watchdog pings from inside the jail")
    tunnel.send_signal(signal.SIGHUP)
    # The configuration's path does not exist inside the jail: this reload fails, and
    # says so to systemd too.
    reloading_at, _reloading = notify.wait_for("RELOADING")
    _index, ready = notify.wait_for("READY", since=reloading_at + 1)
    assert ready["STATUS"].startswith("Reload failed")
    tunnel.send_signal(signal.SIGTERM)
    notify.wait_for("STOPPING")
    assert tunnel.process.wait(10) == 0
    assert notify.states() == ["READY", "RELOADING", "READY", "STOPPING"]


# -- the watchdog --------------------------------------------------------------------------


def test_watchdog_pings_every_half_period(
    start: Start,
    notify: NotifyReceiver,
    pki: PKIFiles,
    echo_server: EchoServer,
) -> None:
    config = globals_section() + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    env = {"NOTIFY_SOCKET": notify.env_value, "WATCHDOG_USEC": "200000"}
    start(config, env, own_pid=["WATCHDOG_PID"])  # WATCHDOG_PID = its own pid
    notify.wait_for("READY")
    time.sleep(1.5)
    pings = notify.pings()
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert 10 <= len(pings) <= 20, f"{len(pings)} pings in about 1.5 s at 0.1 s"
    assert 0.08 <= statistics.median(gaps) <= 0.13, gaps


@pytest.mark.parametrize("owner", ["another pid", "not a number"])
def test_watchdog_meant_for_another_process_sends_nothing(
    start: Start,
    notify: NotifyReceiver,
    pki: PKIFiles,
    echo_server: EchoServer,
    owner: str,
) -> None:
    config = globals_section() + server_section("a", "127.0.0.1:0", echo_server.port, pki)
    watchdog_pid = str(os.getpid()) if owner == "another pid" else "x"
    env = {
        "NOTIFY_SOCKET": notify.env_value,
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": watchdog_pid,
    }
    tunnel = start(config, env)
    notify.wait_for("READY")
    time.sleep(0.6)
    assert notify.pings() == []
    assert tunnel.process.poll() is None


# -- socket activation -------------------------------------------------------------------


def test_inherited_socket_is_adopted_instead_of_binding(
    start: Start,
    notify: NotifyReceiver,
    pki: PKIFiles,
    echo_server: EchoServer,
) -> None:
    held = _listening_socket()  # the test keeps the port: binding it again would fail
    port = _port(held)
    config = globals_section() + server_section("a", f"127.0.0.1:{port}", echo_server.port, pki)
    env = {
        "NOTIFY_SOCKET": notify.env_value,
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "tlstunnel.socket",
    }
    try:
        tunnel = start(config, env, sockets=[held], own_pid=["LISTEN_PID"])
        notify.wait_for("READY")
        log = tunnel.wait_for_log("Accepting new connections")
        assert f"Service [a] (FD=3) bound to 127.0.0.1:{port} (from systemd)" in log, log
        assert "Error binding" not in log
        assert "received from systemd" not in log, "the only socket was claimed"
        assert tls_echo(port, pki, b"through fd 3") == b"through fd 3"
        if sys.platform.startswith("linux"):
            flags = Path(f"/proc/{tunnel.process.pid}/fdinfo/3").read_text()
            octal = re.search(r"flags:\s+(\d+)", flags)
            assert octal is not None and int(octal[1], 8) & os.O_CLOEXEC, flags
    finally:
        held.close()
    # The tunnel's own copy keeps serving once ours is gone, and a reload keeps it.
    assert tls_echo(port, pki, b"alone") == b"alone"
    tunnel.send_signal(signal.SIGHUP)
    log = tunnel.wait_for_log("Configuration successful", count=2)
    assert log.count("bound to 127.0.0.1:") == 2
    assert log.count(f"(FD=3) bound to 127.0.0.1:{port} (from systemd)") == 2, "kept on reload"
    assert tls_echo(port, pki, b"after reload") == b"after reload"
    assert tunnel.stop() == 0


def test_unclaimed_inherited_socket_is_closed_with_a_warning(
    start: Start, pki: PKIFiles, echo_server: EchoServer
) -> None:
    claimed, unclaimed = _listening_socket(), _listening_socket()
    claimed_port, unclaimed_port = _port(claimed), _port(unclaimed)
    config = globals_section() + server_section(
        "a", f"127.0.0.1:{claimed_port}", echo_server.port, pki
    )
    env = {"LISTEN_FDS": "2", "LISTEN_FDNAMES": "tls:spare"}
    try:
        tunnel = start(config, env, sockets=[claimed, unclaimed], own_pid=["LISTEN_PID"])
        log = tunnel.wait_ready()
    finally:
        claimed.close()
        unclaimed.close()
    assert f"(FD=3) bound to 127.0.0.1:{claimed_port} (from systemd)" in log, log
    warning = (
        rf"LOG4\[ui\]: Closing FD=4 \(spare\) received from systemd: no service accepts on "
        rf"127\.0\.0\.1:{unclaimed_port}"
    )
    assert re.search(warning, log), log
    # Nobody holds the unclaimed port any more: the tunnel closed its copy.
    assert _refuses(unclaimed_port)
    assert tls_echo(claimed_port, pki) == b"ping"


def test_sockets_meant_for_another_pid_are_left_alone(
    start: Start, pki: PKIFiles, echo_server: EchoServer
) -> None:
    """LISTEN_PID is not ours: the descriptors are not adopted, so binding the port the
    test holds fails, and the tunnel says so and exits 1 as for any busy port."""
    held = _listening_socket()
    port = _port(held)
    config = globals_section() + server_section("a", f"127.0.0.1:{port}", echo_server.port, pki)
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())}
    try:
        tunnel = start(config, env, sockets=[held])
        assert tunnel.process.wait(15) == 1
    finally:
        held.close()
    log = tunnel.log()
    assert re.search(rf"Error binding service \[a\] to 127\.0\.0\.1:{port}: Address", log), log
    assert "from systemd" not in log


def test_systemd_socket_activate_hands_over_its_socket(
    start: Start, notify: NotifyReceiver, pki: PKIFiles, echo_server: EchoServer
) -> None:
    """systemd's own implementation of the protocol: it binds, waits for the first
    client, then execs tlstunnel with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set."""
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        pytest.skip("systemd-socket-activate is not installed")
    port = free_port()
    config = globals_section() + server_section("a", f"127.0.0.1:{port}", echo_server.port, pki)
    passed = {"NOTIFY_SOCKET": notify.env_value, "PYTHONPATH": tunnel_env()["PYTHONPATH"]}
    prefix = [activate, "--listen", f"127.0.0.1:{port}", "--fdname", "tls"]
    prefix += [f"--setenv={name}={value}" for name, value in passed.items()]
    tunnel = start(config, {}, prefix=prefix)
    wait_until(lambda: "Listening on" in tunnel.log(), 10, "systemd-socket-activate to listen")
    # The first client's connection waits in systemd's queue while tlstunnel starts.
    assert tls_echo(port, pki, b"activated") == b"activated"
    _index, ready = notify.wait_for("READY")
    assert ready["MAINPID"] == str(tunnel.process.pid), "exec'd in place: the same pid"
    log = tunnel.wait_for_log(r"Service \[a\] \(FD=3\) bound to .* \(from systemd\)")
    assert f"bound to 127.0.0.1:{port} (from systemd)" in log
    assert tunnel.stop() == 0


CONTRIB = Path(__file__).resolve().parents[1] / "contrib"


def _service_section(unit: str) -> list[str]:
    lines = (CONTRIB / unit).read_text().split("[Service]", 1)[1].split("[Install]", 1)[0]
    return [line for line in lines.splitlines() if line and not line.startswith("#")]


def test_the_two_service_units_differ_only_in_the_file_they_run() -> None:
    plain = _service_section("tlstunnel.service")
    template = _service_section("tlstunnel@.service")
    assert [line.replace("%i.conf", "stunnel.conf").replace("/%i", "") for line in template] == (
        plain
    )
    for expected in (
        "Type=notify",
        "NotifyAccess=main",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/bin/tlstunnel /etc/stunnel/stunnel.conf",
    ):
        assert expected in plain
    assert any(line.startswith("WatchdogSec=") for line in plain)


@pytest.mark.parametrize("unit", ["tlstunnel.service", "tlstunnel@.service", "tlstunnel.socket"])
def test_contrib_units_pass_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart= exists: point it at this Python.
    for name in ("tlstunnel.service", "tlstunnel@.service", "tlstunnel.socket"):
        text = (CONTRIB / name).read_text().replace("/usr/bin/tlstunnel", sys.executable)
        (tmp_path / name).write_text(text)
    target = tmp_path / ("tlstunnel@web.service" if unit == "tlstunnel@.service" else unit)
    if unit == "tlstunnel@.service":
        target.write_text((tmp_path / unit).read_text())
    run = subprocess.run(
        [analyze, "verify", str(target)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == "", run.stderr


# -- in process: the rules behind the behaviour -------------------------------------------


def _inherited(*socks: socket.socket) -> systemd.InheritedSockets:
    return systemd.InheritedSockets(
        [systemd.InheritedSocket(sock.fileno(), f"s{n}", sock) for n, sock in enumerate(socks)]
    )


def test_take_matches_family_address_and_port_exactly() -> None:
    loopback, wildcard = _listening_socket("127.0.0.1"), _listening_socket("0.0.0.0")
    try:
        pool = _inherited(loopback, wildcard)
        assert pool.take("127.0.0.1", _port(wildcard)) is None, "0.0.0.0 is not 127.0.0.1"
        assert pool.take("0.0.0.0", _port(loopback)) is None, "127.0.0.1 is not 0.0.0.0"
        assert pool.take("::1", _port(loopback)) is None, "the family must match"
        assert pool.take("127.0.0.1", 0) is None, "port 0 never matches"
        taken = pool.take("127.0.0.1", _port(loopback))
        assert taken is not None and taken.sock is loopback and taken.name == "s0"
        assert pool.take("127.0.0.1", _port(loopback)) is None, "a socket is taken once"
        found = pool.take("0.0.0.0", _port(wildcard))
        assert found is not None and found.sock is wildcard
        assert not wildcard.getblocking(), "adopted sockets are made non-blocking"
        assert pool.close_unclaimed() == []
    finally:
        loopback.close()
        wildcard.close()


def test_descriptors_that_cannot_listen_are_reported() -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server = _listening_socket()
    client = socket.create_connection(("127.0.0.1", _port(server)))
    accepted, _ = server.accept()
    read_end, write_end = os.pipe()
    try:
        datagram = systemd.inspect_descriptor(os.dup(udp.fileno()), "")
        connected = systemd.inspect_descriptor(os.dup(accepted.fileno()), "conn")
        pipe = systemd.inspect_descriptor(read_end, "pipe")
        pool = systemd.InheritedSockets([datagram, connected, pipe])
        assert pool.take("127.0.0.1", _port(server)) is None, "only listening sockets match"
        warnings = pool.close_unclaimed()
        assert datagram.problem == "not a TCP socket"
        assert connected.problem.startswith("not a listening socket")
        assert pipe.sock is None and pipe.problem.startswith("not an open socket")
        assert re.match(r"Closing FD=\d+ received from systemd: not a TCP socket", warnings[0])
        assert re.match(
            r"Closing FD=\d+ \(conn\) received from systemd: not a listening", warnings[1]
        )
        assert "(pipe) received from systemd: not an open socket" in warnings[2]
        with pytest.raises(OSError):
            os.fstat(read_end)  # closed
    finally:
        for sock in (udp, server, client, accepted):
            sock.close()
        os.close(write_end)


def test_listen_variables_are_read_once_and_removed() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "OTHER": "kept"}
    pool = systemd.InheritedSockets.from_environment(env)
    assert pool.sockets == [], "LISTEN_PID is not ours: nothing is touched"
    assert env == {"OTHER": "kept"}, "children must not see LISTEN_* meant for us"
    garbage = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "many"}
    assert systemd.InheritedSockets.from_environment(garbage).sockets == []
    assert garbage == {}


def test_watchdog_interval_is_half_the_period_for_us_only() -> None:
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "200000"}) == 0.1
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "-5"}) is None
    mine = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "42"}
    assert systemd.watchdog_interval(mine, pid=42) == 1.5
    assert systemd.watchdog_interval(mine, pid=43) is None


def test_notify_addresses() -> None:
    assert systemd.notify_address("/run/systemd/notify") == b"/run/systemd/notify"
    assert systemd.notify_address("@abstract") == b"\0abstract"
    assert systemd.notify_address("relative/path") is None
    assert systemd.notify_address("@") is None
    assert systemd.notify_address("vsock:2:1234") is None
    assert not systemd.Notifier.from_environment({}).enabled
    assert not systemd.Notifier.from_environment({}).send("READY=1")


def test_notifier_sends_one_datagram_per_message(notify: NotifyReceiver) -> None:
    notifier = systemd.Notifier.from_environment({"NOTIFY_SOCKET": notify.env_value})
    try:
        assert notifier.ready("two\nlines")
        _index, message = notify.wait_for("READY")
        assert message == {"READY": "1", "MAINPID": str(os.getpid()), "STATUS": "two lines"}
        assert notifier.stopping("bye")
        assert notify.wait_for("STOPPING")[1] == {"STOPPING": "1", "STATUS": "bye"}
    finally:
        notifier.close()
    assert not notifier.send("READY=1"), "a closed notifier sends nothing"


def test_notifier_to_a_missing_socket_fails_quietly(tmp_path: Path) -> None:
    notifier = systemd.Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    try:
        assert notifier.enabled
        assert notifier.send("READY=1") is False
    finally:
        notifier.close()


def test_watchdog_pings_stop_while_the_loop_is_stalled(notify: NotifyReceiver) -> None:
    notifier = systemd.Notifier.from_environment({"NOTIFY_SOCKET": notify.env_value})
    watchdog = systemd.Watchdog(notifier, 0.05)

    async def run() -> None:
        watchdog.start()
        await asyncio.sleep(0.3)
        time.sleep(0.6)  # a blocking call: the loop is stuck
        await asyncio.sleep(0.3)
        watchdog.stop()

    try:
        asyncio.run(run())
        time.sleep(0.1)
    finally:
        notifier.close()
    pings = notify.pings()
    gaps = [later - earlier for earlier, later in itertools.pairwise(pings)]
    assert max(gaps) >= 0.5, "no ping may arrive while the loop is blocked"
    assert sum(gap < 0.2 for gap in gaps) >= 6, "pings flow before and after the stall"
