"""``acceptProxy``: read the PROXY header a load balancer sends before anything else.

When tlstunnel sits behind HAProxy (``send-proxy``/``send-proxy-v2``), an AWS NLB, or
another tunnel with ``protocol = proxy``, every connection starts with a PROXY header
(v1 or v2, told apart by signature; ``tlstunnel.protocols.proxy_header`` parses
both) naming the real client.  It is read here, before any TLS or protocol work:

* the sender must be allowed to send it (``acceptProxyFrom`` networks); without that
  list anyone who can reach the port can claim any address, which is why the service
  warns at start-up;
* the whole header must arrive within one deadline (``TIMEOUTbusy``), not one per
  read, so a peer trickling bytes cannot hold the connection;
* the reader never buffers more than the parser accepts (107 bytes for v1, the v2
  limit plus one read), and bytes that came with the header's last segment (the
  ClientHello, or a protocol's first line) are put back on the endpoint with
  ``unread`` so whatever comes next reads them first.

The connection then takes the header's addresses as its own (``Connection`` in
service.py does that); a LOCAL header (a health check) or one without usable
addresses (``UNKNOWN``, UNSPEC, Unix) leaves the socket's addresses in place.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable

from tlstunnel.net.endpoint import Endpoint
from tlstunnel.protocols.proxy_header import Parsed, ProxyHeaderError, parse

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyHeaderRefused(Exception):
    """No acceptable PROXY header arrived; ``reason`` is the log line's text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """``acceptProxyFrom`` values (already validated by the configuration)."""
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def source_allowed(address: tuple[str, int] | None, networks: tuple[Network, ...]) -> bool:
    """Whether a sender at ``address`` may send a PROXY header.  A Unix socket peer
    (None) is in no network.  IPv4 networks also match IPv4-mapped IPv6 addresses."""
    if address is None:
        return False
    ip = ipaddress.ip_address(address[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == network.version and ip in network for network in networks)


def unmapped(address: tuple[str, int]) -> tuple[str, int]:
    """``::ffff:192.0.2.7`` is written ``192.0.2.7``, as for socket addresses."""
    ip = ipaddress.ip_address(address[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), address[1]
    return address


async def read_proxy_header(endpoint: Endpoint, timeout: float) -> Parsed:
    """Read one PROXY header from ``endpoint`` (not yet linked to a relay), leaving
    what followed it to be read again.  Raises ``ProxyHeaderRefused``."""
    received = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while True:
                data = await endpoint.read_some()
                if not data:
                    if received:
                        raise ProxyHeaderRefused(
                            f"the connection closed after {len(received)} byte(s) of a PROXY header"
                        )
                    raise ProxyHeaderRefused("the connection closed before a PROXY header")
                received += data
                parsed = parse(bytes(received))
                if parsed is not None:
                    endpoint.unread(bytes(received[parsed.length :]))
                    return parsed
    except ProxyHeaderError as exc:
        raise ProxyHeaderRefused(str(exc)) from None
    except TimeoutError:
        raise ProxyHeaderRefused(
            f"TIMEOUTbusy exceeded: no complete PROXY header within {timeout:g} s "
            f"({len(received)} byte(s) received)"
        ) from None
