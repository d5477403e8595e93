"""``policy = module:function``: loading (errors with file:line), what the hook is handed,
each kind of answer, exceptions, and its order with the ``allow*`` rules, against a
running tunnel with real clients and a real TLS server.

The hook under test lives in the configuration's folder (found there without
PYTHONPATH) and appends what it saw to ``seen.jsonl`` next to itself.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.backends import EchoServer
from tests.support.clients import client_context
from tests.support.tunnel import TunnelProcess, run_tlstunnel, start_tunnel

from .test_peer_acl import Identities, RecordingTLSServer, ids, issue

__all__ = ["ids"]  # the fixture, shared with test_peer_acl

POLICY_MODULE = """
import json
import os

from tlstunnel.tls.policy import PeerInfo

SEEN = os.path.join(os.path.dirname(__file__), "seen.jsonl")


def admit(peer: PeerInfo):
    cert = peer.certificate
    names = cert.common_names if cert is not None else ()
    with open(SEEN, "a") as out:
        out.write(json.dumps({
            "service": peer.service, "mode": peer.mode, "cn": list(names),
            "uris": list(cert.uris) if cert else [], "der": len(cert.der) if cert else 0,
            "sni": peer.sni, "alpn": peer.alpn, "version": peer.tls_version,
            "address": str(peer.source_address), "port": peer.source_port,
        }) + "\\n")
    if cert is None:
        return "a certificate is required"
    if "alice" in names or "api" in names:
        return True
    if "bob" in names:
        return False
    if "carol" in names:
        raise ValueError("boom")
    if "dave" in names:
        return None
    return f"unknown client {names[0]}"
"""


def _seen(directory: Path) -> list[dict[str, Any]]:
    path = directory / "seen.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("policy")
    (directory / "tunnel_policy.py").write_text(POLICY_MODULE, encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def people(ids: Identities) -> dict[str, Path]:
    found = {"alice": ids.alice.path, "bob": ids.bob.path, "mallory": ids.mallory.path}
    for name in ("carol", "dave"):
        found[name] = issue(ids.ca, ids.directory / f"{name}.pem", cn=name).path
    return found


@pytest.fixture(scope="module")
def policy_tunnel(policy_dir: Path, ids: Identities) -> Iterator[tuple[TunnelProcess, EchoServer]]:
    backend = EchoServer()
    common = (
        f"cert = {ids.server}\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{backend.port}\n"
        "policy = tunnel_policy:admit\n"
    )
    verified = f"verifyChain = yes\nCAfile = {ids.ca_file}\n"
    tunnel = start_tunnel(
        policy_dir,
        f"[pol]\n{common}{verified}requireCert = no\nalpn = h2, http/1.1\n"
        f"[both]\n{common}{verified}allowCN = alice\nallowCN = bob\n"
        f"[unverified]\n{common}",
    )
    try:
        yield tunnel, backend
    finally:
        tunnel.stop()
        backend.close()


def _exchange(port: int, ca: Path, cert: Path | None) -> tuple[bytes, int]:
    """(the echo of one line, or b"" when refused; our local port)."""
    context = client_context(ca, cert=cert)
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    local_port = raw.getsockname()[1]
    try:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"request\n")
            return tls.recv(1024), local_port
    except (ssl.SSLError, ConnectionError):
        return b"", local_port
    finally:
        raw.close()


def _refused(
    tunnel: TunnelProcess, backend: EchoServer, service: str, ca: Path, cert: Path | None
) -> str:
    """Connect, expect a refusal: the log line, and nothing at the backend."""
    before_log = len(re.findall(rf"Service \[{service}\]: peer .* refused: ", tunnel.log()))
    before_backend = backend.accepted
    reply, _ = _exchange(tunnel.port(service), ca, cert)
    assert reply == b""
    log = tunnel.wait_for_log(rf"Service \[{service}\]: peer .* refused: ", count=before_log + 1)
    assert backend.accepted == before_backend, "a refused peer reached the backend"
    lines: list[str] = re.findall(rf"LOG4\[\d+\]: Service \[{service}\]: peer .* refused: .*", log)
    return lines[-1]


def test_the_hook_admits_and_sees_the_connection(
    policy_tunnel: tuple[TunnelProcess, EchoServer],
    policy_dir: Path,
    ids: Identities,
    people: dict[str, Path],
) -> None:
    tunnel, backend = policy_tunnel
    before = backend.accepted
    reply, local_port = _exchange(tunnel.port("pol"), ids.ca_file, people["alice"])
    assert reply == b"request\n"
    assert backend.accepted == before + 1
    seen = [s for s in _seen(policy_dir) if s["port"] == local_port]
    assert seen == [
        {
            "service": "pol",
            "mode": "server",
            "cn": ["alice"],
            "uris": ["spiffe://example.org/web"],
            "der": len(ids.alice.der),
            "sni": "localhost",
            "alpn": "h2",
            "version": "TLSv1.3",
            "address": "127.0.0.1",
            "port": local_port,
        }
    ]


@pytest.mark.parametrize(
    ("who", "reason"),
    [
        ("bob", "policy tunnel_policy:admit refused it"),
        ("mallory", "policy tunnel_policy:admit refused it: unknown client mallory"),
        ("carol", "policy tunnel_policy:admit raised ValueError: boom"),
        ("dave", "policy tunnel_policy:admit returned NoneType (return True to admit"),
        (None, "policy tunnel_policy:admit refused it: a certificate is required"),
    ],
)
def test_every_answer_but_true_refuses(
    policy_tunnel: tuple[TunnelProcess, EchoServer],
    ids: Identities,
    people: dict[str, Path],
    who: str | None,
    reason: str,
) -> None:
    tunnel, backend = policy_tunnel
    line = _refused(tunnel, backend, "pol", ids.ca_file, people[who] if who else None)
    subject = f"CN={who}" if who else "(no verified certificate)"
    assert subject in line
    assert f"refused: {reason}" in line, line
    # The tunnel goes on: the next client is served.
    assert _exchange(tunnel.port("pol"), ids.ca_file, people["alice"])[0] == b"request\n"


def test_allow_rules_run_first_and_both_must_pass(
    policy_tunnel: tuple[TunnelProcess, EchoServer],
    policy_dir: Path,
    ids: Identities,
    people: dict[str, Path],
) -> None:
    tunnel, backend = policy_tunnel
    # bob passes allowCN, then the hook says no.
    assert "refused: policy tunnel_policy:admit refused it" in _refused(
        tunnel, backend, "both", ids.ca_file, people["bob"]
    )
    # mallory fails allowCN: refused there, the hook is never called.
    calls = len([s for s in _seen(policy_dir) if s["service"] == "both"])
    assert "refused: no allow rule matched (allowCN)" in _refused(
        tunnel, backend, "both", ids.ca_file, people["mallory"]
    )
    assert len([s for s in _seen(policy_dir) if s["service"] == "both"]) == calls
    assert _exchange(tunnel.port("both"), ids.ca_file, people["alice"])[0] == b"request\n"


def test_an_unverified_certificate_is_not_handed_to_the_hook(
    policy_tunnel: tuple[TunnelProcess, EchoServer], ids: Identities, people: dict[str, Path]
) -> None:
    tunnel, backend = policy_tunnel
    line = _refused(tunnel, backend, "unverified", ids.ca_file, people["alice"])
    assert "a certificate is required" in line


def test_client_mode_hands_the_servers_certificate_and_our_sni(
    tmp_path: Path, ids: Identities
) -> None:
    (tmp_path / "client_policy.py").write_text(POLICY_MODULE, encoding="utf-8")
    api = issue(ids.ca, tmp_path / "api.pem", cn="api", uris=("spiffe://example.org/api",))
    other = issue(ids.ca, tmp_path / "other.pem", cn="other")
    servers = [RecordingTLSServer(api.path), RecordingTLSServer(other.path)]
    try:
        text = "".join(
            f"[{name}]\nclient = yes\naccept = 127.0.0.1:0\nconnect = 127.0.0.1:{s.port}\n"
            f"verifyChain = yes\nCAfile = {ids.ca_file}\nsni = {name}.example\n"
            "policy = client_policy:admit\n"
            for name, s in (("api", servers[0]), ("other", servers[1]))
        )
        with start_tunnel(tmp_path, text) as tunnel:
            with socket.create_connection(("127.0.0.1", tunnel.port("api")), 10) as c:
                c.sendall(b"secret\n")
                assert c.recv(100) == b"served\n"
            with socket.create_connection(("127.0.0.1", tunnel.port("other")), 10) as c:
                c.sendall(b"secret\n")
                tunnel.wait_for_log(
                    r"Service \[other\]: peer O=Example, CN=other at 127\.0\.0\.1:\d+ refused: "
                    "policy client_policy:admit refused it: unknown client other"
                )
        assert servers[0].received == [b"secret\n"]
        assert b"secret" not in b"".join(servers[1].received)
        seen = {s["service"]: s for s in _seen(tmp_path)}
        assert seen["api"]["mode"] == "client"
        assert seen["api"]["sni"] == "api.example"
        assert seen["api"]["uris"] == ["spiffe://example.org/api"]
        assert seen["other"]["cn"] == ["other"]
    finally:
        for server in servers:
            server.close()


# --- loading ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module_text", "value", "complaint"),
    [
        ("", "no_such_policy_module:admit", "cannot import no_such_policy_module"),
        ("def other(p): return True\n", "{m}:admit", "{m} has no admit"),
        ("admit = 42\n", "{m}:admit", "{m}:admit is a int, not a function"),
        ("async def admit(p): return True\n", "{m}:admit", "is a coroutine function"),
        ("raise RuntimeError('half written')\n", "{m}:admit", "RuntimeError: half written"),
        ("def admit(p) return True\n", "{m}:admit", "SyntaxError"),
        ("", "{m}", "write package.module:function"),
    ],
)
def test_a_hook_that_cannot_be_loaded_is_a_config_error(
    tmp_path: Path, ids: Identities, module_text: str, value: str, complaint: str
) -> None:
    module = f"broken_policy_{abs(hash(value + module_text)) % 10**8}"
    (tmp_path / f"{module}.py").write_text(module_text, encoding="utf-8")
    conf = tmp_path / "policy.conf"
    conf.write_text(
        f"[s]\ncert = {ids.server}\naccept = 127.0.0.1:0\nconnect = 9\n"
        f"policy = {value.format(m=module)}\n",
        encoding="utf-8",
    )
    run = run_tlstunnel("--check", str(conf))
    assert run.returncode == 1, run.stderr
    assert f"{conf}:5: policy: " in run.stderr, run.stderr
    assert complaint.format(m=module) in run.stderr


def test_a_loadable_hook_passes_check(tmp_path: Path, ids: Identities) -> None:
    (tmp_path / "fine_policy.py").write_text("def admit(peer):\n    return True\n", "utf-8")
    conf = tmp_path / "policy.conf"
    conf.write_text(
        f"[s]\ncert = {ids.server}\naccept = 127.0.0.1:0\nconnect = 9\n"
        "policy = fine_policy:admit\n",
        encoding="utf-8",
    )
    run = run_tlstunnel("--check", str(conf))
    assert run.returncode == 0, run.stderr
