"""A narrow door to the OpenSSL that Python's ``ssl`` module already loaded.

Python's ``ssl`` has no API for a few things stunnel's options need (session cache
size and timeout, ticket keys, a verify callback).  Those are plain OpenSSL calls on
the ``SSL_CTX``/``SSL`` objects Python already made, so this module finds their
addresses and calls libssl through ``ctypes`` (standard library, no new dependency).

How the addresses are found: CPython's ``_ssl`` objects start with ``PyObject_HEAD``
followed by the OpenSSL pointer (``PySSLContext.ctx``; ``PySSLSocket`` has a weak
reference to its socket first, then ``ssl``).  That layout has held from 3.7 to 3.13,
but it is an implementation detail, so nothing is trusted blindly: ``available()``
probes it once (the options OpenSSL reports for the found ``SSL_CTX`` must equal
``SSLContext.options``, and ``SSL_get_SSL_CTX`` of a found ``SSL`` must be that same
context).  When the probe fails (another Python implementation, a changed layout, a
static build without the symbols) ``available()`` is False and callers refuse the
options that need it, naming the reason.

The library is opened through the ``_ssl`` extension's own file, so these calls reach
exactly the libssl that Python links (never a second copy).
"""

from __future__ import annotations

import ctypes
import ssl
from typing import Any

__all__ = [
    "LibSSLUnavailable",
    "available",
    "ctx_ctrl",
    "library",
    "ssl_ctx_pointer",
    "ssl_pointer",
    "unavailable_reason",
]

# SSL_CTX_ctrl commands (openssl/ssl.h); stable across OpenSSL 1.1 and 3.x.
SSL_CTRL_SET_SESS_CACHE_SIZE = 42
SSL_CTRL_SET_SESS_CACHE_MODE = 44
SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59

_HEAD = object.__basicsize__  # sizeof(PyObject): refcount + type pointer
_POINTER = ctypes.sizeof(ctypes.c_void_p)


class LibSSLUnavailable(RuntimeError):
    """The OpenSSL objects behind Python's ssl module cannot be reached safely here."""


def _open() -> tuple[Any, str]:
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_set_timeout.restype = ctypes.c_long
        lib.SSL_CTX_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
        lib.SSL_get_SSL_CTX.restype = ctypes.c_void_p
        lib.SSL_get_SSL_CTX.argtypes = [ctypes.c_void_p]
    except (ImportError, OSError, AttributeError) as exc:
        return None, f"libssl symbols are not reachable from Python's _ssl module ({exc})"
    return lib, ""


_LIB, _REASON = _open()


def _raw_ctx(context: ssl.SSLContext) -> int:
    return ctypes.c_void_p.from_address(id(context) + _HEAD).value or 0


def _raw_ssl(sslobj: ssl.SSLObject) -> int:
    inner = sslobj._sslobj  # type: ignore[attr-defined]
    return ctypes.c_void_p.from_address(id(inner) + _HEAD + _POINTER).value or 0


def _probe() -> str:
    if _LIB is None:
        return _REASON
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.options |= ssl.OP_NO_TICKET
        pointer = _raw_ctx(context)
        if not pointer or _LIB.SSL_CTX_get_options(pointer) != int(context.options):
            return "the layout of Python's SSLContext is not the one tlstunnel knows"
        sslobj = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="probe")
        if _LIB.SSL_get_SSL_CTX(_raw_ssl(sslobj)) != pointer:
            return "the layout of Python's SSLObject is not the one tlstunnel knows"
    except Exception as exc:  # noqa: BLE001 -- any surprise means "do not use it"
        return f"probing Python's ssl objects failed ({exc})"
    return ""


_PROBE_FAILURE = _probe()


def available() -> bool:
    """True when ``ssl_ctx_pointer``/``ssl_pointer`` and the calls below are safe."""
    return not _PROBE_FAILURE


def unavailable_reason() -> str:
    """Why ``available()`` is False (empty when it is True), for error messages."""
    return _PROBE_FAILURE


def library() -> Any:
    """The ctypes handle on libssl (declare the argtypes of any new function you call)."""
    if _PROBE_FAILURE:
        raise LibSSLUnavailable(_PROBE_FAILURE)
    return _LIB


def ssl_ctx_pointer(context: ssl.SSLContext) -> int:
    """The ``SSL_CTX *`` behind ``context``."""
    if _PROBE_FAILURE:
        raise LibSSLUnavailable(_PROBE_FAILURE)
    return _raw_ctx(context)


def ssl_pointer(sslobj: ssl.SSLObject) -> int:
    """The ``SSL *`` behind ``sslobj``."""
    if _PROBE_FAILURE:
        raise LibSSLUnavailable(_PROBE_FAILURE)
    return _raw_ssl(sslobj)


def ctx_ctrl(context: ssl.SSLContext, command: int, larg: int, parg: Any = None) -> int:
    """``SSL_CTX_ctrl(ctx, command, larg, parg)``: what OpenSSL's setter macros expand to."""
    return int(library().SSL_CTX_ctrl(ssl_ctx_pointer(context), command, larg, parg))
