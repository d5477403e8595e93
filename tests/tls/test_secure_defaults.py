"""Secure defaults: what a service that sets no ``ciphers``/``sslVersion`` refuses, and the
warning for a client-mode service that does not verify the server.

Each refusal is checked against a control service that allows the same thing
explicitly, so a test cannot pass because the test client itself was unable to offer
the old protocol or suite.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.support.backends import EchoServer
from tests.support.tunnel import TunnelProcess, run_tlstunnel, start_tunnel

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def rsa_pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(CA file, server key + chain) with RSA keys, so the RSA suites are possible."""
    directory = tmp_path_factory.mktemp("rsa-pki")
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    server = ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(str(directory / "server.pem"))
    return directory / "ca.pem", directory / "server.pem"


@pytest.fixture(scope="module")
def tunnel_pair(
    tmp_path_factory: pytest.TempPathFactory, rsa_pki: tuple[Path, Path]
) -> Iterator[TunnelProcess]:
    """[default] sets nothing; [legacy] allows TLS 1.0+ and every suite at level 0."""
    _, server = rsa_pki
    backend = EchoServer()
    common = f"cert = {server}\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{backend.port}\n"
    tunnel = start_tunnel(
        tmp_path_factory.mktemp("defaults"),
        f"[default]\n{common}"
        f"[legacy]\n{common}sslVersionMin = TLSv1\nciphers = ALL\nsecurityLevel = 0\n",
    )
    try:
        yield tunnel
    finally:
        tunnel.stop()
        backend.close()


def _handshake(port: int, ca: Path, *options: str) -> tuple[bool, str]:
    """openssl s_client with ``options``; (handshake completed, output)."""
    run = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca), *options],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    output = run.stdout + run.stderr
    established = run.returncode == 0 and "Cipher is (NONE)" not in output
    return established, output


@pytest.mark.parametrize(
    ("what", "options"),
    [
        ("TLS 1.1", ("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")),
        ("TLS 1.0", ("-tls1", "-cipher", "DEFAULT:@SECLEVEL=0")),
        ("static RSA + CBC", ("-tls1_2", "-cipher", "AES128-SHA")),
        ("static RSA + GCM", ("-tls1_2", "-cipher", "AES128-GCM-SHA256")),
        ("ECDHE + CBC", ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA")),
        ("ECDHE + CBC-SHA256", ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-SHA256")),
    ],
)
def test_refused_by_default_but_possible_when_allowed(
    tunnel_pair: TunnelProcess, rsa_pki: tuple[Path, Path], what: str, options: tuple[str, ...]
) -> None:
    ca, _ = rsa_pki
    allowed, output = _handshake(tunnel_pair.port("legacy"), ca, *options)
    assert allowed, f"control: {what} should work on [legacy]:\n{output}"
    refused, output = _handshake(tunnel_pair.port("default"), ca, *options)
    assert not refused, f"{what} was accepted by a service with default settings:\n{output}"


def test_finite_field_dhe_is_never_chosen(
    tunnel_pair: TunnelProcess, rsa_pki: tuple[Path, Path]
) -> None:
    # No control here: Python's ssl loads no DH parameters unless told to
    # (load_dh_params), so even [legacy] cannot negotiate DHE.
    ca, _ = rsa_pki
    for service in ("default", "legacy"):
        ok, output = _handshake(
            tunnel_pair.port(service), ca, "-tls1_2", "-cipher", "DHE-RSA-AES128-GCM-SHA256"
        )
        assert not ok, output


@pytest.mark.parametrize(
    "suite",
    ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"],
)
def test_forward_secret_aead_suites_work_by_default(
    tunnel_pair: TunnelProcess, rsa_pki: tuple[Path, Path], suite: str
) -> None:
    ca, _ = rsa_pki
    ok, output = _handshake(tunnel_pair.port("default"), ca, "-tls1_2", "-cipher", suite)
    assert ok, output
    assert f"Cipher is {suite}" in output


def test_tls13_works_by_default(tunnel_pair: TunnelProcess, rsa_pki: tuple[Path, Path]) -> None:
    ok, output = _handshake(tunnel_pair.port("default"), rsa_pki[0], "-tls1_3")
    assert ok, output
    assert "TLSv1.3" in output


# --- client mode without verification ------------------------------------------------------

UNVERIFIED = (
    r"LOG4\[ui\]: Service \[{name}\]: client mode without verifyChain or verifyPeer: .*impersonate"
)


def test_unverified_client_mode_starts_with_a_warning(
    tmp_path: Path, rsa_pki: tuple[Path, Path]
) -> None:
    ca, _ = rsa_pki
    with start_tunnel(
        tmp_path,
        "[blind]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n"
        f"[checked]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n"
        f"verifyChain = yes\nCAfile = {ca}\ncheckHost = localhost\n",
    ) as tunnel:
        log = tunnel.log()
    assert re.search(UNVERIFIED.format(name="blind"), log), log
    assert "Service [checked]: client mode without" not in log


def test_check_warns_about_unverified_client_mode_every_time(
    tmp_path: Path, rsa_pki: tuple[Path, Path]
) -> None:
    ca, _ = rsa_pki
    conf = tmp_path / "client.conf"
    conf.write_text(
        "[blind]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n"
        "[pinned]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n"
        f"verifyPeer = yes\nCAfile = {ca}\n",
        encoding="utf-8",
    )
    for _ in range(2):
        run = run_tlstunnel("--check", str(conf))
        assert run.returncode == 0, run.stderr
        assert (
            "[!] Service [blind]: client mode without verifyChain or verifyPeer: the server's "
            "certificate is not checked, so anyone in the path can impersonate it"
        ) in run.stderr
        assert "Service [pinned]: client mode without" not in run.stderr


def test_server_mode_without_verification_does_not_warn(
    tmp_path: Path, rsa_pki: tuple[Path, Path]
) -> None:
    _, server = rsa_pki
    conf = tmp_path / "server.conf"
    conf.write_text(f"[open]\ncert = {server}\naccept = 127.0.0.1:0\nconnect = 9\n", "utf-8")
    run = run_tlstunnel("--check", str(conf))
    assert run.returncode == 0, run.stderr
    assert "impersonate" not in run.stderr


def test_check_warns_about_verify_chain_without_subject_checks(
    tmp_path: Path, rsa_pki: tuple[Path, Path]
) -> None:
    ca, _ = rsa_pki
    conf = tmp_path / "chain.conf"
    conf.write_text(
        "[any_server]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n"
        f"verifyChain = yes\nCAfile = {ca}\n"
        "[named]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:9\n"
        f"verifyChain = yes\nCAfile = {ca}\ncheckHost = localhost\n",
        encoding="utf-8",
    )
    run = run_tlstunnel("--check", str(conf))
    assert run.returncode == 0, run.stderr
    assert '[!] Service [any_server] uses "verifyChain" without subject checks' in run.stderr
    assert "Service [named] uses" not in run.stderr
