"""The command line as a user meets it: real processes, exit codes, stderr, ports.

stunnel's informational switches are compared with the installed stunnel4 where the
output is meant to match (the ``-options`` list, the ``-sockets`` table).  Every
failure path checks three things a script or an init system relies on: the exit code,
a line a person can act on, and that nothing was left behind (no port bound, no pid
file).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.lifecycle.helpers import (
    free_port,
    globals_section,
    kill_pid,
    launch,
    occupied_port,
    port_is_listening,
    processes_with_argument,
    server_section,
    stop_process,
    tls_echo,
    tunnel_env,
    wait_until,
)
from tests.support.backends import EchoServer
from tests.support.pki import PKIFiles
from tests.support.tunnel import BOUND, run_tlstunnel

INFORMATIONAL = {
    "-help": "Usage: tlstunnel",
    "-version": "Global options:",
    "-sockets": "Socket option defaults:",
    "-options": "Supported TLS options:",
}


def _stunnel4() -> str:
    path = shutil.which("stunnel4") or shutil.which("stunnel")
    if path is None:
        pytest.skip("stunnel4 is not installed")
    return path


def _stunnel4_output(switch: str) -> str:
    run = subprocess.run(
        [_stunnel4(), switch], capture_output=True, text=True, timeout=20, check=False
    )
    assert run.returncode == 0, run.stderr
    return run.stderr


# -- informational switches ------------------------------------------------------------


@pytest.mark.parametrize("switch", sorted(INFORMATIONAL))
def test_informational_switch_writes_to_stderr_and_exits_0(switch: str) -> None:
    run = run_tlstunnel(switch)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "", "stunnel writes these to stderr; stdout must stay empty"
    assert run.stderr.startswith("tlstunnel "), run.stderr[:200]
    assert INFORMATIONAL[switch] in run.stderr


@pytest.mark.parametrize("switch", ["--help", "--version"])
def test_long_forms_match_the_stunnel_forms(switch: str) -> None:
    long_form = run_tlstunnel(switch)
    short_form = run_tlstunnel(switch[1:])
    assert long_form.returncode == 0
    assert long_form.stdout == ""
    assert long_form.stderr == short_form.stderr


@pytest.mark.interop
def test_options_lists_exactly_what_stunnel4_lists() -> None:
    def names(text: str) -> list[str]:
        return re.findall(r"^options = (\S+)$", text, re.MULTILINE)

    theirs = names(_stunnel4_output("-options"))
    ours = names(run_tlstunnel("-options").stderr)
    assert theirs, "stunnel4 -options printed no options"
    assert ours == theirs


def _socket_table(text: str) -> dict[str, str]:
    """``-sockets`` rows by option name (the header and ruler are skipped)."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^\s+([A-Z][A-Z0-9_]+)\s+\|(.*)$", line)
        if match:
            rows[match[1]] = re.sub(r"\s+", " ", match[2]).strip()
    return rows


@pytest.mark.interop
def test_sockets_table_has_the_option_names_of_stunnel4() -> None:
    theirs = _socket_table(_stunnel4_output("-sockets"))
    ours = _socket_table(run_tlstunnel("-sockets").stderr)
    assert "SO_REUSEADDR" in theirs
    assert list(ours) == list(theirs)


@pytest.mark.interop
def test_sockets_table_matches_stunnel4_row_for_row() -> None:
    theirs = _socket_table(_stunnel4_output("-sockets"))
    ours = _socket_table(run_tlstunnel("-sockets").stderr)
    assert ours == theirs


def test_module_and_console_script_are_the_same_program() -> None:
    script = Path(sysconfig.get_path("scripts")) / "tlstunnel"
    if not script.exists():
        pytest.skip(f"the console script is not installed at {script}")
    by_script = subprocess.run(
        [str(script), "-version"],
        capture_output=True,
        text=True,
        timeout=20,
        env=tunnel_env(),
        check=False,
    )
    by_module = run_tlstunnel("-version")
    assert by_script.returncode == 0, by_script.stderr
    assert by_script.stdout == ""
    assert by_script.stderr == by_module.stderr


# -- usage errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["-bogus"], ["--nonsense"], ["-help", "extra"], ["-fd"], ["-fd", "three"], ["a", "b"]],
)
def test_bad_command_line_exits_2_with_a_usage_line(args: list[str]) -> None:
    run = run_tlstunnel(*args)
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    assert re.search(r"^\[!\] Usage: tlstunnel \[FILE\] \| -fd N", run.stderr, re.MULTILINE)
    assert "Command line:" in run.stderr


def test_missing_file_exits_1_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "stunnel.conf"
    run = run_tlstunnel(str(missing))
    assert run.returncode == 1
    assert re.search(
        rf"^\[!\] {re.escape(str(missing))}: .*No such file or directory$",
        run.stderr,
        re.MULTILINE,
    ), run.stderr
    assert "[!] Configuration failed" in run.stderr


# -- -fd N -------------------------------------------------------------------------------


def test_fd_reads_the_configuration_from_a_descriptor_and_serves(
    tmp_path: Path, pki: PKIFiles, echo_server: EchoServer
) -> None:
    config = globals_section() + server_section("fd", "127.0.0.1:0", echo_server.port, pki)
    read_end, write_end = os.pipe()
    os.write(write_end, config.encode())
    os.close(write_end)
    log_path = tmp_path / "fd.log"
    try:
        process = launch(["-fd", str(read_end)], log_path, pass_fds=(read_end,))
    finally:
        os.close(read_end)
    try:
        wait_until(lambda: "Accepting new connections" in log_path.read_text(), 15, "startup")
        log = log_path.read_text()
        assert f"Reading configuration from descriptor {read_end}" in log
        match = BOUND.search(log)
        assert match is not None and match["name"] == "fd"
        port = int(match["addr"].rsplit(":", 1)[1])
        assert tls_echo(port, pki, b"through -fd") == b"through -fd"
        # A descriptor cannot be read twice: SIGHUP says so and keeps serving.
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: "Cannot reload" in log_path.read_text(), 10, "the reload refusal")
        assert "read from a descriptor" in log_path.read_text()
        assert tls_echo(port, pki) == b"ping"
    finally:
        stop_process(process)
    assert process.returncode == 0


# -- --check -----------------------------------------------------------------------------


def test_check_accepts_a_good_file_without_binding_or_writing_anything(
    tmp_path: Path, pki: PKIFiles
) -> None:
    pid_file = tmp_path / "check.pid"
    output = tmp_path / "check.log"
    with occupied_port() as port:
        # The port is held by us: a --check that tried to bind would fail.
        config = tmp_path / "good.conf"
        config.write_text(
            globals_section(pid=pid_file, output=output)
            + server_section("good", f"127.0.0.1:{port}", 9, pki)
        )
        run = run_tlstunnel("--check", str(config))
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert f"Configuration {config} is valid: 1 service(s)" in run.stderr
    assert "Address already in use" not in run.stderr
    assert "bound to" not in run.stderr
    assert not pid_file.exists(), "--check must not write a pid file"
    assert not output.exists(), "--check must not open the log file"


def test_check_reports_every_mistake_with_file_line_and_option(
    tmp_path: Path, pki: PKIFiles
) -> None:
    port = free_port()
    pid_file = tmp_path / "bad.pid"
    config = tmp_path / "bad.conf"
    config.write_text(
        globals_section(pid=pid_file)  # lines 1-4
        + "colour = blue\n"  # line 5: an option that does not exist
        + server_section("bad", f"127.0.0.1:{port}", 9, pki)  # lines 6-9
        + "verify = 9\n"  # line 10: a value out of range
        + "TIMEOUTidle = soon\n"  # line 11: not a number
    )
    run = run_tlstunnel("--check", str(config))
    assert run.returncode == 1
    assert run.stdout == ""
    for line, option in ((5, "colour"), (10, "verify"), (11, "TIMEOUTidle")):
        assert re.search(
            rf"^\[!\] {re.escape(str(config))}:{line}: {option}: ", run.stderr, re.MULTILINE
        ), f"line {line} ({option}) not reported:\n{run.stderr}"
    assert "[!] Configuration failed" in run.stderr
    assert not port_is_listening(port)
    assert not pid_file.exists()


# -- failures when running ---------------------------------------------------------------


def _run_expecting_failure(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "stunnel.conf"
    config.write_text(text)
    run = run_tlstunnel(str(config))
    assert run.returncode == 1, run.stderr
    assert run.stdout == ""
    return run


def test_configuration_error_exits_1_binding_nothing(tmp_path: Path, pki: PKIFiles) -> None:
    port = free_port()
    pid_file = tmp_path / "run.pid"
    run = _run_expecting_failure(
        tmp_path,
        globals_section(pid=pid_file)
        + server_section("broken", f"127.0.0.1:{port}", 9, pki)
        + "connect = 127.0.0.1:nope\n",
    )
    assert re.search(r"^\[!\] .*stunnel\.conf:9: connect: ", run.stderr, re.MULTILINE)
    assert run.stderr.rstrip().endswith("[!] Configuration failed")
    assert "bound to" not in run.stderr
    assert not port_is_listening(port)
    assert not pid_file.exists(), "a configuration that failed must not leave a pid file"


def test_missing_certificate_exits_1_naming_the_file_and_line(
    tmp_path: Path, pki: PKIFiles
) -> None:
    port = free_port()
    missing = tmp_path / "missing.pem"
    text = (
        globals_section()
        + f"[web]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:9\ncert = {missing}\n"
    )
    run = _run_expecting_failure(tmp_path, text)
    assert re.search(
        rf"^\[!\] .*stunnel\.conf:8: cert: .*{re.escape(str(missing))} does not exist",
        run.stderr,
        re.MULTILINE,
    ), run.stderr
    assert "[!] Configuration failed" in run.stderr
    assert not port_is_listening(port)


@pytest.mark.xfail(
    strict=True,
    reason="config/options.py: a missing cert file is reported as 'FILE:LINE: cert: ...' "
    "without the service's name; stunnel says 'Service [web]: ...'",
)
def test_missing_certificate_message_names_the_service(tmp_path: Path) -> None:
    text = globals_section() + (
        f"[web]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\ncert = {tmp_path / 'no.pem'}\n"
    )
    run = _run_expecting_failure(tmp_path, text)
    assert re.search(r"^\[!\] .*\[web\].*no\.pem", run.stderr, re.MULTILINE), run.stderr


def test_key_that_does_not_match_exits_1_naming_the_service(tmp_path: Path, pki: PKIFiles) -> None:
    port = free_port()
    pid_file = tmp_path / "key.pid"
    text = globals_section(pid=pid_file) + (
        f"[web]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:9\n"
        f"cert = {pki.server_cert}\nkey = {pki.client}\n"  # the client's key
    )
    run = _run_expecting_failure(tmp_path, text)
    assert re.search(
        rf"^\[!\] Service \[web\]: .*{re.escape(str(pki.client))}.*does not match",
        run.stderr,
        re.MULTILINE,
    ), run.stderr
    assert "[!] Configuration failed" in run.stderr
    assert not port_is_listening(port)
    assert not pid_file.exists()


@pytest.mark.parametrize("foreground", ["yes", "no"])
def test_port_in_use_exits_1_naming_the_service_and_address(
    tmp_path: Path, pki: PKIFiles, foreground: str
) -> None:
    """Like stunnel, binding happens before logging switches to its destinations, so
    the reason reaches the terminal even when the process would have daemonized."""
    other_port = free_port()
    pid_file = tmp_path / "busy.pid"
    output = tmp_path / "busy.log"
    with occupied_port() as port:
        text = (
            globals_section(pid=pid_file, output=output, foreground=foreground)
            + server_section("first", f"127.0.0.1:{other_port}", 9, pki)
            + server_section("busy", f"127.0.0.1:{port}", 9, pki)
        )
        try:
            run = _run_expecting_failure(tmp_path, text)
        finally:
            for pid in processes_with_argument(str(tmp_path / "stunnel.conf")):
                kill_pid(pid)  # a daemon that should never have started
        assert re.search(
            rf"^\[!\] Error binding service \[busy\] to 127\.0\.0\.1:{port}: "
            r"Address already in use \(98\)$",
            run.stderr,
            re.MULTILINE,
        ), run.stderr
    assert not pid_file.exists()
    assert not output.exists(), "the log file is opened only once the ports are bound"
    assert not port_is_listening(other_port), "the service that did bind must be released"


def test_log_file_that_cannot_be_opened_exits_1_and_says_which(
    tmp_path: Path, pki: PKIFiles
) -> None:
    port = free_port()
    pid_file = tmp_path / "log.pid"
    output = tmp_path / "no-such-folder" / "tunnel.log"
    run = _run_expecting_failure(
        tmp_path,
        globals_section(pid=pid_file, output=output)
        + server_section("a", f"127.0.0.1:{port}", 9, pki),
    )
    assert re.search(
        rf"^\[!\] Cannot open log file {re.escape(str(output))}: No such file or directory$",
        run.stderr,
        re.MULTILINE,
    ), run.stderr
    assert not pid_file.exists()
    assert not port_is_listening(port)


def test_ip_freebind_socket_option_binds_on_linux(tmp_path: Path, pki: PKIFiles) -> None:
    config = tmp_path / "freebind.conf"
    config.write_text(
        globals_section()
        + server_section("fb", "127.0.0.1:0", 9, pki)
        + "socket = a:IP_FREEBIND=yes\n"
    )
    log_path = tmp_path / "freebind.log"
    process = launch([str(config)], log_path)
    try:
        wait_until(
            lambda: process.poll() is not None or "Accepting" in log_path.read_text(),
            15,
            "startup or exit",
        )
        assert "Accepting new connections" in log_path.read_text(), log_path.read_text()
    finally:
        stop_process(process)
