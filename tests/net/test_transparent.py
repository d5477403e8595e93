"""``transparent = source | destination | both``, proved with real routing (Linux, root).

Most tests build three network namespaces (client — tunnel — backend, see
``tests/net/netns.py``), run tlstunnel in the middle one, and check what the two ends
see, over IPv4, IPv6, and IPv4 clients of a dual-stack ``accept = :::PORT``:

* **source**: the backend sees the TLS client's own address as the peer of the plain
  connection, and its replies (routed back through the middle namespace) reach the
  tunnel: the echo comes back byte for byte.  Without ``transparent`` it sees the
  tunnel's address instead — the control that shows the check can fail.
* **destination**: the client speaks TLS straight to the backend's address; the middle
  namespace diverts the connection to the tunnel (iptables TPROXY, where the accepted
  socket's own address is the original destination, or REDIRECT, where only
  ``SO_ORIGINAL_DST`` still knows it), and the tunnel forwards plaintext to whichever
  backend port the client dialled.  The middle namespace does not forward packets, so
  a reply can only have come through the tunnel; the backend speaks no TLS, so the
  verified handshake was the tunnel's.
* **both**: the two together — the backend the client dialled sees the client's address.
* A connection that reaches the tunnel's own port *without* a diversion is refused,
  instead of the tunnel connecting to itself over and over.
* Without CAP_NET_ADMIN (and CAP_NET_RAW, which the kernel also accepts for
  IP_TRANSPARENT) a transparent service is refused at start, exit code 1.

The namespace tests need root, ``ip``, ``iptables`` and ``ip6tables`` with the
``socket``, ``TPROXY`` and ``REDIRECT`` targets.  Where something is missing they fail
and say what; they never skip, since a skipped test here would hide a feature that
does not work.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.net.netns import (
    CLIENT_SIDE_LINK,
    DIVERT_MARK,
    IPV4,
    IPV6,
    Plan,
    Topology,
    leftover_namespaces,
    topology,
)
from tests.support.clients import tls_connect
from tests.support.pki import PKIFiles
from tests.support.tunnel import TLSTUNNEL, TunnelProcess, write_config
from tlstunnel.config.model import Transparent
from tlstunnel.net import transparent

pytestmark = pytest.mark.timeout(60)

TUNNEL_PORT = 8443
BACKEND_PORTS = (8080, 8081)
CHUNK = 32 * 1024


@dataclass(frozen=True)
class Setup:
    """Which family the client and backend speak, and where the tunnel listens."""

    name: str
    plan: Plan
    accept_host: str

    def __str__(self) -> str:
        return self.name


SETUPS = [
    Setup("ipv4", IPV4, "0.0.0.0"),
    Setup("ipv6", IPV6, "::"),
    # IPv4 clients and backend, a dual-stack listener: the tunnel sees ::ffff:a.b.c.d.
    Setup("dual-stack", IPV4, "::"),
]


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.fail("transparent proxying tests need root: they create network namespaces")
    with topology(tmp_path) as built:
        yield built
    assert leftover_namespaces() == [], "a test left network namespaces behind"


def service(pki: PKIFiles, setup: Setup, mode: str, *, connect: str = "") -> str:
    """A server-mode service on every address of the middle namespace."""
    return (
        "[transparent]\n"
        f"accept = {host_port(setup.accept_host, TUNNEL_PORT)}\n"
        f"cert = {pki.server}\n"
        + (f"connect = {connect}\n" if connect else "")
        + f"transparent = {mode}\n"
    )


def echo_through(net: Topology, pki: PKIFiles, host: str, port: int, size: int) -> None:
    """From the client namespace: TLS to host:port, send ``size`` random bytes in chunks
    and check that each comes back unchanged, then close."""
    conn: ssl.SSLSocket = net.client.run(lambda: tls_connect(port, pki.ca, host=host))
    with conn:
        payload = os.urandom(size)
        for start in range(0, size, CHUNK):
            chunk = payload[start : start + CHUNK]
            conn.sendall(chunk)
            echoed = b""
            while len(echoed) < len(chunk):
                data = conn.recv(len(chunk) - len(echoed))
                assert data, f"the tunnel closed after {start + len(echoed)} of {size} bytes"
                echoed += data
            assert echoed == chunk, f"bytes {start}..{start + len(chunk)} came back altered"


def divert(net: Topology, plan: Plan, how: str) -> None:
    """Send the client's connections to the backend's address into the tunnel."""
    match = ("-i", CLIENT_SIDE_LINK, "-p", "tcp", "-d", plan.backend)
    if how == "tproxy":
        net.iptables(
            plan, "-t", "mangle", "-A", "PREROUTING", *match,
            "-j", "TPROXY", "--on-port", str(TUNNEL_PORT), "--tproxy-mark", DIVERT_MARK,
        )  # fmt: skip
    else:
        net.iptables(
            plan, "-t", "nat", "-A", "PREROUTING", *match,
            "-j", "REDIRECT", "--to-ports", str(TUNNEL_PORT),
        )  # fmt: skip


# -- source ----------------------------------------------------------------------------


@pytest.mark.parametrize("setup", SETUPS, ids=str)
@pytest.mark.parametrize("mode", ["source", "none"])
def test_source_backend_sees_the_client_address(
    net: Topology, pki: PKIFiles, setup: Setup, mode: str
) -> None:
    plan = setup.plan
    port = BACKEND_PORTS[0]
    backend = net.serve_echo(plan.backend, port)
    proc = net.start_tunnel(service(pki, setup, mode, connect=host_port(plan.backend, port)))
    echo_through(net, pki, plan.middle_client_side, TUNNEL_PORT, 200_000)
    log = proc.wait_for_log(r"Connection closed: 200000 byte\(s\) sent to TLS, 200000 byte")
    [accepted] = backend.accepted
    backend_sees = plan.client if mode == "source" else plan.middle_backend_side
    assert accepted.peer[0] == backend_sees
    assert accepted.local == (plan.backend, port)
    assert f"accepted connection from {host_port(plan.client, 0)[:-1]}" in log
    assert f"connected remote server from {host_port(backend_sees, accepted.peer[1])}" in log


# -- destination and both --------------------------------------------------------------


@pytest.mark.parametrize("setup", SETUPS, ids=str)
@pytest.mark.parametrize("how", ["tproxy", "redirect"])
@pytest.mark.parametrize("mode", ["destination", "both"])
def test_destination_connects_where_the_client_dialled(
    net: Topology, pki: PKIFiles, setup: Setup, how: str, mode: str
) -> None:
    plan = setup.plan
    backends = {port: net.serve_echo(plan.backend, port) for port in BACKEND_PORTS}
    proc = net.start_tunnel(service(pki, setup, mode))
    divert(net, plan, how)
    for number, port in enumerate(BACKEND_PORTS, start=1):
        echo_through(net, pki, plan.backend, port, 100_000)
        proc.wait_for_log(
            r"Connection closed: 100000 byte\(s\) sent to TLS, 100000 byte", count=number
        )
    log = proc.log()
    backend_sees = plan.client if mode == "both" else plan.middle_backend_side
    for port, backend in backends.items():
        [accepted] = backend.accepted
        assert accepted.peer[0] == backend_sees, f"backend port {port}"
        assert accepted.local == (plan.backend, port)
        # A dual-stack socket connects to an IPv4 destination as ::ffff:a.b.c.d.
        connected = rf"s_connect: connected \[?(::ffff:)?{re.escape(plan.backend)}\]?:{port}\n"
        assert re.search(connected, log), log
    client_address = host_port(plan.client, 0)[:-1]
    assert log.count(f"accepted connection from {client_address}") == len(BACKEND_PORTS)


def test_without_a_diversion_the_backend_is_out_of_reach(net: Topology, pki: PKIFiles) -> None:
    """The control for the test above: with no TPROXY/REDIRECT rule the middle
    namespace drops the client's packets to the backend (it does not forward)."""
    backend = net.serve_echo(IPV4.backend, BACKEND_PORTS[0])
    net.start_tunnel(service(pki, SETUPS[0], "destination"))
    with pytest.raises(OSError):
        net.client.run(lambda: tls_connect(BACKEND_PORTS[0], pki.ca, host=IPV4.backend, timeout=1))
    assert backend.accepted == []


@pytest.mark.parametrize("setup", SETUPS, ids=str)
@pytest.mark.parametrize("client_mode", [True, False], ids=["client-mode", "server-mode"])
def test_a_connection_straight_to_the_tunnel_is_refused(
    net: Topology, pki: PKIFiles, setup: Setup, client_mode: bool
) -> None:
    """Dialling the tunnel's own port leaves it no other destination than itself: it
    must refuse, not connect to itself (in client mode, without end, one new
    connection per level until it runs out of file descriptors)."""
    plan = setup.plan
    config = service(pki, setup, "destination")
    if client_mode:
        config = config.replace(f"cert = {pki.server}\n", "client = yes\n")
    proc = net.start_tunnel(config)
    address = (plan.middle_client_side, TUNNEL_PORT)

    def dial() -> None:
        # reset = yes (the default): the reset may arrive before connect() returns.
        with (
            suppress(ConnectionResetError, BrokenPipeError, ssl.SSLEOFError),
            socket.create_connection(address, timeout=10) as raw,
        ):
            if client_mode:
                raw.sendall(b"hello\n")
                assert raw.recv(100) == b""
                return
            context = ssl.create_default_context(cafile=pki.ca)
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.recv(100) == b""

    net.client.run(dial)
    log = proc.wait_for_log(r"Connection reset: ")
    here = host_port(plan.middle_client_side, TUNNEL_PORT)
    assert f"Connection failed: the client connected to this host's own address {here}" in log
    assert log.count("accepted connection from") == 1, log
    assert "s_connect: connecting" not in log


# -- the pieces, on loopback -----------------------------------------------------------


def test_original_destination_of_a_direct_connection_is_refused() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname(), timeout=5),
    ):
        port = server.getsockname()[1]
        accepted, _ = server.accept()
        with accepted, pytest.raises(transparent.NotDiverted) as caught:
            transparent.original_destination(accepted)
    assert f"own address 127.0.0.1:{port}," in str(caught.value)


@pytest.mark.parametrize(
    ("family", "client_ip", "message"),
    [
        (socket.AF_INET6, "10.0.0.1", "cannot reach an IPv6 backend from the IPv4 client"),
        (socket.AF_INET, "fd00::1", "cannot reach an IPv4 backend from the IPv6 client"),
    ],
)
def test_source_across_address_families_is_refused_plainly(
    family: int, client_ip: str, message: str
) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as sock, pytest.raises(OSError) as caught:
        transparent.bind_as_client(sock, client_ip)
    assert message in str(caught.value)


def test_source_needs_the_capability_setuid_gives_up() -> None:
    with pytest.raises(transparent.TransparentUnavailable, match="remove setuid"):
        transparent.check_available(Transparent.SOURCE, setuid="nobody")
    with pytest.raises(transparent.TransparentUnavailable, match="remove setuid"):
        transparent.check_available(Transparent.BOTH, setuid="65534")
    # destination keeps working: the listening socket is made transparent before.
    transparent.check_available(Transparent.DESTINATION, setuid="nobody")
    transparent.check_available(Transparent.SOURCE, setuid="root")


# -- refused at start ------------------------------------------------------------------

DROP_TRANSPARENT_CAPS = "-net_admin,-net_raw"
HEADER = "foreground = yes\npid =\nsyslog = no\ndebug = info\n"


def plain_service(mode: str) -> str:
    connect = "connect = 127.0.0.1:9\n" if mode == "source" else ""
    return f"[plain]\nclient = yes\naccept = 127.0.0.1:0\n{connect}transparent = {mode}\n"


@pytest.mark.parametrize("mode", ["source", "destination", "both"])
def test_refused_at_start_without_cap_net_admin(tmp_path: Path, mode: str) -> None:
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv is missing (apt-get install -y util-linux)"
    if os.geteuid() != 0:
        pytest.fail("this test drops capabilities from root: run it as root")
    config = write_config(tmp_path / "transparent.conf", HEADER + plain_service(mode))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    done = subprocess.run(
        [
            setpriv,
            f"--inh-caps={DROP_TRANSPARENT_CAPS}",
            f"--bounding-set={DROP_TRANSPARENT_CAPS}",
            *TLSTUNNEL,
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert f"Service [plain]: transparent = {mode} needs the CAP_NET_ADMIN" in output
    assert "bound to" not in output
    assert "Accepting new connections" not in output


@pytest.mark.parametrize("mode", ["source", "both"])
def test_source_with_setuid_is_refused_at_start(tmp_path: Path, mode: str) -> None:
    """After setuid the kernel refuses IP_TRANSPARENT, so every connection would fail
    with EPERM: say so at start instead."""
    config = write_config(
        tmp_path / "setuid.conf",
        HEADER + "setuid = nobody\nsetgid = nogroup\n" + plain_service(mode),
    )
    with TunnelProcess(TLSTUNNEL, config, tmp_path / "setuid.log") as proc:
        log = proc.wait_for_log(r"Accepting new connections|Configuration failed")
        assert f"transparent = {mode} makes every connection" in log
        assert "remove setuid" in log
        assert proc.process.wait(10) == 1
