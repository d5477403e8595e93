"""``policy = package.module:function``: a Python hook that admits or refuses each peer.

For what the ``allow*`` rules cannot say (a lookup in a table, a rule on SNI and source
address together, a time window...).  The hook is one plain function::

    # /etc/stunnel/checks.py  (policy = checks:admit)
    from tlstunnel.tls.policy import PeerInfo

    def admit(peer: PeerInfo) -> bool | str:
        if peer.certificate is None:
            return "a client certificate is required"
        if peer.alpn != "h2":
            return f"only HTTP/2 clients, not {peer.alpn}"
        return True

Theory of operation
-------------------
* **Loading.**  ``load_policy`` imports the module and fetches the function when the
  configuration is built, so a missing module, a typo in the name, an object that is
  not callable or a coroutine function is a configuration error (``file:line:
  policy: ...``), never a surprise at the first connection.  The module is found on
  Python's import path, then in the configuration file's folder (appended to
  ``sys.path``, so it cannot shadow an installed module).  It is imported once per
  process: a reload (SIGHUP) that names another function uses it, but edits to an
  already imported module need a restart.
* **Calling.**  After the handshake, after the certificate checks (``verifyChain``,
  ``verifyPeer``, ``checkHost``...) and after the ``allow*`` rules: a peer must pass
  the rules *and* the hook.  The hook gets one ``PeerInfo`` and returns ``True`` to
  admit; ``False`` or a string (the reason, logged) refuses.  Anything else, ``None``
  included (a forgotten ``return``), refuses too: the hook fails closed.  An exception
  raised by the hook refuses the connection and is logged with its type and message;
  the tunnel goes on.
* **On the event loop.**  The hook runs synchronously on the loop that carries every
  other connection of the process: it must be quick and must not block (no network
  calls, no sleeping, no large file reads; load tables at import time).
* **Only verified identities.**  ``PeerInfo.certificate`` is None unless OpenSSL
  verified the certificate (``verifyChain``/``verifyPeer``): the hook is never handed
  a certificate anyone could have made.

SNI in server mode is what the context's server-name callback recorded on the
``SSLObject`` (``requested_server_name``, see ``tls/sni.py``); the service installs that
callback when it has a policy.
"""

from __future__ import annotations

import importlib
import inspect
import ipaddress
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from tlstunnel.tls.peer_acl import PeerCertificate

__all__ = ["PeerInfo", "Policy", "PolicyError", "load_policy"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class PolicyError(ValueError):
    """The ``policy`` value cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Everything the hook may judge a connection by (a frozen snapshot).

    ``mode`` is ``"server"`` when the peer is a client of this service (it connected to
    us over TLS) and ``"client"`` when the peer is the TLS server we connected to.
    ``source_address``/``source_port`` are those of whoever connected to the tunnel
    (in both modes; IPv4-mapped IPv6 is given as IPv4; None on Unix sockets).
    ``sni`` is the server name the TLS client sent (in client mode: the one we sent).
    """

    service: str
    mode: Literal["server", "client"]
    certificate: PeerCertificate | None
    sni: str | None
    alpn: str | None
    tls_version: str | None
    source_address: IPAddress | None
    source_port: int | None


def _source(sockaddr: object) -> tuple[IPAddress | None, int | None]:
    if not (isinstance(sockaddr, tuple) and len(sockaddr) >= 2):
        return None, None
    try:
        address = ipaddress.ip_address(str(sockaddr[0]).partition("%")[0])
    except ValueError:
        return None, None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    port = sockaddr[1]
    return address, port if isinstance(port, int) else None


class Policy:
    """A loaded hook, bound to one service."""

    __slots__ = ("_function", "name", "server_side", "service")

    def __init__(
        self,
        name: str,
        function: Callable[[PeerInfo], object],
        *,
        service: str,
        server_side: bool,
    ) -> None:
        self.name = name  # as written: package.module:function
        self.service = service
        self.server_side = server_side
        self._function = function

    def peer_info(self, sslobj: ssl.SSLObject | ssl.SSLSocket, source: object) -> PeerInfo:
        address, port = _source(source)
        # Server mode: the name the client asked for, recorded by the context's SNI
        # callback (tls/sni.py; installed for services with a policy).
        sni = (
            getattr(sslobj, "requested_server_name", None)
            if self.server_side
            else sslobj.server_hostname
        )
        return PeerInfo(
            service=self.service,
            mode="server" if self.server_side else "client",
            certificate=PeerCertificate.of(sslobj),
            sni=sni,
            alpn=sslobj.selected_alpn_protocol(),
            tls_version=sslobj.version(),
            source_address=address,
            source_port=port,
        )

    def refusal(self, sslobj: ssl.SSLObject | ssl.SSLSocket, source: object) -> str | None:
        """Call the hook: None when it admits the peer, else the reason it does not."""
        try:
            verdict = self._function(self.peer_info(sslobj, source))
        except Exception as exc:  # noqa: BLE001 -- user code: any failure refuses, never crashes
            return f"policy {self.name} raised {type(exc).__name__}: {exc}"
        if verdict is True:
            return None
        if verdict is False:
            return f"policy {self.name} refused it"
        if isinstance(verdict, str):
            return f"policy {self.name} refused it: {verdict}"
        return (
            f"policy {self.name} returned {type(verdict).__name__} "
            "(return True to admit, False or a reason to refuse)"
        )


def load_policy(spec: str, base_dir: str | None = None) -> Callable[[PeerInfo], object]:
    """Import ``package.module:function``; PolicyError says what is wrong with it."""
    module_name, colon, attribute = spec.strip().partition(":")
    module_name, attribute = module_name.strip(), attribute.strip()
    if not colon or not module_name or not attribute:
        raise PolicyError(f"{spec!r}: write package.module:function")
    if base_dir is not None and base_dir not in sys.path:
        sys.path.append(base_dir)  # last: the config's folder never shadows installed code
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PolicyError(f"cannot import {module_name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 -- the module's own code failed while importing
        raise PolicyError(f"importing {module_name} failed: {type(exc).__name__}: {exc}") from None
    function: object = module
    for part in attribute.split("."):
        try:
            function = getattr(function, part)
        except AttributeError:
            raise PolicyError(f"{module_name} has no {attribute}") from None
    if not callable(function):
        raise PolicyError(f"{spec.strip()} is a {type(function).__name__}, not a function")
    if inspect.iscoroutinefunction(function):
        raise PolicyError(
            f"{spec.strip()} is a coroutine function; the hook runs on the event loop and "
            "must be a plain, quick function"
        )
    return function
