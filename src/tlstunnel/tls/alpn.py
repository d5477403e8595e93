"""``alpn = h2, http/1.1``: Application-Layer Protocol Negotiation (RFC 7301).

The value is a comma-separated list, best first; several ``alpn`` lines in one section
add to the list in the order written (duplicates are dropped).

Server mode: the list is what we *select* from.  OpenSSL's ``SSL_select_next_proto``
(called by Python's ALPN callback) walks our list in order and picks the first
protocol the client also offers, so the service's preference wins, not the client's.
When the client offers ALPN but nothing in our list, Python's callback answers
``SSL_TLSEXT_ERR_NOACK``: the handshake goes on with no protocol agreed (no
``no_application_protocol`` alert, unlike RFC 7301's advice), and the connection is
relayed as usual; the log says ``ALPN: none``.  A client that offers no ALPN is the
same case.

Client mode: the list is what we *offer*; the server chooses.  OpenSSL itself refuses
a server that picks a protocol we did not offer.

Either way the agreed protocol is logged at info level (``ALPN: h2``) and handed to the
``policy`` hook.  Python's ``set_alpn_protocols`` takes ASCII names only; a name is 1 to
255 characters of printable ASCII with no comma or space.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable

__all__ = ["apply_alpn", "describe_alpn", "merge", "parse_alpn_list"]

_MAX_NAME = 255  # one length byte on the wire


def parse_alpn_list(text: str) -> tuple[str, ...]:
    """``"h2, http/1.1"`` -> ``("h2", "http/1.1")``; ValueError names a bad entry."""
    names: list[str] = []
    for raw in text.split(","):
        name = raw.strip()
        if not name:
            raise ValueError(f"{text!r}: empty protocol name; write names like h2, http/1.1")
        if not name.isascii() or not name.isprintable() or " " in name:
            raise ValueError(f"{name!r}: a protocol name is printable ASCII without spaces")
        if len(name) > _MAX_NAME:
            raise ValueError(f"{name[:20]}...: a protocol name has at most {_MAX_NAME} characters")
        names.append(name)
    return tuple(names)


def merge(lists: Iterable[tuple[str, ...]]) -> tuple[str, ...]:
    """Several ``alpn`` lines as one list, in written order, without repeats."""
    return tuple(dict.fromkeys(name for names in lists for name in names))


def apply_alpn(context: ssl.SSLContext, protocols: tuple[str, ...]) -> None:
    """Offer (client) or select from (server) ``protocols``; nothing when empty."""
    if protocols:
        context.set_alpn_protocols(list(protocols))


def describe_alpn(protocols: tuple[str, ...], server_side: bool) -> str:
    """The settings line for the debug log."""
    verb = "selects from" if server_side else "offers"
    return f"ALPN: {verb} {', '.join(protocols)}"
