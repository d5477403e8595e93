"""A full service under a burst: refusals are one readable line each, nothing else.

With ``maxConnections`` reached, every further client is closed before any TLS work and
the log says so once per client, in stunnel's format.  Nothing may leak to stderr
outside that format: a burst of refusals must not become a burst of asyncio warnings.
"""

from __future__ import annotations

import re
import socket

from tests.conftest import TunnelFactory
from tests.lifecycle.helpers import LOG_LINE
from tests.load.helpers import Backend, EchoProtocol, LoopThread, server_service
from tests.support.clients import tls_connect
from tests.support.pki import PKIFiles

LIMIT = 5
BURST = 50


def test_refused_clients_leave_only_stunnel_lines(tunnel: TunnelFactory, pki: PKIFiles) -> None:
    with LoopThread() as helper:
        backend = helper.run(Backend.start(EchoProtocol))
        proc = tunnel(server_service("tls", pki, backend.port, f"maxConnections = {LIMIT}\n"))
        port = proc.port("tls")
        held = [tls_connect(port, pki.ca) for _ in range(LIMIT)]
        try:
            for conn in held:
                conn.sendall(b"h")
                assert conn.recv(1) == b"h"
            for _ in range(BURST):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as refused:
                    assert refused.recv(1) == b"", "closed before any TLS work"
            log = proc.wait_for_log("refused: maxConnections", count=BURST)
        finally:
            for conn in held:
                conn.close()
            helper.run(backend.close())
    foreign = [line for line in log.splitlines() if not re.match(LOG_LINE, line)]
    assert foreign == [], f"{len(foreign)} line(s) outside stunnel's format: {foreign[:4]}"
