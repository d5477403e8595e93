"""Three network namespaces in a row, for tests that need real routing (Linux, root).

    client ns                   middle ns (the tunnel)                   backend ns
    10.77.1.2  --- veth ---  10.77.1.1 | 10.77.2.1  --- veth ---  10.77.2.2
    fd77:1::2                fd77:1::1 | fd77:2::1                fd77:2::2
    default via the middle                                         default via the middle

Transparent proxying cannot be tested on loopback: the point is which address a packet
carries between two hosts, and whether a firewall can divert it.  So a test builds this
topology from scratch, runs the tunnel in the middle namespace with ``ip netns exec`` and
the client and backend in the other two, and deletes all three afterwards (the veth
pairs, routes and iptables rules live inside them and go with them).  The middle
namespace does *not* forward packets: whatever crosses it went through the tunnel.

It starts with the policy routing stunnel's manual prescribes for ``transparent``, for
IPv4 and IPv6: packets that belong to a local socket are marked and delivered locally,
even when they are addressed to the client's IP (source) or to the backend's (TPROXY).
Tests add their own TPROXY or REDIRECT rule with ``Topology.iptables``.

Test code talks from inside a namespace without a subprocess: ``Namespace.run(fn)``
calls ``fn`` on a fresh thread that has joined the namespace (``setns`` is per thread),
and any socket ``fn`` creates stays in that namespace for good — so the ordinary
helpers (``tls_connect``, a threaded backend) work unchanged from the test's thread.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import re
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tests.support.tunnel import TLSTUNNEL, TunnelProcess, write_config

T = TypeVar("T")


@dataclass(frozen=True)
class Plan:
    """The topology's addresses in one family, and that family's tools."""

    name: str
    client: str
    middle_client_side: str
    middle_backend_side: str
    backend: str
    prefix: int
    iptables: str
    ip_flag: str


IPV4 = Plan(
    name="ipv4",
    client="10.77.1.2",
    middle_client_side="10.77.1.1",
    middle_backend_side="10.77.2.1",
    backend="10.77.2.2",
    prefix=24,
    iptables="iptables",
    ip_flag="-4",
)
IPV6 = Plan(
    name="ipv6",
    client="fd77:1::2",
    middle_client_side="fd77:1::1",
    middle_backend_side="fd77:2::1",
    backend="fd77:2::2",
    prefix=64,
    iptables="ip6tables",
    ip_flag="-6",
)
CLIENT_SIDE_LINK = "to-client"  # the middle namespace's end facing the client
BACKEND_SIDE_LINK = "to-backend"

DIVERT_MARK = "1"
DIVERT_TABLE = "100"
COMMAND_TIMEOUT = 10.0
CLONE_NEWNET = 0x40000000

_names = itertools.count()


class EnvironmentUnfit(AssertionError):
    """This machine cannot build the topology; the message says what was missing."""


def run_command(*argv: str) -> str:
    """Run one setup command; a failure names the command and quotes its stderr."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except FileNotFoundError as exc:
        raise EnvironmentUnfit(
            f"{argv[0]} is not installed (apt-get install -y iproute2 iptables)"
        ) from exc
    if done.returncode != 0:
        raise EnvironmentUnfit(
            f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}"
        )
    return done.stdout


_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Namespace:
    """One named network namespace (``ip netns add``)."""

    name: str

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    def ip(self, *argv: str) -> str:
        return run_command("ip", "-n", self.name, *argv)

    def exec(self, *argv: str) -> str:
        return run_command("ip", "netns", "exec", self.name, *argv)

    def run(self, fn: Callable[[], T], timeout: float = 20.0) -> T:
        """Call ``fn`` on a new thread inside this namespace; return or raise its result."""
        results: list[T] = []
        errors: list[BaseException] = []

        def inside() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        errno = ctypes.get_errno()
                        raise OSError(errno, f"setns {self.name}: {os.strerror(errno)}")
                finally:
                    os.close(fd)
                results.append(fn())
            except BaseException as exc:  # noqa: BLE001 -- re-raised in the calling thread
                errors.append(exc)

        thread = threading.Thread(target=inside, name=f"in-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise AssertionError(f"no result from namespace {self.name} within {timeout} s")
        if errors:
            raise errors[0]
        return results[0]


@dataclass
class Topology:
    """client ns — middle ns (the tunnel) — backend ns; see the module docstring."""

    client: Namespace
    middle: Namespace
    backend: Namespace
    directory: Path
    tunnels: list[TunnelProcess] = field(default_factory=list)
    backends: list[PeerRecordingEcho] = field(default_factory=list)

    def iptables(self, plan: Plan, *rule: str) -> None:
        """Add a rule in the middle namespace (``-t TABLE -A CHAIN ...``)."""
        self.middle.exec(plan.iptables, "-w", *rule)

    def serve_echo(self, host: str, port: int) -> PeerRecordingEcho:
        """An echo backend at host:port in the backend namespace, closed at teardown."""
        server = self.backend.run(lambda: PeerRecordingEcho(host, port))
        self.backends.append(server)
        return server

    def start_tunnel(self, config_text: str, name: str = "tunnel") -> TunnelProcess:
        """Run tlstunnel in the middle namespace; wait until it accepts connections."""
        header = "foreground = yes\npid =\ndebug = info\nsyslog = no\n"
        config_path = write_config(self.directory / f"{name}.conf", header + config_text)
        command = ["ip", "netns", "exec", self.middle.name, *TLSTUNNEL]
        tunnel = TunnelProcess(command, config_path, self.directory / f"{name}.log")
        self.tunnels.append(tunnel)
        tunnel.wait_for_log(r"Accepting new connections|Configuration failed", timeout=15)
        if "Configuration failed" in tunnel.log():
            raise AssertionError("configuration failed:\n" + tunnel.log())
        return tunnel


def _configure(client: Namespace, middle: Namespace, backend: Namespace) -> None:
    for ns in (client, middle, backend):
        ns.ip("link", "set", "lo", "up")
    # Each pair is created with its ends already inside the namespaces: no interface
    # ever appears in the host's own namespace, so names cannot clash there.
    run_command(
        "ip", "link", "add", "name", "eth0", "netns", client.name, "type", "veth",
        "peer", "name", CLIENT_SIDE_LINK, "netns", middle.name,
    )  # fmt: skip
    run_command(
        "ip", "link", "add", "name", "eth0", "netns", backend.name, "type", "veth",
        "peer", "name", BACKEND_SIDE_LINK, "netns", middle.name,
    )  # fmt: skip
    for plan in (IPV4, IPV6):
        for ns, link, address in (
            (client, "eth0", plan.client),
            (middle, CLIENT_SIDE_LINK, plan.middle_client_side),
            (middle, BACKEND_SIDE_LINK, plan.middle_backend_side),
            (backend, "eth0", plan.backend),
        ):
            # nodad: usable at once, not "tentative" for a second or two.
            extra = ("nodad",) if plan is IPV6 else ()
            ns.ip(plan.ip_flag, "address", "add", f"{address}/{plan.prefix}", "dev", link, *extra)
    for ns, link in ((client, "eth0"), (middle, CLIENT_SIDE_LINK), (middle, BACKEND_SIDE_LINK),
                     (backend, "eth0")):  # fmt: skip
        ns.ip("link", "set", link, "up")
    middle.exec("sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    middle.exec("sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=0")
    middle.exec("sysctl", "-q", "-w", "net.ipv4.conf.lo.rp_filter=0")
    for plan in (IPV4, IPV6):
        client.ip(plan.ip_flag, "route", "add", "default", "via", plan.middle_client_side)
        # Replies to the client's subnet go back through the tunnel's namespace.
        backend.ip(plan.ip_flag, "route", "add", "default", "via", plan.middle_backend_side)
        # stunnel(8), transparent = source: deliver packets of local sockets locally.
        for rule in (
            ("-t", "mangle", "-N", "DIVERT"),
            ("-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-m", "socket", "-j", "DIVERT"),
            ("-t", "mangle", "-A", "DIVERT", "-j", "MARK", "--set-mark", DIVERT_MARK),
            ("-t", "mangle", "-A", "DIVERT", "-j", "ACCEPT"),
        ):
            middle.exec(plan.iptables, "-w", *rule)
        middle.ip(plan.ip_flag, "rule", "add", "fwmark", DIVERT_MARK, "lookup", DIVERT_TABLE)
        everything = "0.0.0.0/0" if plan is IPV4 else "::/0"
        middle.ip(
            plan.ip_flag, "route", "add", "local", everything, "dev", "lo", "table", DIVERT_TABLE
        )


@contextmanager
def topology(directory: Path) -> Iterator[Topology]:
    """Build the three namespaces; on the way out stop the tunnels and delete them all."""
    suffix = f"{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:6]}"
    made: list[Namespace] = []
    net: Topology | None = None
    try:
        for role in ("client", "middle", "backend"):
            ns = Namespace(f"tlst-{role}-{suffix}")
            run_command("ip", "netns", "add", ns.name)
            made.append(ns)
        client, middle, backend = made
        _configure(client, middle, backend)
        net = Topology(client, middle, backend, directory)
        yield net
    finally:
        if net is not None:
            for tunnel in net.tunnels:
                tunnel.stop()
            for server in net.backends:
                server.close()
        for ns in made:
            with suppress(EnvironmentUnfit):
                run_command("ip", "netns", "delete", ns.name)


def leftover_namespaces() -> list[str]:
    """Namespaces this process created and did not delete (for a post-test check)."""
    pattern = re.compile(rf"^tlst-\w+-{os.getpid()}-")
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    return [line.split()[0] for line in listing.splitlines() if pattern.match(line)]


@dataclass(frozen=True)
class Accepted:
    """One connection a ``PeerRecordingEcho`` accepted: who it came from, where to."""

    peer: tuple[str, int]
    local: tuple[str, int]


class PeerRecordingEcho:
    """A plaintext echo backend that records each connection's addresses.

    Construct it inside a namespace (``ns.run(lambda: PeerRecordingEcho(ip, port))``)
    so its listening socket lives there; it serves from its own threads after that.
    """

    def __init__(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family, backlog=16)
        self.accepted: list[Accepted] = []
        self._done = threading.Event()
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            local = conn.getsockname()
            self.accepted.append(Accepted((peer[0], peer[1]), (local[0], local[1])))
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn, suppress(OSError):
            conn.settimeout(30)
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
