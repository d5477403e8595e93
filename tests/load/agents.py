"""Helper processes for the load tests, so their CPU does not share the test's GIL.

``python -m tests.load.agents echo PORT``
    An echo backend on 127.0.0.1:PORT (0: any free port); prints ``{"port": N}`` once
    listening, then serves until killed.  The fault-injection test kills it with SIGKILL
    and starts it again on the same port.

``python -m tests.load.agents storm PORT CAFILE COUNT RATE``
    COUNT TLS clients started at RATE per second, each doing a full handshake, a 64-byte
    echo and a close; prints ``{"ok": N, "failed": M, "seconds": S}`` at the end.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import sys
import time


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False


async def echo(port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    server = await loop.create_server(_Echo, sock=sock)
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    await server.serve_forever()


async def storm(port: int, cafile: str, count: int, rate: float) -> None:
    context = ssl.create_default_context(cafile=cafile)
    payload = b"s" * 64
    outcome: dict[str, float] = {"ok": 0, "failed": 0}

    async def one() -> None:
        try:
            async with asyncio.timeout(30):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", port, ssl=context, server_hostname="localhost"
                )
                writer.write(payload)
                await reader.readexactly(len(payload))
                writer.close()
                await writer.wait_closed()
            outcome["ok"] += 1
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):  # TimeoutError too
            outcome["failed"] += 1

    started = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    for number in range(count):
        delay = started + number / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    outcome["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(outcome), flush=True)


def main(argv: list[str]) -> None:
    command = argv[0]
    if command == "echo":
        asyncio.run(echo(int(argv[1])))
    elif command == "storm":
        asyncio.run(storm(int(argv[1]), argv[2], int(argv[3]), float(argv[4])))
    else:
        raise SystemExit(f"unknown agent {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
