"""The one driver that runs a sans-IO negotiator (``tlstunnel.protocols``) over real
connections.

It owns no protocol knowledge: it calls the negotiator, carries out each event
(write to a side, read from a side with a deadline, start TLS, connect) and feeds the
outcome back, until the negotiator says ``Done`` (the caller then relays) or
``Failed`` (the caller logs the reason and closes both sides).

What it needs from the connection it serves comes in as three callables, so this
module does not know about services or configuration:

* ``connect(step)`` opens the SERVER side as a ``Connect`` step asks (its host None:
  the service's targets), raising an exception with a ``reason`` when it cannot;
* ``handshake(endpoint)`` runs the TLS handshake on an endpoint and its peer checks;
* ``log(level, text)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tlstunnel.net.endpoint import Endpoint, TLSEndpoint
from tlstunnel.protocols.base import (
    Connect,
    Done,
    Event,
    Failed,
    NegotiationError,
    Negotiator,
    Note,
    Receive,
    Send,
    Side,
    StartTLS,
)

Connector = Callable[[Connect], Awaitable[Endpoint]]
Handshaker = Callable[[TLSEndpoint], Awaitable[None]]
Logger = Callable[[int, str], None]


class NegotiationFailed(Exception):
    """The negotiator gave up, a peer misbehaved, or a deadline passed.  ``told_client``:
    its last words included a message to the client (an error reply that should be
    delivered before the connection closes, not lost to a reset)."""

    def __init__(self, reason: str, told_client: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.told_client = told_client


@dataclass(slots=True)
class Negotiated:
    """Both sides, ready to relay."""

    client: Endpoint
    server: Endpoint


async def negotiate(
    negotiator: Negotiator,
    client: Endpoint,
    *,
    connect: Connector,
    handshake: Handshaker,
    log: Logger,
    read_timeout: float,
) -> Negotiated:
    """Run ``negotiator`` to its end.  Raises ``NegotiationFailed``; exceptions from
    ``connect``/``handshake`` (their own failures, already logged) pass through.  On
    any failure the SERVER side, if it was opened, is aborted here; the caller closes
    the client."""
    name = negotiator.settings.name
    server: Endpoint | None = None
    # Sides the negotiator has read plaintext from.  Bytes waiting on a side that was
    # never read are TLS records (say, after a PROXY header) and start its handshake;
    # on a side that spoke plaintext they were sent after asking for TLS: dropped.
    spoken: set[Side] = set()

    def endpoint(side: Side) -> Endpoint:
        if side is Side.CLIENT:
            return client
        if server is None:
            raise NegotiationFailed(f"{name}: the negotiator used the server before connecting")
        return server

    try:
        events = _call(negotiator.start)
        while True:
            step: Event | None = None
            told_client = False
            for event in events:
                if isinstance(event, Send):
                    told_client = told_client or event.side is Side.CLIENT
                    endpoint(event.side).send_before_relay(event.data)
                elif isinstance(event, Note):
                    log(event.level, f"{name}: {event.text}")
                else:
                    step = event
            if step is None:
                raise NegotiationFailed(f"{name}: the negotiator stopped without a next step")
            if isinstance(step, Done):
                if server is None:
                    raise NegotiationFailed(f"{name}: negotiation ended before connecting")
                if step.to_server:
                    server.send(step.to_server)
                if step.to_client:
                    client.send(step.to_client)
                return Negotiated(client, server)
            if isinstance(step, Failed):
                raise NegotiationFailed(f"{name}: {step.reason}", told_client)
            if isinstance(step, Receive):
                side = step.side
                spoken.add(side)
                data = await _read(endpoint(side), read_timeout, name, side)
                events = _call(negotiator.received, side, data)
            elif isinstance(step, StartTLS):
                tls = endpoint(step.side)
                if not isinstance(tls, TLSEndpoint):
                    raise NegotiationFailed(f"{name}: TLS asked for on the plain side")
                dropped = tls.start_tls() if step.side in spoken else 0
                if step.side not in spoken:
                    tls.start_tls(tls.take_held())
                if dropped:
                    log(
                        4,
                        f"{name}: {dropped} byte(s) of plaintext sent after the request "
                        "for TLS were discarded",
                    )
                await handshake(tls)
                events = _call(negotiator.tls_started, step.side)
            elif isinstance(step, Connect):
                if server is not None:
                    raise NegotiationFailed(f"{name}: the negotiator connected twice")
                try:
                    server = await connect(step)
                except OSError as exc:
                    events = _call(negotiator.connected, exc.strerror or str(exc))
                    continue
                except Exception as exc:
                    error = getattr(exc, "reason", None) or str(exc)
                    events = _call(negotiator.connected, error)
                    if not any(isinstance(e, Send) for e in events):
                        raise  # nothing to tell the client: let the caller log as usual
                    continue
                events = _call(negotiator.connected, None)
    except BaseException:
        if server is not None:
            server.abort()
        raise


def _call(method: Callable[..., list[Event]], *args: object) -> list[Event]:
    try:
        return method(*args)
    except NegotiationError as exc:
        return [Failed(str(exc))]


async def _read(endpoint: Endpoint, timeout: float, name: str, side: Side) -> bytes:
    try:
        async with asyncio.timeout(timeout):
            return await endpoint.read_some()
    except TimeoutError:
        raise NegotiationFailed(
            f"{name}: TIMEOUTbusy exceeded: the {side.value} sent nothing for {timeout:g} s"
        ) from None
