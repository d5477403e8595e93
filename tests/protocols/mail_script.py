"""Driving the mail/news negotiators with no network: scripted peers and a fuzzer.

``Conversation`` plays the part of ``tlstunnel.net.negotiate``: it calls the
negotiator, checks the event contract (``Send``/``Note`` first, then exactly one
step), keeps what was sent to each side and turns ``NegotiationError`` into
``Failed`` as the driver does.  Tests feed it what each peer says and look at what
the tunnel answered; ``Conversation.client_mode`` and ``Conversation.server_mode``
open one the way every protocol's tests start.  ``fuzz`` throws arbitrary bytes at whichever side a
negotiator waits on, to check that nothing but ``Failed`` ever comes out of a
broken peer and that a side's buffer never outgrows the line limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tlstunnel.protocols import negotiator_class
from tlstunnel.protocols.base import (
    Connect,
    ConnectionFacts,
    Done,
    Event,
    Failed,
    NegotiationError,
    Negotiator,
    Note,
    ProtocolSettings,
    Receive,
    Send,
    Side,
    StartTLS,
)
from tlstunnel.protocols.lines import LineNegotiator

Step = Receive | StartTLS | Connect | Done | Failed


def make(name: str, client_mode: bool, **options: object) -> Negotiator:
    cls = negotiator_class(name, client_mode)
    assert cls is not None, f"{name} has no {'client' if client_mode else 'server'} mode"
    settings = ProtocolSettings(name=name, client_mode=client_mode, **options)  # type: ignore[arg-type]
    return cls(settings, ConnectionFacts())


@dataclass
class Conversation:
    negotiator: Negotiator
    sent: dict[Side, bytearray] = field(
        default_factory=lambda: {Side.CLIENT: bytearray(), Side.SERVER: bytearray()}
    )
    notes: list[str] = field(default_factory=list)
    step: Step | None = None

    @classmethod
    def begin(cls, name: str, client_mode: bool, **options: object) -> Conversation:
        conversation = cls(make(name, client_mode, **options))
        conversation._absorb(conversation._call(conversation.negotiator.start))
        return conversation

    @classmethod
    def client_mode(cls, name: str, **options: object) -> Conversation:
        """Client mode, connected: the negotiator waits for the server's greeting."""
        conversation = cls.begin(name, True, **options)
        assert conversation.connected() == Receive(Side.SERVER)
        return conversation

    @classmethod
    def server_mode(cls, name: str, greeting: bytes, passed_on: bytes) -> Conversation:
        """Server mode after the backend's ``greeting``, which the client got as
        ``passed_on``: the negotiator waits for the client's first command."""
        conversation = cls.begin(name, False)
        conversation.connected()
        assert conversation.server(greeting) == Receive(Side.CLIENT)
        assert conversation.take(Side.CLIENT) == passed_on
        return conversation

    def _call(self, method: object, *args: object) -> list[Event]:
        try:
            return method(*args)  # type: ignore[operator, no-any-return]
        except NegotiationError as exc:
            return [Failed(str(exc))]

    def _absorb(self, events: list[Event]) -> Step:
        assert events, "no events"
        *before, last = events
        for event in before:
            if isinstance(event, Send):
                self.sent[event.side] += event.data
            elif isinstance(event, Note):
                self.notes.append(event.text)
            else:
                raise AssertionError(f"a step before the last event: {events}")
        assert isinstance(last, Receive | StartTLS | Connect | Done | Failed), events
        self.step = last
        return last

    # -- what the network does -----------------------------------------------------------

    def connected(self, error: str | None = None) -> Step:
        assert isinstance(self.step, Connect), self.step
        return self._absorb(self._call(self.negotiator.connected, error))

    def feed(self, side: Side, data: bytes) -> Step:
        """``side`` says ``data`` (b"" = it closes); the negotiator must be waiting on it."""
        assert self.step == Receive(side), f"feeding the {side.value}, but the step is {self.step}"
        return self._absorb(self._call(self.negotiator.received, side, data))

    def server(self, data: bytes) -> Step:
        return self.feed(Side.SERVER, data)

    def client(self, data: bytes) -> Step:
        return self.feed(Side.CLIENT, data)

    def tls(self) -> Step:
        assert isinstance(self.step, StartTLS), self.step
        return self._absorb(self._call(self.negotiator.tls_started, self.step.side))

    def take(self, side: Side) -> bytes:
        """What the tunnel sent to ``side`` since the last ``take``."""
        data = bytes(self.sent[side])
        self.sent[side].clear()
        return data

    @property
    def reason(self) -> str:
        assert isinstance(self.step, Failed), self.step
        return self.step.reason


def fuzz(name: str, client_mode: bool, chunks: list[bytes], **options: object) -> None:
    """Feed ``chunks`` to whatever side the negotiator waits on, acting on every
    other step as a well-behaved network would; check the contract throughout."""
    conversation = Conversation.begin(name, client_mode, **options)
    negotiator = conversation.negotiator
    assert isinstance(negotiator, LineNegotiator)
    pending = list(chunks)
    while True:
        step = conversation.step
        if isinstance(step, Connect):
            conversation.connected()
        elif isinstance(step, StartTLS):
            conversation.tls()
        elif isinstance(step, Receive):
            buffered = len(negotiator.buffers[step.side])
            assert buffered <= negotiator.max_line, f"{buffered} bytes buffered"
            if not pending:
                conversation.feed(step.side, b"")
                continue
            conversation.feed(step.side, pending.pop(0))
        else:
            assert isinstance(step, Done | Failed)
            return
