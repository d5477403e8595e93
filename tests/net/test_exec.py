"""``exec``: a program per connection on a socket pair or a pty, and ``exec`` + ``connect``.

Real tlstunnel processes run real programs (``/bin/cat``, or small Python scripts the
tests write); real TLS clients talk to them.  Each test checks what a user relies on:
the bytes, the EOFs, the environment the program sees, the log lines, and that no
child is left behind as a zombie.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import TunnelFactory
from tests.support.backends import EchoServer
from tests.support.clients import HalfClosingTLSClient, recv_all, tls_connect
from tests.support.pki import PKIFiles

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="exec needs a Unix system")

CAT = shutil.which("cat") or "/bin/cat"
STARTED = re.compile(r"Local mode child started \(PID=(\d+)\)")


def exec_service(pki: PKIFiles, program: str, extra: str = "") -> str:
    return f"[run]\naccept = 127.0.0.1:0\nexec = {program}\ncert = {pki.server}\n" + extra


def write_script(folder: Path, name: str, body: str) -> Path:
    """An executable Python script: the program a test gives to ``exec``."""
    path = folder / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def assert_reaped(pid: int) -> None:
    """The child is gone: not running, and not a zombie waiting for its parent."""
    deadline = time.monotonic() + 5
    status = Path(f"/proc/{pid}/status")
    while time.monotonic() < deadline:
        try:
            state = next(
                line for line in status.read_text().splitlines() if line.startswith("State:")
            )
        except (FileNotFoundError, ProcessLookupError):
            return
        if "Z" not in state.split()[1]:
            time.sleep(0.05)  # still running
            continue
        time.sleep(0.05)
    raise AssertionError(f"child {pid} was not reaped: {status.read_text()}")


ENV_SCRIPT = """
    import os, sys
    for name in ("REMOTE_HOST", "REMOTE_PORT", "SSL_CLIENT_DN", "SSL_CLIENT_I_DN"):
        print(f"{name}={os.environ.get(name, '-')}")
    print("ARGV=" + "|".join(sys.argv))
    print("INHERITED=" + os.environ.get("TLSTUNNEL_TEST_MARK", "-"))
"""


def program_output(text: bytes) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.decode().splitlines() if "=" in line)
    return dict(pairs)


# -- a program per connection -------------------------------------------------------------


def test_cat_carries_bytes_both_ways_and_half_close_ends_it(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    """The client sends 300 kB and half-closes; cat answers everything, sees EOF, exits;
    the client gets every byte and then close_notify."""
    proc = tunnel(exec_service(pki, CAT))
    client = HalfClosingTLSClient(proc.port("run"), pki.ca)
    payload = os.urandom(300_000)
    client.send(payload)
    client.half_close()
    received, clean = client.receive_all()
    client.close()
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert clean, "the program's EOF must reach the client as close_notify"
    log = proc.wait_for_log(r"Connection closed: 300000 byte\(s\) sent to TLS, 300000 byte")
    pid = int(STARTED.findall(log)[0])
    log = proc.wait_for_log(rf"Child process {pid} finished with code 0")
    assert_reaped(pid)
    assert "Connection reset" not in log


def test_the_environment_names_the_client_and_its_certificate(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = write_script(tmp_path, "env.py", ENV_SCRIPT)
    monkeypatch.setenv("TLSTUNNEL_TEST_MARK", "kept")  # the tunnel's own environment
    extra = f"execArgs = imapd  -x   y\nCAfile = {pki.ca}\nverifyChain = yes\n"
    proc = tunnel(exec_service(pki, str(script), extra))
    with tls_connect(proc.port("run"), pki.ca, cert=pki.client) as conn:
        client_port = conn.getsockname()[1]
        output = program_output(recv_all(conn))
    assert output["REMOTE_HOST"] == "127.0.0.1"
    assert output["REMOTE_PORT"] == str(client_port)
    # trustme names: O=trustme vX, OU=Testing cert #..., CN=...; stunnel's one-line form.
    assert re.fullmatch(r"O=trustme v[\d.]+, OU=Testing cert #\S+", output["SSL_CLIENT_DN"])
    assert re.fullmatch(r"O=trustme v[\d.]+, OU=Testing CA #\S+", output["SSL_CLIENT_I_DN"])
    assert output["ARGV"] == f"{script}|-x|y"  # $0 as the script sees it, then the rest
    assert output["INHERITED"] == "kept"
    proc.wait_for_log(r"Connection closed")


def test_without_a_client_certificate_there_is_no_dn(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path
) -> None:
    script = write_script(tmp_path, "env.py", ENV_SCRIPT)
    proc = tunnel(exec_service(pki, str(script)))
    with tls_connect(proc.port("run"), pki.ca) as conn:
        output = program_output(recv_all(conn))
    assert output["SSL_CLIENT_DN"] == output["SSL_CLIENT_I_DN"] == "-"
    assert output["ARGV"].split("|")[1:] == []


def test_argv0_is_the_one_written_in_exec_args(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path
) -> None:
    """/bin/sh reports its $0 as given, which shows the program got execArgs' first word."""
    proc = tunnel(exec_service(pki, "/bin/sh", "execArgs = imapd -c echo$IFS$0\n"))
    with tls_connect(proc.port("run"), pki.ca) as conn:
        assert recv_all(conn) == b"imapd\n"


def test_a_program_that_exits_early_closes_the_connection(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path
) -> None:
    """The program answers and exits without reading: the client, which has not closed
    anything, still gets the answer, then close_notify, and the connection ends."""
    script = write_script(tmp_path, "bye.py", "print('bye')\nraise SystemExit(7)\n")
    proc = tunnel(exec_service(pki, str(script)))
    with tls_connect(proc.port("run"), pki.ca) as conn:
        conn.sendall(b"data the program never reads\n")
        assert recv_all(conn) == b"bye\n"
        # The client keeps its socket open: the tunnel must end the connection itself.
        # The line it read was never read by the program: lost bytes make it a reset.
        log = proc.wait_for_log(r"Connection reset: 4 byte\(s\) sent to TLS", timeout=5)
    pid = int(STARTED.findall(log)[0])
    proc.wait_for_log(rf"Child process {pid} finished with code 7")  # either order
    assert_reaped(pid)


def test_a_program_killed_by_a_signal_is_logged_as_such(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path
) -> None:
    script = write_script(tmp_path, "die.py", "import os, signal\nos.kill(os.getpid(), 9)\n")
    proc = tunnel(exec_service(pki, str(script)))
    with tls_connect(proc.port("run"), pki.ca) as conn:
        assert recv_all(conn) == b""
    log = proc.wait_for_log(r"Child process \d+ terminated on signal 9")
    assert_reaped(int(STARTED.findall(log)[0]))


def test_many_connections_leave_no_zombies(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    proc = tunnel(exec_service(pki, CAT))
    for index in range(10):
        with tls_connect(proc.port("run"), pki.ca) as conn:
            conn.sendall(b"%d" % index)
            assert conn.recv(10) == b"%d" % index
    log = proc.wait_for_log(r"Child process \d+ finished with code", count=10)
    for pid in STARTED.findall(log):
        assert_reaped(int(pid))


def test_the_program_inherits_no_ignored_or_blocked_signal(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    """Nothing the tunnel ignores or blocks (Python ignores SIGPIPE, for one) leaks into
    the program: its masks are those of a program started straight from here."""
    command = "grep$IFS^Sig[IB]$IFS/proc/self/status"
    proc = tunnel(exec_service(pki, "/bin/sh", f"execArgs = sh -c {command}\n"))
    with tls_connect(proc.port("run"), pki.ca) as conn:
        masks = recv_all(conn).decode()
    # Signals 1-31 only: 32 and 33 belong to the C library's threads (some Python
    # versions leave them marked in a child) and no program can use them.  Not compared
    # with a program started from here: pytest itself may run with SIGINT ignored (a
    # shell's background job), which the tunnel rightly does not pass on either.
    assert _standard_signals(masks) == {"SigIgn": 0, "SigBlk": 0}


def _standard_signals(status: str) -> dict[str, int]:
    masks = {}
    for line in status.splitlines():
        name, value = line.split(":")
        masks[name] = int(value.strip(), 16) & 0x7FFFFFFF
    return masks


def test_the_programs_stderr_goes_to_the_log_in_the_foreground(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path
) -> None:
    """As with stunnel: with foreground = yes the program shares our stderr (the log's
    terminal); the client gets only its standard output."""
    script = write_script(
        tmp_path, "warn.py", "import sys\nprint('out')\nprint('oops', file=sys.stderr)\n"
    )
    proc = tunnel(exec_service(pki, str(script)))
    with tls_connect(proc.port("run"), pki.ca) as conn:
        assert recv_all(conn) == b"out\n"
    proc.wait_for_log(r"(?m)^oops$")


def test_client_mode_speaks_tls_to_the_program(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path
) -> None:
    """client = yes with exec: the program is the TLS server.  Here it is tlstunnel
    itself in inetd mode, serving cat: plaintext in, TLS over the socket pair, cat."""
    inner = tmp_path / "inner.conf"
    inner_log = tmp_path / "inner.log"
    inner.write_text(f"syslog = no\noutput = {inner_log}\ncert = {pki.server}\nexec = {CAT}\n")
    proc = tunnel(
        f"[plain]\nclient = yes\naccept = 127.0.0.1:0\nexec = {sys.executable}\n"
        f"execArgs = python -m tlstunnel {inner}\n"
        f"CAfile = {pki.ca}\nverifyChain = yes\ncheckHost = localhost\n"
    )
    payload = os.urandom(50_000)
    with socket.create_connection(("127.0.0.1", proc.port("plain")), timeout=10) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        assert recv_all(conn) == payload
    log = proc.wait_for_log(r"Connection closed: 50000 byte\(s\) sent to TLS, 50000 byte")
    assert "TLS connected: new session negotiated" in log
    proc.wait_for_log(r"Child process \d+ finished with code 0")  # the inner one has exited
    assert "Connection closed" in inner_log.read_text()


# -- pty -----------------------------------------------------------------------------------


def test_pty_gives_the_program_a_controlling_terminal(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path
) -> None:
    script = write_script(
        tmp_path,
        "tty.py",
        """
        import os
        print("tty", os.isatty(0), os.isatty(1))
        with open("/dev/tty", "w") as terminal:  # only works with a controlling terminal
            terminal.write("session leader " + str(os.getsid(0) == os.getpid()) + "\\n")
        """,
    )
    proc = tunnel(exec_service(pki, str(script), "pty = yes\n"))
    with tls_connect(proc.port("run"), pki.ca) as conn:
        output = recv_all(conn)
    # A terminal turns "\n" into "\r\n" on output: proof of the line discipline too.
    # (stderr is the log's here, as foreground = yes; test_inetd checks the other case.)
    assert output == b"tty True True\r\nsession leader True\r\n"
    log = proc.wait_for_log(r"Connection closed")
    assert_reaped(int(STARTED.findall(log)[0]))


def test_pty_passes_the_clients_eof_as_the_terminals_eof(
    tunnel: TunnelFactory, pki: PKIFiles
) -> None:
    """cat on a terminal: the client's half-close must end cat's input (Ctrl-D), so cat
    exits and the connection ends cleanly instead of waiting for a timeout."""
    proc = tunnel(exec_service(pki, CAT, "pty = yes\nTIMEOUTclose = 30\n"))
    client = HalfClosingTLSClient(proc.port("run"), pki.ca)
    client.send(b"hello\n")
    client.half_close()
    received, clean = client.receive_all()
    client.close()
    # The terminal echoes the line, and cat writes it back: both with "\r\n".
    assert received.count(b"hello\r\n") == 2
    assert clean
    log = proc.wait_for_log(r"Child process \d+ finished with code 0", timeout=10)
    assert "TIMEOUTclose" not in log


# -- exec + connect, retry ---------------------------------------------------------------


PING_SCRIPT = """
    import os, sys
    sys.stdout.write("ping %d\\n" % os.getpid())
    sys.stdout.flush()
    answer = sys.stdin.readline()
    with open(sys.argv[1], "a") as record:
        record.write(answer)
"""


def tls_echo(tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer) -> int:
    """A TLS echo service (tlstunnel in server mode in front of an echo server)."""
    server = tunnel(
        f"[tls]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo_server.port}\n"
        f"cert = {pki.server}\n",
        name="echo-server",
    )
    return server.port("tls")


def program_tunnel(pki: PKIFiles, script: Path, record: Path, port: int, extra: str) -> str:
    return (
        "[vpn]\nclient = yes\n"
        f"exec = {script}\nexecArgs = ping {record}\n"
        f"connect = 127.0.0.1:{port}\nCAfile = {pki.ca}\nverifyChain = yes\n"
        "checkHost = localhost\n" + extra
    )


def test_exec_and_connect_run_the_program_at_start(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    """No accept: the program starts with the tunnel, its output goes out over TLS and
    the answer comes back to it.  Without retry it runs once."""
    script = write_script(tmp_path, "ping.py", PING_SCRIPT)
    record = tmp_path / "answers.txt"
    port = tls_echo(tunnel, pki, echo_server)
    proc = tunnel(program_tunnel(pki, script, record, port, ""), name="program")
    log = proc.wait_for_log(r"Connection closed", timeout=10)
    assert "TLS connected: new session negotiated" in log
    (answer,) = record.read_text().splitlines()
    pid = int(STARTED.findall(log)[0])
    assert answer == f"ping {pid}"
    time.sleep(1.5)  # longer than the retry delay: nothing more may start
    assert len(STARTED.findall(proc.log())) == 1
    assert_reaped(pid)


def test_retry_starts_the_program_again(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    script = write_script(tmp_path, "ping.py", PING_SCRIPT)
    record = tmp_path / "answers.txt"
    port = tls_echo(tunnel, pki, echo_server)
    proc = tunnel(program_tunnel(pki, script, record, port, "retry = yes\n"), name="program")
    log = proc.wait_for_log(r"Connection closed", count=3, timeout=15)
    pids = [int(pid) for pid in STARTED.findall(log)]
    answers = record.read_text().splitlines()
    assert answers[:3] == [f"ping {pid}" for pid in pids[:3]]
    assert len(set(pids)) == len(pids), "each round is a new program"
    proc.stop()
    assert "Terminated" in proc.log()


def test_retry_keeps_trying_while_the_server_is_down(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path
) -> None:
    script = write_script(tmp_path, "ping.py", PING_SCRIPT)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # nothing listens here
        proc = tunnel(
            program_tunnel(pki, script, tmp_path / "r.txt", port, "retry = yes\n"),
            name="program",
        )
        log = proc.wait_for_log(r"Connection reset", count=2, timeout=10)
    assert "Connection refused" in log
    for pid in STARTED.findall(log)[:2]:
        assert_reaped(int(pid))


# -- interop ---------------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("stunnel4") is None, reason="stunnel4 is not installed")
def test_stunnel4_client_to_our_exec_service(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path
) -> None:
    ours = tunnel(exec_service(pki, CAT))
    theirs = tunnel(
        f"[plain]\naccept = 127.0.0.1:0\nclient = yes\nconnect = 127.0.0.1:{ours.port('run')}\n",
        program="stunnel4",
        name="stunnel4-client",
    )
    payload = os.urandom(200_000)
    with socket.create_connection(("127.0.0.1", theirs.port("plain")), timeout=10) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        received = recv_all(conn)
    assert received == payload
    ours.wait_for_log(r"Connection closed: 200000 byte\(s\) sent to TLS, 200000 byte")


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("stunnel4") is None, reason="stunnel4 is not installed")
def test_the_environment_matches_stunnel4s(
    tunnel: TunnelFactory, pki: PKIFiles, tmp_path: Path
) -> None:
    """The same program under stunnel4 and under tlstunnel, the same client certificate:
    the variables must be the same, byte for byte (the port aside)."""
    script = write_script(tmp_path, "env.py", ENV_SCRIPT)
    outputs = []
    for program in ("stunnel4", "tlstunnel"):
        proc = tunnel(
            exec_service(pki, str(script), f"CAfile = {pki.ca}\nverifyChain = yes\n"),
            program=program,
            name=program,
        )
        with tls_connect(proc.port("run"), pki.ca, cert=pki.client) as conn:
            outputs.append(program_output(recv_all(conn)))
    theirs, ours = outputs
    for name in ("REMOTE_HOST", "SSL_CLIENT_DN", "SSL_CLIENT_I_DN", "ARGV"):
        assert ours[name] == theirs[name], name
