"""Sans-IO negotiators for ``protocol = NAME``: bytes in, events out, no sockets.

``base`` defines the conversation every negotiator follows; each protocol lives in its
own module and exposes two module-level names, ``CLIENT_MODE`` and ``SERVER_MODE``:
the negotiator class for a ``client = yes`` / ``client = no`` service, or None where
stunnel has no such mode.  ``negotiator_class`` is how everything else finds them;
the network side that runs them is ``tlstunnel.net.negotiate``.
"""

from __future__ import annotations

import importlib

from tlstunnel.protocols.base import Negotiator

# protocol name → module (imported on first use).
MODULES: dict[str, str] = {
    "smtp": "tlstunnel.protocols.smtp",
    "pop3": "tlstunnel.protocols.pop3",
    "imap": "tlstunnel.protocols.imap",
    "nntp": "tlstunnel.protocols.nntp",
    "ldap": "tlstunnel.protocols.ldap",
    "pgsql": "tlstunnel.protocols.pgsql",
    "connect": "tlstunnel.protocols.connect",
    "socks": "tlstunnel.protocols.socks",
    "proxy": "tlstunnel.protocols.proxy",
}

# stunnel protocols tlstunnel refuses, and why.
REFUSED: dict[str, str] = {
    "cifs": "the CIFS negotiation it implements was dropped from Samba long ago",
    "capwin": "CapWIN is a retired public-safety application",
    "capwinctrl": "CapWIN is a retired public-safety application",
}


def negotiator_class(name: str, client_mode: bool) -> type[Negotiator] | None:
    """The negotiator for ``protocol = name`` in the given mode; None if the protocol
    has no such mode.  ``KeyError`` for a name not in ``MODULES``."""
    module = importlib.import_module(MODULES[name])
    found = getattr(module, "CLIENT_MODE" if client_mode else "SERVER_MODE", None)
    return found if isinstance(found, type) and issubclass(found, Negotiator) else None
