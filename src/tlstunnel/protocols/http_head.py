"""A bounded reader for the head of one HTTP/1.x message (request or response).

``protocol = connect`` speaks just enough HTTP to open a tunnel: one request line or
status line, some header lines, an empty line.  ``HeadReader`` collects bytes until
that empty line and hands back the head as decoded lines; everything after it stays
in the reader (``rest``), because it belongs to whatever follows (TLS).

Theory of operation: bytes are appended to one buffer; after each feed the buffer is
searched for the end of the head (``\\r\\n\\r\\n``, or a bare ``\\n\\n`` from sloppy
peers).  The buffer never holds more than ``limit`` bytes of an unfinished head: a
peer that sends an endless head is cut off with ``NegotiationError``, as is one whose
head is not text.  Lines are decoded as Latin-1 (HTTP's historic charset: every byte
is a character, so decoding cannot fail) and must not contain control characters
other than tab, which keeps log lines that quote them readable and honest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tlstunnel.protocols.base import NegotiationError

# The whole head, request or status line included.  Proxies answer CONNECT with a few
# short lines; 16 KiB is generous and still cheap per connection.
HEAD_LIMIT = 16384

_END = re.compile(rb"\r?\n\r?\n")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS = re.compile(r"(HTTP/\d\.\d) (\d{3})(?: (.*))?")
_REQUEST = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) (HTTP/\d\.\d)")


@dataclass(frozen=True, slots=True)
class Head:
    """One message head: its first line and its header lines, as text."""

    first_line: str
    headers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StatusLine:
    version: str  # "HTTP/1.1"
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class RequestLine:
    method: str
    target: str
    version: str


class HeadReader:
    """Collects one HTTP head; ``feed`` returns it once its empty line has arrived."""

    __slots__ = ("_data", "_head", "limit")

    def __init__(self, limit: int = HEAD_LIMIT) -> None:
        self._data = bytearray()
        self._head: Head | None = None
        self.limit = limit

    def feed(self, data: bytes) -> Head | None:
        """Add ``data``; the head once complete (then again on later calls), else None.
        Raises ``NegotiationError`` for a head over the limit or one that is not text."""
        if self._head is not None:
            self._data += data
            return self._head
        # Search only where the end can be: a little before the new bytes.
        start = max(0, len(self._data) - 3)
        self._data += data
        end = _END.search(self._data, start)
        if end is None:
            if len(self._data) > self.limit:
                raise NegotiationError(f"an HTTP head longer than {self.limit} bytes")
            return None
        if end.start() > self.limit:
            raise NegotiationError(f"an HTTP head longer than {self.limit} bytes")
        raw = bytes(self._data[: end.start()])
        del self._data[: end.end()]
        self._head = _split_head(raw)
        return self._head

    def rest(self) -> bytes:
        """Bytes received after the head (and forget them)."""
        data = bytes(self._data)
        self._data.clear()
        return data

    def __len__(self) -> int:
        return len(self._data)


def _split_head(raw: bytes) -> Head:
    text = raw.decode("latin-1")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    for line in lines:
        if _CONTROL.search(line):
            raise NegotiationError(f"the HTTP head holds control characters: {quote(line)}")
    return Head(lines[0], tuple(lines[1:]))


def parse_status_line(line: str) -> StatusLine:
    """``HTTP/1.1 200 Connection established`` → its parts; ``NegotiationError`` else."""
    match = _STATUS.fullmatch(line)
    if match is None:
        raise NegotiationError(f"not an HTTP status line: {quote(line)}")
    return StatusLine(match[1], int(match[2]), match[3] or "")


def parse_request_line(line: str) -> RequestLine:
    """``CONNECT host:443 HTTP/1.1`` → its parts; ``NegotiationError`` else."""
    match = _REQUEST.fullmatch(line)
    if match is None:
        raise NegotiationError(f"not an HTTP request line: {quote(line)}")
    return RequestLine(match[1], match[2], match[3])


def split_authority(authority: str) -> tuple[str, int]:
    """``host:port`` or ``[IPv6]:port`` (a CONNECT target) → (host, port).
    Raises ``NegotiationError`` when either part is missing or the port is not 1-65535."""
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise NegotiationError(f"not HOST:PORT: {quote(authority)}")
        port_text = rest[1:]
    else:
        host, colon, port_text = authority.rpartition(":")
        if not colon or ":" in host:
            raise NegotiationError(f"not HOST:PORT: {quote(authority)}")
    if not host or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise NegotiationError(f"not HOST:PORT: {quote(authority)}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise NegotiationError(f"port out of range: {quote(authority)}")
    return host, port


def join_authority(host: str, port: int) -> str:
    """The reverse of ``split_authority``: IPv6 literals get their brackets back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def quote(line: str, limit: int = 200) -> str:
    """A peer's line, made safe and short enough for one log line."""
    shown = line if len(line) <= limit else line[:limit] + "..."
    return repr(shown)
