"""Process-level helpers: free ports, port probes, pid files, raw launches, TLS echo.

The harness in ``tests/support`` starts tunnels that log to a pipe and are stopped by
the fixture; the lifecycle tests also need what it does not do: launch with extra
descriptors (``-fd``), let a process daemonize, check that a port is free by binding it,
and wait for a pid that is not our child to go away.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support.clients import tls_connect
from tests.support.pki import PKIFiles
from tests.support.tunnel import TLSTUNNEL

LOG_LINE = r"\d{4}\.\d{2}\.\d{2} \d{2}:\d{2}:\d{2} LOG[0-7]\[(?:ui|\d+)\]: "


def free_port() -> int:
    """A port nobody listens on right now (bind to 0, close)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def port_is_listening(port: int) -> bool:
    """True when someone listens on 127.0.0.1:``port`` (we cannot bind and listen)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


@contextlib.contextmanager
def occupied_port() -> Iterator[int]:
    """A port held by a listening socket of ours for the duration of the block."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        yield holder.getsockname()[1]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def tunnel_env() -> dict[str, str]:
    """The environment the harness gives tunnels: our ``src`` first on the path."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def launch(
    args: list[str], log_path: Path, *, pass_fds: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start ``tlstunnel ARGS`` with stdout and stderr both going to ``log_path``."""
    with open(log_path, "wb") as log_handle:
        return subprocess.Popen(
            [*TLSTUNNEL, *args],
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            env=tunnel_env(),
            pass_fds=pass_fds,
        )


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a daemon is not our child)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def kill_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL if it lingers; for processes that are not our children."""
    if not pid_running(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    if pid_running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def processes_with_argument(argument: str) -> list[int]:
    """Pids whose command line contains ``argument`` (to clean up a lost daemon)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in arguments and pid_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def read_pid_file(path: Path, timeout: float = 10.0) -> int:
    """Wait for ``path`` to hold a pid and return it."""
    wait_until(
        lambda: path.exists() and path.read_text().strip().isdigit(), timeout, f"pid in {path}"
    )
    return int(path.read_text())


def tls_echo(port: int, pki: PKIFiles, payload: bytes = b"ping") -> bytes:
    """One connection through a server-mode tunnel to an echo backend."""
    with tls_connect(port, pki.ca, timeout=5) as conn:
        conn.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def server_section(name: str, accept: str, backend_port: int, pki: PKIFiles) -> str:
    """A server-mode service: TLS on ``accept``, plaintext to the backend."""
    return f"[{name}]\naccept = {accept}\nconnect = 127.0.0.1:{backend_port}\ncert = {pki.server}\n"


def globals_section(
    *,
    pid: Path | None = None,
    output: Path | None = None,
    debug: str = "info",
    foreground: str = "yes",
    syslog: str = "no",
    extra: str = "",
) -> str:
    """Every global line the harness would otherwise guess from the text, written out."""
    return (
        f"foreground = {foreground}\n"
        f"pid = {pid if pid is not None else ''}\n"
        f"debug = {debug}\n"
        f"syslog = {syslog}\n" + (f"output = {output}\n" if output is not None else "") + extra
    )
