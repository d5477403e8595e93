"""Process confinement: ``setuid``/``setgid`` after binding, and ``chroot``."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from tests.conftest import TunnelFactory
from tests.support.backends import EchoServer
from tests.support.clients import tls_connect
from tests.support.pki import PKIFiles


def _status_ids(pid: int) -> tuple[int, int]:
    uid = gid = -1
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    return uid, gid


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests need root (CI runs as root)")


def test_setuid_and_setgid_drop_privileges_after_binding_a_privileged_port(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    # nobody must be able to read the certificate only before the drop: it is read first.
    nobody = pwd.getpwnam("nobody")
    nogroup = grp.getgrgid(nobody.pw_gid).gr_name
    privileged = 1000 - (os.getpid() % 500)  # a port below 1024 that only root may bind
    proc = tunnel(
        f"setuid = nobody\nsetgid = {nogroup}\n"
        f"[low]\naccept = 127.0.0.1:{privileged}\nconnect = 127.0.0.1:{echo_server.port}\n"
        f"cert = {pki.server}\n"
    )
    assert _status_ids(proc.process.pid) == (nobody.pw_uid, nobody.pw_gid)
    with tls_connect(privileged, pki.ca) as conn:
        conn.sendall(b"as nobody")
        assert conn.recv(9) == b"as nobody"


def test_chroot_confines_the_process_and_the_pid_file_is_inside(
    tunnel: TunnelFactory, pki: PKIFiles, echo_server: EchoServer, tmp_path: Path
) -> None:
    jail = tmp_path / "jail"
    jail.mkdir()
    proc = tunnel(
        f"chroot = {jail}\npid = /tlstunnel.pid\n"
        f"[jailed]\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{echo_server.port}\n"
        f"cert = {pki.server}\n"
    )
    assert os.readlink(f"/proc/{proc.process.pid}/root") == str(jail)
    assert (jail / "tlstunnel.pid").read_text().strip() == str(proc.process.pid)
    with tls_connect(proc.port("jailed"), pki.ca) as conn:
        conn.sendall(b"jailed")
        assert conn.recv(6) == b"jailed"
