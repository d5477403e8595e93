"""Name-based virtual services: stunnel's server-mode ``sni = PRIMARY:PATTERN``.

A primary service accepts; its secondaries (sections with ``sni = PRIMARY:PATTERN``)
have their own certificate, trust settings and ``connect``.  While the handshake runs,
OpenSSL calls the primary context's server-name callback with the name the client
asked for; when a secondary's pattern matches, the connection's ``SSLObject`` is moved
onto the secondary's context (its certificate is the one the client sees) and tagged
with the secondary, so the connection then checks the peer and connects as the
secondary says.  No match keeps the primary, as stunnel does (logged at error level).

Patterns match as stunnel matches them: case-insensitive, and a leading ``*`` matches
any prefix (``*.example.com`` matches ``a.example.com`` and ``a.b.example.com``; it
is a suffix comparison, not one DNS label).

Moving an ``SSLObject`` to another context (``SSL_set_SSL_CTX``) changes its
certificate and trust store but not its verification mode, so a secondary that asks
for client certificates would not ask when its primary does not.  stunnel copies the
mode over with ``SSL_set_verify``; Python has no such call, so ``libssl`` does it when
available.  Where it is not, a secondary whose verification differs from its
primary's is refused at start (``check_compatible``).

The callback only records what happened on the ``SSLObject`` (``requested_server_name``,
``virtual_service``, ``sni_unmatched``): it runs inside OpenSSL, where logging with the
connection's id is not possible; the connection logs it after the handshake.
"""

from __future__ import annotations

import ctypes
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from tlstunnel.tls import libssl

# What a route resolves to: anything carrying a current ``tls.context``.  It is looked up
# at every handshake, so certificates reloaded later are picked up.
Route = tuple[str, Any]  # (pattern, secondary runtime)


def matches(pattern: str, server_name: str) -> bool:
    """stunnel's rule: exact (any case), or a suffix match after a leading ``*``."""
    pattern = pattern.lower()
    name = server_name.lower()
    if pattern.startswith("*"):
        return name.endswith(pattern[1:])
    return name == pattern


def record_server_name(sslobj: ssl.SSLObject, server_name: str | None, _ctx: Any) -> None:
    """A server-name callback that only remembers the name (for PROXY headers, policy)."""
    sslobj.requested_server_name = server_name  # type: ignore[attr-defined]


def virtual_service_callback(
    routes: Callable[[], Sequence[Route]],
) -> Callable[[ssl.SSLObject, str | None, Any], None]:
    """The callback for a primary context; ``routes()`` gives its current secondaries."""

    def choose(sslobj: ssl.SSLObject, server_name: str | None, _ctx: Any) -> None:
        sslobj.requested_server_name = server_name  # type: ignore[attr-defined]
        if server_name is None:
            return
        for pattern, runtime in routes():
            if matches(pattern, server_name):
                context: ssl.SSLContext = runtime.tls.context
                sslobj.context = context
                if libssl.available():
                    _adopt_verification(sslobj, context)
                sslobj.virtual_service = runtime  # type: ignore[attr-defined]
                sslobj.sni_pattern = pattern  # type: ignore[attr-defined]
                return
        sslobj.sni_unmatched = True  # type: ignore[attr-defined]

    return choose


def check_compatible(primary: ssl.SSLContext, secondary: ssl.SSLContext) -> str | None:
    """Without ``libssl``, a secondary must verify peers exactly as its primary does."""
    if libssl.available() or primary.verify_mode == secondary.verify_mode:
        return None
    return (
        "this virtual service verifies client certificates differently from its primary, "
        f"which needs OpenSSL access tlstunnel lacks here ({libssl.unavailable_reason()}); "
        "use the same verify settings in both"
    )


_VERIFY_FUNCTIONS_READY = False


def _adopt_verification(sslobj: ssl.SSLObject, context: ssl.SSLContext) -> None:
    """``SSL_set_verify(ssl, mode of context, callback of context)``, as stunnel does."""
    global _VERIFY_FUNCTIONS_READY  # noqa: PLW0603 -- declare the C signatures once
    lib = libssl.library()
    if not _VERIFY_FUNCTIONS_READY:
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_callback.restype = ctypes.c_void_p
        lib.SSL_CTX_get_verify_callback.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_depth.restype = ctypes.c_int
        lib.SSL_CTX_get_verify_depth.argtypes = [ctypes.c_void_p]
        lib.SSL_set_verify.restype = None
        lib.SSL_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.SSL_set_verify_depth.restype = None
        lib.SSL_set_verify_depth.argtypes = [ctypes.c_void_p, ctypes.c_int]
        _VERIFY_FUNCTIONS_READY = True
    ctx = libssl.ssl_ctx_pointer(context)
    ssl_ptr = libssl.ssl_pointer(sslobj)
    lib.SSL_set_verify(
        ssl_ptr, lib.SSL_CTX_get_verify_mode(ctx), lib.SSL_CTX_get_verify_callback(ctx)
    )
    lib.SSL_set_verify_depth(ssl_ptr, lib.SSL_CTX_get_verify_depth(ctx))
