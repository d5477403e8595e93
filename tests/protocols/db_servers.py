"""Real directory and database servers for the protocol tests: OpenLDAP's slapd and
PostgreSQL, from their Debian packages, on loopback ports, in temporary directories.

* ``start_slapd(dir, pki, tls=...)`` writes a minimal ``slapd.conf`` (one empty mdb
  database, a root DN with a password) and runs slapd in the foreground with the
  ``stats`` log on stderr, which says ``TLS established`` for each StartTLS.  With
  ``tls=True`` it has the test server certificate and ``security tls=1``: any
  operation outside TLS is refused (confidentialityRequired), so a test that gets
  an answer knows TLS ran.  Without it, StartTLS is refused (protocolError).
* ``start_postgres(dir, pki, ssl=...)`` runs one PostgreSQL cluster.  PostgreSQL
  refuses to run as root, so the cluster is made once per session by ``initdb`` as
  the ``postgres`` user (or ``nobody``) in a directory under /tmp, and each server
  gets a copy (copying is much faster than initdb).  Trust authentication for user
  ``tester`` over TCP; ``ssl=True`` adds the test certificate.
* ``psql(...)`` runs the real client with a connection string.

Ports are picked by binding port 0 and closing it just before the server binds it:
a tiny race, accepted to keep the servers' own configuration simple; the start is
retried once on a port clash.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.pki import PKIFiles

# -- shared ------------------------------------------------------------------------------


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited ({process.returncode}):\n"
                + log.read_text(errors="replace")
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


@dataclass
class _ServerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    directory: Path
    # slapd stops on SIGTERM; PostgreSQL's fast shutdown is SIGINT (SIGTERM waits
    # for every client to leave).
    stop_signal: int = signal.SIGTERM

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if len(re.findall(pattern, text)) >= count:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in the server log:\n{text}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ScriptedServer:
    """A one-shot TCP server for answers no real server gives: it records what it
    receives, sends ``reply`` once the first bytes arrive, half-closes and records
    the rest until the peer closes."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.received = bytearray()
        self.done = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                self.received += conn.recv(4096)
                conn.sendall(self.reply)
                conn.shutdown(socket.SHUT_WR)
                while data := conn.recv(4096):
                    self.received += data
            except OSError:
                pass
        self.done.set()

    def close(self) -> None:
        self._sock.close()
        self._thread.join(5)


# -- OpenLDAP ----------------------------------------------------------------------------


def slapd_path() -> str:
    path = shutil.which("slapd") or (
        "/usr/sbin/slapd" if os.path.exists("/usr/sbin/slapd") else None
    )
    if path is None:
        raise RuntimeError("slapd is not installed (apt-get install slapd)")
    return path


def ldap_client_path(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (apt-get install ldap-utils)")
    return path


@dataclass
class LDAPServer(_ServerProcess):
    root_dn: str = "cn=admin,dc=example,dc=com"
    root_password: str = "secret"


def start_slapd(directory: Path, pki: PKIFiles, *, tls: bool) -> LDAPServer:
    """slapd on a free loopback port; ``tls``: a certificate and ``security tls=1``."""
    (directory / "db").mkdir()
    tls_lines = (
        f"TLSCertificateFile {pki.server_cert}\n"
        f"TLSCertificateKeyFile {pki.server_key}\n"
        "security tls=1\n"
        if tls
        else ""
    )
    config = directory / "slapd.conf"
    config.write_text(
        "include /etc/ldap/schema/core.schema\n"
        f"pidfile {directory}/slapd.pid\n"
        "modulepath /usr/lib/ldap\n"
        "moduleload back_mdb\n" + tls_lines + "database mdb\n"
        "maxsize 10485760\n"
        'suffix "dc=example,dc=com"\n'
        'rootdn "cn=admin,dc=example,dc=com"\n'
        "rootpw secret\n"
        f"directory {directory}/db\n"
    )
    log_path = directory / "slapd.log"
    for attempt in range(2):
        port = unused_port()
        handle = open(log_path, "wb")  # noqa: SIM115 (the server writes to it until stopped)
        process = subprocess.Popen(
            # -d 256: the stats log (connections, operations, TLS) on stderr, in the
            # foreground; -h: listen here only.
            [slapd_path(), "-f", str(config), "-h", f"ldap://127.0.0.1:{port}/", "-d", "256"],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        handle.close()
        try:
            _wait_for_port(port, process, log_path, timeout=10)
        except RuntimeError:
            if process.poll() is None:
                process.kill()
                process.wait()
            if attempt:
                raise
            continue
        return LDAPServer(process, port, log_path, directory)
    raise AssertionError("unreachable")


# -- PostgreSQL --------------------------------------------------------------------------

PG_USER = "tester"


def postgres_bin() -> Path:
    """The newest installed server's bin directory (Debian keeps them off PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if not found:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return Path(found[-1]).parent


def psql_path() -> str:
    path = shutil.which("psql")
    if path is None:
        raise RuntimeError("psql is not installed (apt-get install postgresql-client)")
    return path


def _service_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("no unprivileged user (postgres or nobody) to run PostgreSQL as")


def _as_user(user: pwd.struct_passwd) -> dict[str, Any]:
    """``subprocess`` arguments that run the program as ``user`` (when we are root):
    directly, not under runuser, so that signals reach the server itself."""
    if os.geteuid() != 0:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _chown_tree(path: Path, user: pwd.struct_passwd) -> None:
    if os.geteuid() != 0:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


class PostgresTemplate:
    """One ``initdb`` per session; servers start from copies of it."""

    def __init__(self) -> None:
        self.user = _service_user()
        self.bin = postgres_bin()
        # Not under pytest's temporary folder: that one is root's, closed to others.
        self.root = Path(tempfile.mkdtemp(prefix="tlstunnel-pg-"))
        os.chmod(self.root, 0o755)
        self.template = self.root / "template"
        self.template.mkdir(mode=0o700)
        _chown_tree(self.template, self.user)
        subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.template),
                "-U",
                PG_USER,
                "-A",
                "trust",
                "--no-sync",
                "--no-instructions",
                "-E",
                "UTF8",
                "--locale",
                "C",
            ],
            check=True,
            capture_output=True,
            timeout=60,
            cwd=self.root,
            **_as_user(self.user),
        )
        self._count = 0

    def new_directory(self) -> Path:
        self._count += 1
        data = self.root / f"cluster{self._count}"
        shutil.copytree(self.template, data, symlinks=True)
        _chown_tree(data, self.user)
        return data

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class PostgresServer(_ServerProcess):
    ssl: bool = False


def start_postgres(template: PostgresTemplate, pki: PKIFiles, *, ssl: bool) -> PostgresServer:
    """A PostgreSQL server on a free loopback port, from a copy of ``template``."""
    data = template.new_directory()
    socket_dir = data / "socket"
    socket_dir.mkdir()
    settings = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(socket_dir),
        "fsync": "off",
        "shared_buffers": "16MB",
        "max_connections": "20",
        "log_connections": "on",
        "log_min_messages": "info",
        "ssl": "on" if ssl else "off",
    }
    if ssl:
        # The key must belong to the server's user (0600), or it refuses to start.
        shutil.copy(pki.server_cert, data / "server.crt")
        shutil.copy(pki.server_key, data / "server.key")
        (data / "server.key").chmod(0o600)
        settings["ssl_cert_file"] = str(data / "server.crt")
        settings["ssl_key_file"] = str(data / "server.key")
    _chown_tree(data, template.user)
    log_path = data / "server.log"
    for attempt in range(2):
        port = unused_port()
        options = [f"-c{name}={value}" for name, value in settings.items()]
        handle = open(log_path, "wb")  # noqa: SIM115 (the server writes to it until stopped)
        process = subprocess.Popen(
            [str(template.bin / "postgres"), "-D", str(data), "-p", str(port), *options],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=data,
            **_as_user(template.user),
        )
        handle.close()
        try:
            _wait_for_port(port, process, log_path, timeout=20)
        except RuntimeError:
            if process.poll() is None:
                process.kill()
                process.wait()
            if attempt:
                raise
            continue
        return PostgresServer(process, port, log_path, data, signal.SIGINT, ssl=ssl)
    raise AssertionError("unreachable")


def psql(
    port: int, *commands: str, ca: Path | None = None, timeout: float = 15, **params: str
) -> subprocess.CompletedProcess[str]:
    """``psql -X -At -c COMMAND...`` as user ``tester`` to 127.0.0.1:``port``;
    ``params`` are libpq connection parameters (sslmode, ...)."""
    conninfo = {
        "host": "127.0.0.1",
        "port": str(port),
        "user": PG_USER,
        "dbname": "postgres",
        "connect_timeout": "10",
        **params,
    }
    if ca is not None:
        conninfo["sslrootcert"] = str(ca)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGAPPNAME"] = "tlstunnel-tests"
    return subprocess.run(
        [
            psql_path(),
            "-X",
            "-At",
            *(arg for command in commands for arg in ("-c", command)),
            " ".join(f"{k}={v}" for k, v in conninfo.items()),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
