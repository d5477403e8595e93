"""``libwrap = yes``: real tunnels judging real clients by hosts.allow / hosts.deny.

Every test runs a tlstunnel process whose tables are files of the test
(``hostsAllow``, ``hostsDeny``).  A refused client must see its connection closed
without a single byte (no ServerHello: the check happens before any TLS work), the
log must say ``Service [NAME] REFUSED by libwrap from ADDR:PORT`` as stunnel does, and
the backend must never see a connection.  The last test runs stunnel4 (built with
libwrap on Debian) on the same rules, in a private mount namespace where the test's
files are bind-mounted over /etc/hosts.allow and /etc/hosts.deny, and compares.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import TunnelFactory
from tests.support.backends import EchoServer
from tests.support.clients import client_context
from tests.support.pki import PKIFiles
from tests.support.tunnel import TunnelProcess, stunnel4_path, write_config
from tlstunnel.net.libwrap import Libwrap, TableCache

REFUSED = r"Service \[{name}\] REFUSED by libwrap from {address}:\d+"


class Rules:
    """The two tables of a test; writing one changes it in place (same inode)."""

    def __init__(self, directory: Path, allow: str = "", deny: str = "") -> None:
        self.allow_path = directory / "hosts.allow"
        self.deny_path = directory / "hosts.deny"
        self.write(allow, deny)

    def write(self, allow: str, deny: str) -> None:
        for path, text in ((self.allow_path, allow), (self.deny_path, deny)):
            with open(path, "w", encoding="ascii") as stream:  # in place: bind mounts follow
                stream.write(text)

    def options(self) -> str:
        return f"libwrap = yes\nhostsAllow = {self.allow_path}\nhostsDeny = {self.deny_path}\n"


def _service(
    pki: PKIFiles, name: str, backend: int, rules: Rules, accept: str = "127.0.0.1:0"
) -> str:
    return (
        f"[{name}]\naccept = {accept}\nconnect = 127.0.0.1:{backend}\ncert = {pki.server}\n"
        + rules.options()
    )


def _echo(port: int, pki: PKIFiles, host: str = "127.0.0.1", source: str | None = None) -> None:
    source_address = (source, 0) if source else None
    raw = socket.create_connection((host, port), timeout=10, source_address=source_address)
    with client_context(pki.ca).wrap_socket(raw, server_hostname="localhost") as conn:
        conn.sendall(b"ping")
        assert conn.recv(4) == b"ping"


def _client_hello() -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_context(None).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _refused_silently(
    port: int, host: str = "127.0.0.1", source: str | None = None, prefix: bytes = b""
) -> None:
    """Send a ClientHello; the tunnel must close (FIN or RST) without a byte."""
    source_address = (source, 0) if source else None
    try:
        sock = socket.create_connection((host, port), timeout=10, source_address=source_address)
    except ConnectionResetError:
        return  # the reset came before connect() returned: refused at once
    with sock:
        try:
            sock.sendall(prefix + _client_hello())
            answer = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return
        assert answer == b"", f"a refused client got {answer[:16]!r}: TLS work was done"


def _wait_for_count(proc: TunnelProcess, pattern: str, count: int) -> str:
    return proc.wait_for_log(pattern, count=count)


# --- tlstunnel ----------------------------------------------------------------------------


def test_allowed_client_is_served_and_logged_at_debug(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    # hostsAllow admits before hostsDeny refuses everyone: ignoring either option fails.
    rules = Rules(tmp_path, allow="svc: 127.0.0.1\n", deny="ALL: ALL\n")
    proc = tunnel("debug = debug\n" + _service(pki, "svc", echo_server.port, rules))
    _echo(proc.port("svc"), pki)
    log = proc.wait_for_log(r"Service \[svc\] permitted by libwrap from 127\.0\.0\.1:\d+")
    assert "REFUSED" not in log
    assert "is named" not in log, "an address rule must not cause a name lookup"


def test_denied_by_address_before_any_tls(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    rules = Rules(tmp_path, deny="# ours\nsvc: 127.0.0.1\n")
    proc = tunnel(_service(pki, "svc", echo_server.port, rules))
    _refused_silently(proc.port("svc"))
    log = proc.wait_for_log(REFUSED.format(name="svc", address=r"127\.0\.0\.1"))
    assert re.search(r"LOG4\[\d+\]: Service \[svc\] REFUSED by libwrap", log)
    proc.wait_for_log("Connection reset: 0 byte.s. sent to TLS, 0 byte.s. sent to socket")
    assert "SSL_accept" not in log
    assert echo_server.accepted == 0


def test_libwrap_is_off_by_default(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    rules = Rules(tmp_path, deny="ALL: ALL\n")
    text = _service(pki, "svc", echo_server.port, rules).replace("libwrap = yes\n", "")
    proc = tunnel(text)
    _echo(proc.port("svc"), pki)
    assert "hostsAllow has no effect without libwrap = yes" in proc.log()


def test_denied_by_network_and_except(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    rules = Rules(tmp_path, deny="ALL: 127.0.0.0/255.0.0.0 EXCEPT 127.0.0.2\n")
    proc = tunnel(_service(pki, "svc", echo_server.port, rules))
    port = proc.port("svc")
    _echo(port, pki, source="127.0.0.2")  # the exception
    _refused_silently(port, source="127.0.0.1")
    proc.wait_for_log(REFUSED.format(name="svc", address=r"127\.0\.0\.1"))
    rules.write("", "ALL: 127.0.0.0/8\n")  # the same network as a prefix length
    _refused_silently(port, source="127.0.0.2")
    proc.wait_for_log(REFUSED.format(name="svc", address=r"127\.0\.0\.2"))
    assert echo_server.accepted == 1


def test_the_daemon_name_is_the_service_name(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    rules = Rules(tmp_path, deny="ALL EXCEPT public: ALL\n")
    proc = tunnel(
        _service(pki, "public", echo_server.port, rules)
        + _service(pki, "private", echo_server.port, rules)
    )
    _echo(proc.port("public"), pki)
    _refused_silently(proc.port("private"))
    log = proc.wait_for_log(REFUSED.format(name="private", address=r"127\.0\.0\.1"))
    assert "Service [public] REFUSED" not in log
    assert echo_server.accepted == 1


def test_ipv6_and_mapped_clients_on_a_dual_stack_listener(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    rules = Rules(tmp_path, deny="svc: [::1]\n")
    proc = tunnel(_service(pki, "svc", echo_server.port, rules, accept=":::0"))
    port = proc.port("svc")
    _echo(port, pki, host="127.0.0.1")  # arrives as ::ffff:127.0.0.1
    _refused_silently(port, host="::1")
    proc.wait_for_log(REFUSED.format(name="svc", address=r"\[::1\]"))
    rules.write("", "svc: 127.0.0.1\n")  # an IPv4 rule for the IPv4-mapped client
    _echo(port, pki, host="::1")
    _refused_silently(port, host="127.0.0.1")
    proc.wait_for_log(REFUSED.format(name="svc", address=r"127\.0\.0\.1"))
    rules.write("", "svc: [::]/0\n")
    _echo(port, pki, host="127.0.0.1")  # an IPv6 network never matches an IPv4 client
    assert echo_server.accepted == 3


def test_an_edit_takes_effect_without_reload(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    rules = Rules(tmp_path)
    rules.allow_path.unlink()  # a missing file has no rules
    proc = tunnel(_service(pki, "svc", echo_server.port, rules))
    port = proc.port("svc")
    _echo(port, pki)
    rules.write("", "svc: 127.0.0.1\n")
    _refused_silently(port)
    proc.wait_for_log(REFUSED.format(name="svc", address=r"127\.0\.0\.1"))
    rules.write("svc: 127.0.0.1 : allow\n", "svc: 127.0.0.1\n")
    _echo(port, pki)
    rules.write("", "")
    _echo(port, pki)
    assert echo_server.accepted == 3
    assert "Reloading" not in proc.log()


def test_a_name_rule_looks_the_client_up(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    # /etc/hosts names 127.0.0.1 "localhost" (and localhost leads back to it).
    assert socket.gethostbyaddr("127.0.0.1")[0] == "localhost", "unusual /etc/hosts"
    rules = Rules(tmp_path, deny="svc: .example.com\nsvc: localhost\n")
    proc = tunnel("debug = debug\n" + _service(pki, "svc", echo_server.port, rules))
    _refused_silently(proc.port("svc"))
    log = proc.wait_for_log(REFUSED.format(name="svc", address=r"127\.0\.0\.1"))
    assert "libwrap: client 127.0.0.1 is named localhost" in log
    assert "libwrap: matched " + str(rules.deny_path) + ":2" in log
    rules.write("", "svc: KNOWN EXCEPT localhost\n")
    _echo(proc.port("svc"), pki)
    assert echo_server.accepted == 1


def test_a_rule_with_an_option_we_do_not_run_refuses_and_is_reported(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    rules = Rules(tmp_path, allow="svc: 127.0.0.1 : spawn /bin/touch /tmp/pwned\nsvc: ALL\n")
    proc = tunnel(_service(pki, "svc", echo_server.port, rules))
    log = proc.log()
    assert (
        f'libwrap: {rules.allow_path}:1: option "spawn" is not supported by tlstunnel: '
        "a client this rule matches is refused"
    ) in log
    _refused_silently(proc.port("svc"))
    proc.wait_for_log(REFUSED.format(name="svc", address=r"127\.0\.0\.1"))
    assert echo_server.accepted == 0


def test_severity_sets_the_level_of_the_line(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    rules = Rules(tmp_path, deny="svc: ALL : severity auth.notice\n")
    proc = tunnel(_service(pki, "svc", echo_server.port, rules))
    _refused_silently(proc.port("svc"))
    proc.wait_for_log(r"LOG5\[\d+\]: Service \[svc\] REFUSED by libwrap from 127\.0\.0\.1")


def test_the_client_named_by_a_proxy_header_is_judged(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    rules = Rules(tmp_path, deny="svc: 203.0.113.7\n")
    proc = tunnel(
        _service(pki, "svc", echo_server.port, rules)
        + "acceptProxy = yes\nacceptProxyFrom = 127.0.0.0/8\n"
    )
    header = b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 443\r\n"
    _refused_silently(proc.port("svc"), prefix=header)
    proc.wait_for_log(r"Service \[svc\] REFUSED by libwrap from 203\.0\.113\.7:5555")
    assert echo_server.accepted == 0


# --- the file cache, on real files ----------------------------------------------------------


def _verdict(checker: Libwrap, lines: list[tuple[int, str]], address: str = "10.0.0.1") -> bool:
    async def run() -> bool:
        return await checker.admits((address, 40000), ("127.0.0.1", 443), _collect(lines))

    return asyncio.run(run())


def _collect(lines: list[tuple[int, str]]) -> Callable[[int, str], None]:
    return lambda level, text: lines.append((level, text))


def test_a_same_size_edit_within_the_clock_tick_is_seen(tmp_path: Path) -> None:
    rules = Rules(tmp_path, deny="svc: 10.0.0.1\n")
    checker = Libwrap("svc", str(rules.allow_path), str(rules.deny_path), 5.0, TableCache())
    lines: list[tuple[int, str]] = []
    assert not _verdict(checker, lines)
    info = os.stat(rules.deny_path)
    rules.write("", "svc: 10.0.0.2\n")  # same size; maybe the same mtime
    os.utime(rules.deny_path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert _verdict(checker, lines)
    assert (4, "Service [svc] REFUSED by libwrap from 10.0.0.1:40000") in lines


def test_problems_are_logged_once_per_version(tmp_path: Path) -> None:
    rules = Rules(tmp_path, allow="no colon here\n")
    checker = Libwrap("svc", str(rules.allow_path), str(rules.deny_path), 5.0, TableCache())
    lines: list[tuple[int, str]] = []
    checker.preload(_collect(lines))
    for _ in range(3):
        assert _verdict(checker, lines)
    warning = f'libwrap: {rules.allow_path}:1: missing ":" separator; the line is skipped'
    assert lines.count((4, warning)) == 1


def test_an_unreadable_deny_table_refuses_everyone(tmp_path: Path) -> None:
    rules = Rules(tmp_path)
    rules.deny_path.unlink()
    rules.deny_path.mkdir()  # exists, cannot be read as a file (even by root)
    checker = Libwrap("svc", str(rules.allow_path), str(rules.deny_path), 5.0, TableCache())
    lines: list[tuple[int, str]] = []
    assert not _verdict(checker, lines)
    assert not _verdict(checker, lines)
    assert lines.count((4, f"libwrap: cannot read {rules.deny_path}: Is a directory")) == 1
    assert (7, f"libwrap: {rules.deny_path} cannot be read: Is a directory") in lines


def test_pattern_files_are_read_and_reread(tmp_path: Path) -> None:
    listed = tmp_path / "trusted"
    listed.write_text("10.0.0.1\n")
    rules = Rules(tmp_path, allow=f"svc: {listed}\n", deny="ALL: ALL\n")
    checker = Libwrap("svc", str(rules.allow_path), str(rules.deny_path), 5.0, TableCache())
    lines: list[tuple[int, str]] = []
    assert _verdict(checker, lines)
    assert not _verdict(checker, lines, "10.0.0.2")
    listed.write_text("10.0.0.2\n")
    assert _verdict(checker, lines, "10.0.0.2")


# --- side by side with stunnel4 ----------------------------------------------------------


def _stunnel4_with_rules(directory: Path, config: str, rules: Rules) -> TunnelProcess:
    """stunnel4 in a private mount namespace where /etc/hosts.{allow,deny} are ours."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "unshare (util-linux) is needed"
    script = (
        f'mount --bind "{rules.allow_path}" /etc/hosts.allow && '
        f'mount --bind "{rules.deny_path}" /etc/hosts.deny && exec "{stunnel4_path()}" "$0"'
    )
    namespace = ["-m"] if os.geteuid() == 0 else ["-r", "-m"]
    path = write_config(
        directory / "stunnel4.conf", "foreground = yes\npid =\ndebug = info\nsyslog = no\n" + config
    )
    proc = TunnelProcess(
        [unshare, *namespace, "sh", "-c", script], path, directory / "stunnel4.log"
    )
    try:
        proc.wait_for_log("Accepting new connections", timeout=15)
    except BaseException:
        proc.stop()
        raise
    return proc


SCENARIOS = [
    ("", "svc: 127.0.0.1\n", False),
    ("svc: 127.0.0.1\n", "ALL: ALL\n", True),
    ("", "other: ALL\n", True),
    ("", "ALL: 127.0.0.0/255.0.0.0 EXCEPT 127.0.0.1\n", True),
    ("", "ALL EXCEPT other: localhost\n", False),
    ("ALL: ALL : deny\n", "", False),
    ("", "svc: 10.0.0.0/8 [::1] : allow\nALL: ALL\n", False),
]


@pytest.mark.interop
def test_same_verdicts_and_lines_as_stunnel4(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    ours_dir, theirs_dir = tmp_path / "ours", tmp_path / "theirs"
    ours_dir.mkdir()
    theirs_dir.mkdir()
    ours_rules, their_rules = Rules(ours_dir), Rules(theirs_dir)
    ours = tunnel(_service(pki, "svc", echo_server.port, ours_rules))
    service = (
        f"[svc]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo_server.port}\n"
        f"cert = {pki.server}\nlibwrap = yes\n"
    )
    theirs = _stunnel4_with_rules(theirs_dir, service, their_rules)
    try:
        refusals = 0
        for allow, deny, admitted in SCENARIOS:
            ours_rules.write(allow, deny)
            their_rules.write(allow, deny)
            for proc in (ours, theirs):
                port = proc.port("svc")
                if admitted:
                    _echo(port, pki)
                else:
                    _refused_silently(port)
            if not admitted:
                refusals += 1
                for proc in (ours, theirs):
                    _wait_for_count(
                        proc, REFUSED.format(name="svc", address=r"127\.0\.0\.1"), refusals
                    )
        line = re.compile(r"LOG\d\[\d+\]: Service \[svc\] REFUSED by libwrap from 127\.0\.0\.1:")
        assert len(line.findall(ours.log())) == len(line.findall(theirs.log())) == refusals
        reset = re.compile(r"LOG5\[\d+\]: Connection reset: 0 byte\(s\) sent to TLS, 0 byte")
        time.sleep(0.2)
        assert len(reset.findall(ours.log())) == len(reset.findall(theirs.log()))
    finally:
        theirs.stop()
