"""Running a tunnel under test as a real process: tlstunnel, or stunnel4 for interop.

``start_tunnel`` writes a stunnel-format configuration, starts the program in the
foreground and waits until it logs ``Accepting new connections`` (or exits).  Listening
ports come from its own ``Service [x] (FD=n) bound to ADDR`` lines, so configurations
use ``accept = 127.0.0.1:0`` and tests never race for a fixed port.  Both programs log
that line at level 6, so generated configurations set ``debug = info`` unless told
otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

TLSTUNNEL = [sys.executable, "-m", "tlstunnel"]
BOUND = re.compile(r"Service \[(?P<name>[^\]]+)\] \(FD=\d+\) bound to (?P<addr>\S+)")


def stunnel4_path() -> str:
    path = shutil.which("stunnel4") or shutil.which("stunnel")
    if path is None:
        raise RuntimeError("stunnel4 is not installed (apt-get install stunnel4)")
    return path


class TunnelProcess:
    """A running tunnel and its log.  Use as a context manager, or call ``stop``."""

    def __init__(self, command: list[str], config_path: Path, log_path: Path) -> None:
        self.config_path = config_path
        self.log_path = log_path
        self._log_handle = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2] / "src")
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        self.process = subprocess.Popen(
            [*command, str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def __enter__(self) -> TunnelProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- observing ---------------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until ``pattern`` (a regex) has matched ``count`` times; return the log."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if len(re.findall(pattern, text)) >= count:
                return text
            if self.process.poll() is not None and not re.search(pattern, self.log()):
                raise AssertionError(
                    f"tunnel exited ({self.process.returncode}) before logging {pattern!r}:\n"
                    + text
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the log within {timeout} s:\n{text}")
            time.sleep(0.02)

    def addresses(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for match in BOUND.finditer(self.log()):
            found.setdefault(match["name"], []).append(match["addr"])
        return found

    def port(self, service: str, index: int = 0) -> int:
        return int(self.addresses()[service][index].rsplit(":", 1)[1])

    # -- controlling -------------------------------------------------------------------

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_handle.close()
        return self.process.returncode


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def start_tunnel(
    directory: Path,
    config_text: str,
    *,
    program: str = "tlstunnel",
    name: str = "tunnel",
    ready: bool = True,
) -> TunnelProcess:
    """Start ``program`` ("tlstunnel" or "stunnel4") on a configuration.

    ``config_text`` holds the services; the global lines a foreground test run needs
    are prepended unless the text sets them itself.
    """
    header = ""
    if "foreground" not in config_text:
        header += "foreground = yes\n"
    if "pid" not in config_text:
        header += "pid =\n"
    if not re.search(r"^\s*debug\s*=", config_text, re.MULTILINE):
        header += "debug = info\n"
    if "syslog" not in config_text:
        header += "syslog = no\n"
    config_path = write_config(directory / f"{name}.conf", header + config_text)
    command = TLSTUNNEL if program == "tlstunnel" else [stunnel4_path()]
    tunnel = TunnelProcess(command, config_path, directory / f"{name}.log")
    if ready:
        try:
            tunnel.wait_for_log(r"Accepting new connections|Configuration failed", timeout=15)
            if "Configuration failed" in tunnel.log():
                raise AssertionError("configuration failed:\n" + tunnel.log())
        except BaseException:
            tunnel.stop()
            raise
    return tunnel


def run_tlstunnel(
    *args: str, stdin_fd: int | None = None, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    """Run the command to completion (for -help, --check and failing configurations)."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(  # noqa: PLW1510 (callers check the exit code)
        [*TLSTUNNEL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=stdin_fd if stdin_fd is not None else subprocess.DEVNULL,
        pass_fds=(stdin_fd,) if stdin_fd is not None and stdin_fd > 2 else (),
    )


def wait_port_closed(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"{host}:{port} still accepts connections")
