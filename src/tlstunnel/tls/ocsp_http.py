"""The HTTP leg of OCSP: one POST to a responder, over asyncio, under one deadline.

RFC 6960 appendix A.1: the DER request is the body of ``POST PATH`` with
``Content-Type: application/ocsp-request``; the answer is a 200 whose body is the DER
response.  This client speaks HTTP/1.0 with ``Connection: close`` (as OpenSSL's own
``OCSP_sendreq`` does), so the body ends at ``Content-Length`` or at the responder's
close and no chunked decoding is ever needed.  ``TIMEOUTocsp`` bounds the whole
exchange -- connect, send, and read -- so a responder that accepts and then hangs costs
a connection at most that long.  Only ``http://`` URLs: like stunnel, OCSP over TLS
would need a tunnel of its own (an extra client-mode service pointing at it).

No third-party code: stdlib asyncio streams, and the standard library's URL splitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from dataclasses import dataclass

__all__ = ["MAX_RESPONSE_BYTES", "ResponderError", "ResponderURL", "post_ocsp_request"]

# An OCSP response for one certificate is a few KB; anything near this is not one.
MAX_RESPONSE_BYTES = 1 << 20


class ResponderError(Exception):
    """The responder could not be asked, or did not answer with an OCSP response."""


@dataclass(frozen=True, slots=True)
class ResponderURL:
    """An ``http://HOST[:PORT][/PATH]`` responder address, split for connecting."""

    text: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, text: str) -> ResponderURL:
        """Split ``text``; ``ValueError`` says why it cannot be used."""
        try:
            parts = urllib.parse.urlsplit(text.strip())
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a URL ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme == "https":
            raise ValueError(
                "TLS is not supported for OCSP; define an extra client-mode service that "
                "connects to the responder and point the http:// URL at its accept address"
            )
        if scheme != "http" or not parts.hostname:
            raise ValueError(f"{text!r} is not an http://HOST[:PORT][/PATH] URL")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(text.strip(), parts.hostname, port or 80, path)

    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"


def _request_bytes(url: ResponderURL, body: bytes) -> bytes:
    head = (
        f"POST {url.path} HTTP/1.0\r\n"
        f"Host: {url.host_header()}\r\n"
        "User-Agent: tlstunnel\r\n"
        "Content-Type: application/ocsp-request\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _response_body(raw: bytes) -> bytes:
    """The body of an HTTP/1.x response; ``ResponderError`` for anything but a 200."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    if not separator:
        raise ResponderError("the responder's answer is not an HTTP response")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("HTTP/") or not status[1].isdigit():
        raise ResponderError("the responder's answer is not an HTTP response")
    if status[1] != "200":
        why = " ".join(status[1:])
        raise ResponderError(f"the responder answered HTTP {why}")
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            length = int(value.strip())
            if len(body) < length:
                raise ResponderError("the responder closed the connection mid-response")
            return body[:length]
    return body


async def post_ocsp_request(url: ResponderURL, request_der: bytes, timeout: float) -> bytes:
    """POST ``request_der`` to ``url`` and return the response body (DER).

    Raises ``ResponderError`` (refused, reset, not HTTP, not 200, too large) or
    ``TimeoutError`` when the whole exchange took longer than ``timeout`` seconds.
    """
    async with asyncio.timeout(timeout):
        try:
            reader, writer = await asyncio.open_connection(url.host, url.port)
        except OSError as exc:
            raise ResponderError(exc.strerror or str(exc)) from None
        try:
            writer.write(_request_bytes(url, request_der))
            await writer.drain()
            chunks: list[bytes] = []
            size = 0
            while chunk := await reader.read(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise ResponderError("the responder's answer is too large")
        except OSError as exc:
            raise ResponderError(exc.strerror or str(exc)) from None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    return _response_body(b"".join(chunks))
