"""inetd mode: a configuration without sections and without accept serves the one
connection it is given on standard input and output, then exits.

Each test starts ``python -m tlstunnel FILE`` the way inetd, xinetd or systemd
(``Accept=yes``) would: with a connected socket (or pipes) as stdin and stdout.  The
test talks TLS (or plaintext, in client mode) over the other end.  A stray byte of
log on stdout would break the TLS handshake, so every successful handshake here also
says "nothing but the tunnel wrote to stdout".
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import TunnelFactory
from tests.support.backends import EchoServer
from tests.support.clients import client_context, recv_all
from tests.support.pki import PKIFiles
from tests.support.tunnel import TLSTUNNEL

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="inetd mode needs Unix")

CAT = shutil.which("cat") or "/bin/cat"


def inetd_config(folder: Path, body: str) -> tuple[Path, Path]:
    """A sectionless configuration logging to a file (never to stdout); foreground is
    left at its default, no, which must not daemonize in inetd mode."""
    log = folder / "inetd.log"
    path = folder / "inetd.conf"
    path.write_text(f"syslog = no\noutput = {log}\ndebug = info\n" + body)
    return path, log


def start_inetd(
    config: Path, stdin: int, stdout: int, *, ignore: tuple[int, ...] = ()
) -> subprocess.Popen[bytes]:
    """Start tlstunnel on ``config`` with these descriptors (or subprocess.PIPE), with
    the signals in ``ignore`` ignored (as a shell does for a background job)."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")

    def ignore_signals() -> None:
        for signum in ignore:
            signal.signal(signum, signal.SIG_IGN)

    return subprocess.Popen(
        [*TLSTUNNEL, str(config)],
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=ignore_signals if ignore else None,  # noqa: PLW1509 (single-threaded here)
    )


def finish(process: subprocess.Popen[bytes]) -> bytes:
    """Wait for the exit (it must come on its own) and return what went to stderr."""
    try:
        _, stderr = process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError("tlstunnel did not exit after its one connection") from None
    assert process.returncode == 0, stderr.decode()
    return stderr


def write_script(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def test_exec_cat_on_a_socket_pair(pki: PKIFiles, tmp_path: Path) -> None:
    config, log = inetd_config(tmp_path, f"cert = {pki.server}\nexec = {CAT}\n")
    ours, theirs = socket.socketpair()
    process = start_inetd(config, theirs.fileno(), theirs.fileno())
    theirs.close()
    payload = os.urandom(100_000)
    with client_context(pki.ca).wrap_socket(ours, server_hostname="localhost") as conn:
        conn.sendall(payload)
        echoed = b""
        while len(echoed) < len(payload):
            echoed += conn.recv(65536)
        assert echoed == payload
        conn.unwrap()  # close_notify both ways: cat sees EOF, exits, and so do we
    assert finish(process) == b"", "nothing may be written outside the log file"
    text = log.read_text()
    assert "Configuration successful" in text
    assert "Connection closed: 100000 byte(s) sent to TLS, 100000 byte(s) sent to socket" in text
    assert re.search(r"Child process \d+ finished with code 0", text)


def test_the_client_of_a_tcp_socket_is_named_to_the_program(pki: PKIFiles, tmp_path: Path) -> None:
    """What inetd really passes: an accepted TCP socket.  The program learns the client's
    address, and (foreground = no) its stderr goes into the tunnel, as under inetd."""
    script = write_script(
        tmp_path,
        "who.py",
        """
        import os, sys
        print(os.environ["REMOTE_HOST"], os.environ["REMOTE_PORT"])
        sys.stdout.flush()
        print("to stderr", file=sys.stderr)
        """,
    )
    config, log = inetd_config(tmp_path, f"service = who\ncert = {pki.server}\nexec = {script}\n")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        accepted, _ = listener.accept()
    port = client.getsockname()[1]
    process = start_inetd(config, accepted.fileno(), accepted.fileno())
    accepted.close()
    with client_context(pki.ca).wrap_socket(client, server_hostname="localhost") as conn:
        output = recv_all(conn)
    finish(process)
    assert output.splitlines() == [f"127.0.0.1 {port}".encode(), b"to stderr"]
    assert f"Service [who] accepted connection from 127.0.0.1:{port}" in log.read_text()


def test_connect_to_a_backend(pki: PKIFiles, tmp_path: Path, echo_server: EchoServer) -> None:
    config, log = inetd_config(
        tmp_path, f"cert = {pki.server}\nconnect = 127.0.0.1:{echo_server.port}\n"
    )
    ours, theirs = socket.socketpair()
    process = start_inetd(config, theirs.fileno(), theirs.fileno())
    theirs.close()
    with client_context(pki.ca).wrap_socket(ours, server_hostname="localhost") as conn:
        conn.sendall(b"through the backend\n")
        assert conn.recv(100) == b"through the backend\n"
        conn.unwrap()
    finish(process)
    assert "s_connect: connected 127.0.0.1:" in log.read_text()


def test_client_mode_on_pipes(
    pki: PKIFiles, tmp_path: Path, tunnel: TunnelFactory, echo_server: EchoServer
) -> None:
    """Plaintext on stdin/stdout pipes, TLS out: a pipe's EOF is forwarded, and the
    answer arrives before we exit."""
    server = tunnel(
        f"[tls]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo_server.port}\n"
        f"cert = {pki.server}\n"
    )
    config, log = inetd_config(
        tmp_path,
        f"client = yes\nconnect = 127.0.0.1:{server.port('tls')}\nCAfile = {pki.ca}\n"
        "verifyChain = yes\ncheckHost = localhost\n",
    )
    process = start_inetd(config, subprocess.PIPE, subprocess.PIPE)
    stdout, stderr = process.communicate(b"over pipes\n" * 1000, timeout=10)
    assert process.returncode == 0, stderr.decode()
    assert stdout == b"over pipes\n" * 1000
    assert "TLS connected: new session negotiated" in log.read_text()


def test_it_exits_when_the_client_goes_away(pki: PKIFiles, tmp_path: Path) -> None:
    config, log = inetd_config(tmp_path, f"cert = {pki.server}\nexec = {CAT}\n")
    ours, theirs = socket.socketpair()
    process = start_inetd(config, theirs.fileno(), theirs.fileno())
    theirs.close()
    conn = client_context(pki.ca).wrap_socket(ours, server_hostname="localhost")
    conn.sendall(b"x")
    assert conn.recv(1) == b"x"
    conn.close()  # no close_notify: the client just vanishes
    finish(process)
    assert re.search(r"Connection (closed|reset)", log.read_text())


def test_pty_program_has_the_terminal_on_all_three(pki: PKIFiles, tmp_path: Path) -> None:
    script = write_script(
        tmp_path, "tty.py", "import os\nprint(os.isatty(0), os.isatty(1), os.isatty(2))\n"
    )
    config, _log = inetd_config(tmp_path, f"cert = {pki.server}\nexec = {script}\npty = yes\n")
    ours, theirs = socket.socketpair()
    process = start_inetd(config, theirs.fileno(), theirs.fileno())
    theirs.close()
    with client_context(pki.ca).wrap_socket(ours, server_hostname="localhost") as conn:
        assert recv_all(conn) == b"True True True\r\n"
    finish(process)


def test_a_broken_configuration_starts_nothing(pki: PKIFiles, tmp_path: Path) -> None:
    config, _log = inetd_config(tmp_path, f"cert = {pki.server}\nexec = {CAT}\nconnect = 1\n")
    ours, theirs = socket.socketpair()
    process = start_inetd(config, theirs.fileno(), theirs.fileno())
    theirs.close()
    _, stderr = process.communicate(timeout=10)
    ours.close()
    assert process.returncode == 1
    assert b"keep either exec or connect" in stderr


def test_the_program_gets_default_signal_handling_back(pki: PKIFiles, tmp_path: Path) -> None:
    """Started as a background job, tlstunnel ignores SIGINT and SIGQUIT; like stunnel it
    must not pass that on: the program's masks are those of a plain child of ours."""
    command = "grep$IFS^Sig[IB]$IFS/proc/self/status"
    config, _log = inetd_config(
        tmp_path, f"cert = {pki.server}\nexec = /bin/sh\nexecArgs = sh -c {command}\n"
    )
    ours, theirs = socket.socketpair()
    ignored = (signal.SIGINT, signal.SIGQUIT)
    process = start_inetd(config, theirs.fileno(), theirs.fileno(), ignore=ignored)
    theirs.close()
    with client_context(pki.ca).wrap_socket(ours, server_hostname="localhost") as conn:
        masks = recv_all(conn).decode()
    finish(process)
    plain = subprocess.run(
        ["grep", "^Sig[IB]", "/proc/self/status"], capture_output=True, check=True
    ).stdout.decode()
    assert masks == plain
