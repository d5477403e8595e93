"""TLS session resumption for one service: cache size and timeout, on/off, ticket keys.

``configure_sessions`` applies stunnel's ``sessionCacheSize``, ``sessionCacheTimeout``,
``sessionResume``, ``ticketKeySecret`` and ``ticketMacSecret`` to a service's
``SSLContext`` and returns the lines ``describe_settings`` logs at debug level.

Theory of operation
-------------------
OpenSSL resumes a session in one of two ways.  *Stateful*: the server keeps the session
in its context's internal cache and the client presents its id (TLS 1.2 session ids,
and TLS 1.3 tickets when tickets are off, which then only name a cache entry).
*Stateless*: the server encrypts the whole session into a ticket (RFC 5077, and the
TLS 1.3 default) with the context's ticket keys; it keeps nothing.  Both ways check the
session's age against the context's timeout, so ``sessionCacheTimeout`` bounds tickets
as well as cache entries.

Python's ``ssl`` exposes none of the knobs, so they go through ``libssl`` (the OpenSSL
Python already loaded, reached with ctypes and probed before use):

* ``sessionCacheSize``: ``SSL_CTX_sess_set_cache_size`` (0 = unlimited).  When the
  cache is full OpenSSL drops the oldest entry.
* ``sessionCacheTimeout``: ``SSL_CTX_set_timeout``, in seconds.  stunnel's defaults
  (1000 entries, 300 s) are applied when the options are not written, as stunnel does;
  OpenSSL's own would be 20480 entries and 7200 s.
* ``sessionResume = no``: server side, no tickets (``OP_NO_TICKET`` and
  ``num_tickets = 0``, so TLS 1.3 sends no NewSessionTicket at all) and the cache off
  (``SSL_SESS_CACHE_OFF``): every handshake is a full one.  Client side the service
  never offers a session (``ServiceRuntime`` keeps none, see ``service.py``).
* ``ticketKeySecret`` + ``ticketMacSecret`` (server mode only, both or neither, 16 or
  32 bytes each): ``SSL_CTX_set_tlsext_ticket_keys`` with OpenSSL 3's 80-byte layout
  ``name[16] | hmac_key[32] | aes_key[32]`` (``ssl/s3_lib.c``; the length is asked from
  OpenSSL first and must be 80).  OpenSSL encrypts tickets with AES-256-CBC and
  authenticates them with HMAC-SHA256, so both keys are stretched to 32 bytes with
  HMAC-SHA256 under fixed labels, and the 16-byte key name is derived from both
  secrets: two processes given the same secrets build identical keys and accept each
  other's tickets (after a restart, or across a cluster), and a ticket made under
  other secrets carries another name and is simply not resumed.  The service's name is
  part of every derivation, so a ticket issued by one service is never resumed by
  another service that happens to use the same secrets.  (The session id context,
  OpenSSL's own guard for that, cannot be used: CPython sets it to "Python" on every
  context, and from 3.13 on every connection, overriding anything set here.)

When ``libssl.available()`` is False the written options are refused by the
configuration builder (with ``libssl.unavailable_reason()``); here they raise
``TLSSetupError`` as a last line of defence, and unwritten defaults are left alone.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import ssl
from typing import TYPE_CHECKING

from tlstunnel.tls import libssl
from tlstunnel.tls.errors import TLSSetupError

if TYPE_CHECKING:
    from tlstunnel.config.model import ServiceConfig

__all__ = [
    "STUNNEL_CACHE_SIZE",
    "STUNNEL_CACHE_TIMEOUT",
    "TICKET_SECRET_SIZES",
    "configure_sessions",
    "session_cache_settings",
    "ticket_keys",
]

STUNNEL_CACHE_SIZE = 1000  # stunnel's default sessionCacheSize
STUNNEL_CACHE_TIMEOUT = 300  # stunnel's default sessionCacheTimeout, seconds
TICKET_SECRET_SIZES = (16, 32)  # bytes, as stunnel requires

SSL_SESS_CACHE_OFF = 0
SSL_CTRL_GET_SESS_CACHE_SIZE = 43
SSL_CTRL_GET_SESS_CACHE_MODE = 45

# OpenSSL 3's ticket key block: name[16] | HMAC-SHA256 key[32] | AES-256 key[32].
_NAME_SIZE, _HMAC_SIZE, _AES_SIZE = 16, 32, 32
_TICKET_BLOCK_SIZE = _NAME_SIZE + _HMAC_SIZE + _AES_SIZE


def ticket_keys(key_secret: bytes, mac_secret: bytes, service: str) -> bytes:
    """The 80-byte block for ``SSL_CTX_set_tlsext_ticket_keys``, a pure function of the
    two secrets and the service's name (so equal inputs give equal keys in every
    process, and each service has its own)."""
    for secret in (key_secret, mac_secret):
        if len(secret) not in TICKET_SECRET_SIZES:
            raise ValueError(f"a ticket secret must be 16 or 32 bytes, not {len(secret)}")
    scope = b"\0" + service.encode("utf-8")
    aes_key = hmac.digest(key_secret, b"tlstunnel ticket AES-256 key" + scope, "sha256")
    hmac_key = hmac.digest(mac_secret, b"tlstunnel ticket HMAC-SHA256 key" + scope, "sha256")
    # The name is public (it travels in every ticket): a hash of the derived keys, not
    # of the secrets themselves, so it reveals nothing that helps guess them.
    name = hashlib.sha256(b"tlstunnel ticket key name\0" + aes_key + hmac_key).digest()
    block = name[:_NAME_SIZE] + hmac_key + aes_key
    assert len(block) == _TICKET_BLOCK_SIZE
    return block


def session_cache_settings(context: ssl.SSLContext) -> tuple[int, int, int]:
    """(cache size, timeout in seconds, cache mode) as OpenSSL holds them for ``context``."""
    lib = libssl.library()
    lib.SSL_CTX_get_timeout.restype = ctypes.c_long
    lib.SSL_CTX_get_timeout.argtypes = [ctypes.c_void_p]
    size = libssl.ctx_ctrl(context, SSL_CTRL_GET_SESS_CACHE_SIZE, 0)
    mode = libssl.ctx_ctrl(context, SSL_CTRL_GET_SESS_CACHE_MODE, 0)
    timeout = int(lib.SSL_CTX_get_timeout(libssl.ssl_ctx_pointer(context)))
    return size, timeout, mode


def configure_sessions(svc: ServiceConfig, context: ssl.SSLContext, server_side: bool) -> list[str]:
    """Apply ``svc``'s session options to ``context``; return the lines to log."""
    written = _written_options(svc)
    if not libssl.available():
        if written:
            raise TLSSetupError(
                f"{', '.join(written)}: cannot be set here: {libssl.unavailable_reason()}"
            )
        return ["Session cache: OpenSSL's defaults (libssl is not reachable)"]
    if not server_side and svc.ticket_key_secret is not None:
        raise TLSSetupError("ticketKeySecret/ticketMacSecret only work in server mode")

    size = STUNNEL_CACHE_SIZE if svc.session_cache_size is None else svc.session_cache_size
    timeout = (
        STUNNEL_CACHE_TIMEOUT if svc.session_cache_timeout is None else svc.session_cache_timeout
    )
    _set_cache(context, size, int(timeout))
    lines = [
        f"Session cache: {size or 'unlimited'} entries, sessions kept {int(timeout)} s",
    ]
    if not svc.session_resume:
        if server_side:
            _disable_resumption(context)
        lines.append("Session resumption: disabled (sessionResume = no)")
        return lines
    if svc.ticket_key_secret is not None or svc.ticket_mac_secret is not None:
        if svc.ticket_key_secret is None or svc.ticket_mac_secret is None:
            raise TLSSetupError("ticketKeySecret and ticketMacSecret must be set together")
        block = ticket_keys(svc.ticket_key_secret, svc.ticket_mac_secret, svc.name)
        _set_ticket_keys(context, block)
        lines.append("Session tickets: keys from ticketKeySecret and ticketMacSecret")
    return lines


def _written_options(svc: ServiceConfig) -> list[str]:
    written = []
    if svc.session_cache_size is not None:
        written.append("sessionCacheSize")
    if svc.session_cache_timeout is not None:
        written.append("sessionCacheTimeout")
    if not svc.session_resume and not svc.client:
        written.append("sessionResume")  # client mode needs no libssl for it
    if svc.ticket_key_secret is not None:
        written.append("ticketKeySecret")
    if svc.ticket_mac_secret is not None:
        written.append("ticketMacSecret")
    return written


def _set_cache(context: ssl.SSLContext, size: int, timeout: int) -> None:
    lib = libssl.library()
    libssl.ctx_ctrl(context, libssl.SSL_CTRL_SET_SESS_CACHE_SIZE, size)
    lib.SSL_CTX_set_timeout(libssl.ssl_ctx_pointer(context), timeout)


def _disable_resumption(context: ssl.SSLContext) -> None:
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0  # TLS 1.3: no NewSessionTicket messages at all
    libssl.ctx_ctrl(context, libssl.SSL_CTRL_SET_SESS_CACHE_MODE, SSL_SESS_CACHE_OFF)


def _set_ticket_keys(context: ssl.SSLContext, block: bytes) -> None:
    wanted = libssl.ctx_ctrl(context, libssl.SSL_CTRL_SET_TLSEXT_TICKET_KEYS, 0, None)
    if wanted != len(block):
        raise TLSSetupError(
            f"ticketKeySecret: this OpenSSL expects {wanted}-byte ticket keys, tlstunnel "
            f"knows the {len(block)}-byte layout of OpenSSL 3 only"
        )
    buffer = ctypes.create_string_buffer(block, len(block))
    if libssl.ctx_ctrl(context, libssl.SSL_CTRL_SET_TLSEXT_TICKET_KEYS, len(block), buffer) != 1:
        raise TLSSetupError("ticketKeySecret: OpenSSL refused the ticket keys")
