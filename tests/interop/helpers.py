"""What the interop tests share: service sections, two-tunnel chains and plain clients.

A *chain* is the classic stunnel deployment cut in two: a plain client talks to a
tunnel in client mode, which speaks TLS to a tunnel in server mode, which talks plain
TCP to a backend.  In every chain here one side is tlstunnel and the other is the real
stunnel4 (or openssl), so each test checks our TLS against someone else's.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tests.support.pki import PKIFiles
from tests.support.tunnel import TunnelProcess

Role = Literal["client", "server"]
Program = Literal["tlstunnel", "stunnel4"]
StartTunnel = Callable[..., TunnelProcess]


def server_section(pki: PKIFiles, backend_port: int, extra: str = "") -> str:
    """Service ``[tls]``: TLS in, plain TCP out to ``backend_port``."""
    return (
        "[tls]\n"
        "accept = 127.0.0.1:0\n"
        f"connect = 127.0.0.1:{backend_port}\n"
        f"cert = {pki.server}\n" + extra
    )


def client_section(server_port: int, extra: str = "") -> str:
    """Service ``[plain]``: plain TCP in, TLS out to ``server_port``."""
    return (
        f"[plain]\naccept = 127.0.0.1:0\nclient = yes\nconnect = 127.0.0.1:{server_port}\n" + extra
    )


@dataclass(frozen=True)
class Chain:
    """plain client → ``client`` (TLS client mode) → ``server`` (server mode) → backend."""

    client: TunnelProcess
    server: TunnelProcess
    ours: TunnelProcess
    theirs: TunnelProcess

    @property
    def entry_port(self) -> int:
        """Where the plain client connects."""
        return self.client.port("plain")


def start_chain(
    tunnel: StartTunnel,
    pki: PKIFiles,
    backend_port: int,
    *,
    ours: Role,
    server_extra: str = "",
    client_extra: str = "",
) -> Chain:
    """Start the server side, then the client side; tlstunnel plays the role ``ours``."""
    server_program: Program = "tlstunnel" if ours == "server" else "stunnel4"
    client_program: Program = "tlstunnel" if ours == "client" else "stunnel4"
    server = tunnel(
        server_section(pki, backend_port, server_extra),
        program=server_program,
        name=f"{server_program}-server",
    )
    client = tunnel(
        client_section(server.port("tls"), client_extra),
        program=client_program,
        name=f"{client_program}-client",
    )
    if ours == "server":
        return Chain(client=client, server=server, ours=server, theirs=client)
    return Chain(client=client, server=server, ours=client, theirs=server)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def exchange(port: int, payload: bytes, *, timeout: float = 20.0) -> bytes:
    """Send ``payload`` and half-close while reading everything until the peer's EOF.

    Sending happens on a thread so that an echoing backend never stalls on full
    buffers.  A reset instead of a clean EOF raises: the success paths must end cleanly.
    """
    errors: list[BaseException] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:

        def send() -> None:
            try:
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
            except OSError as exc:  # reported to the test below
                errors.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks: list[bytes] = []
        while data := conn.recv(1 << 16):
            chunks.append(data)
        sender.join(timeout)
    if errors:
        raise AssertionError(f"sending failed: {errors[0]!r}")
    return b"".join(chunks)


def read_until_closed(port: int, payload: bytes, *, timeout: float = 10.0) -> bytes:
    """Connect, send ``payload``, read until EOF *or reset*: for refused connections."""
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        try:
            conn.sendall(payload)
            while data := conn.recv(1 << 16):
                chunks.append(data)
        except (ConnectionResetError, BrokenPipeError):
            pass
    return b"".join(chunks)


def openssl_path() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise RuntimeError("the openssl command is not installed (apt-get install openssl)")
    return path


# What ``openssl s_client -state`` prints on stderr when the peer's close_notify arrives.
CLOSE_NOTIFY_READ = "SSL3 alert read:warning:close notify"


def s_client(
    port: int,
    ca: Path,
    *args: str,
    stdin: bytes,
    timeout: float = 15.0,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``openssl s_client`` against 127.0.0.1:``port``, verifying the server.

    ``-quiet`` keeps stdout to the application data (and implies ``-ign_eof``: the
    client waits for the server to close after its stdin ends); ``-state`` puts every
    alert on stderr, which is how tests see a close_notify arrive.
    """
    command = [
        openssl_path(),
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        "-CAfile",
        str(ca),
        "-verify_return_error",
        "-verify_hostname",
        "localhost",
        "-quiet",
        "-nocommands",
        "-state",
        *args,
    ]
    return subprocess.run(command, input=stdin, capture_output=True, timeout=timeout, check=False)
