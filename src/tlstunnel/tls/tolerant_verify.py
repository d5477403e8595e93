"""Certificate verification that records failures instead of failing: for ``redirect``.

stunnel's ``redirect = [HOST:]PORT`` sends clients that fail certificate authentication
to another backend (a honeypot, an enrolment page) instead of cutting them off.  For
that the handshake must *complete* with a bad or missing certificate, and the tunnel
must know afterwards that it was bad.  Python's ssl has no verify callback, so this
module installs one with ``SSL_CTX_set_verify`` through ``libssl``: OpenSSL calls it for
every certificate of the chain with its own verdict (``preverify_ok``); it returns 1
("carry on") and, on a failed verdict, writes down the first error and the subject
at that depth, keyed by the ``SSL *`` being verified.  ``take_failure(sslobj)`` hands
that record to the connection after the handshake and forgets it; ``forget(sslobj)``
drops it for handshakes that never finish.

The verification mode becomes ``SSL_VERIFY_PEER`` alone (``CERT_OPTIONAL``), so a client
without a certificate completes the handshake too; ``requireCert`` is then enforced by
the connection, which redirects such a client as stunnel does.

Services without ``redirect`` never get this callback: for them a bad certificate still
fails the handshake with OpenSSL's alert, which is the better answer to a real client.
"""

from __future__ import annotations

import ctypes
import ssl
from dataclasses import dataclass

from tlstunnel.tls import libssl

_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
SSL_VERIFY_PEER = 1


@dataclass(frozen=True, slots=True)
class VerifyFailure:
    """The first failure OpenSSL reported for one handshake."""

    error: str  # OpenSSL's text: "unable to get local issuer certificate"
    depth: int
    subject: str  # the certificate at that depth, one line

    def describe(self) -> str:
        return f"{self.error} at depth={self.depth}: {self.subject}"


_failures: dict[int, VerifyFailure] = {}
_functions_ready = False


def _declare(lib: ctypes.CDLL) -> None:
    global _functions_ready  # noqa: PLW0603 -- declare the C signatures once
    if _functions_ready:
        return
    lib.SSL_get_ex_data_X509_STORE_CTX_idx.restype = ctypes.c_int
    lib.SSL_get_ex_data_X509_STORE_CTX_idx.argtypes = []
    lib.X509_STORE_CTX_get_ex_data.restype = ctypes.c_void_p
    lib.X509_STORE_CTX_get_ex_data.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.X509_STORE_CTX_get_error.restype = ctypes.c_int
    lib.X509_STORE_CTX_get_error.argtypes = [ctypes.c_void_p]
    lib.X509_STORE_CTX_get_error_depth.restype = ctypes.c_int
    lib.X509_STORE_CTX_get_error_depth.argtypes = [ctypes.c_void_p]
    lib.X509_STORE_CTX_get_current_cert.restype = ctypes.c_void_p
    lib.X509_STORE_CTX_get_current_cert.argtypes = [ctypes.c_void_p]
    lib.X509_verify_cert_error_string.restype = ctypes.c_char_p
    lib.X509_verify_cert_error_string.argtypes = [ctypes.c_long]
    lib.X509_get_subject_name.restype = ctypes.c_void_p
    lib.X509_get_subject_name.argtypes = [ctypes.c_void_p]
    lib.X509_NAME_oneline.restype = ctypes.c_void_p  # a malloc'ed string we must free
    lib.X509_NAME_oneline.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.CRYPTO_free.restype = None
    lib.CRYPTO_free.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
    _functions_ready = True


def _subject(lib: ctypes.CDLL, cert: int | None) -> str:
    if not cert:
        return "(no certificate)"
    name = lib.X509_get_subject_name(cert)
    text = lib.X509_NAME_oneline(name, None, 0)
    if not text:
        return "(unreadable subject)"
    try:
        return ctypes.string_at(text).decode("utf-8", "replace")
    finally:
        lib.CRYPTO_free(text, None, 0)


def _on_verify(preverify_ok: int, store_ctx: int | None) -> int:
    if preverify_ok or not store_ctx:
        return 1
    try:
        lib = libssl.library()
        ssl_ptr = lib.X509_STORE_CTX_get_ex_data(
            store_ctx, lib.SSL_get_ex_data_X509_STORE_CTX_idx()
        )
        if ssl_ptr and ssl_ptr not in _failures:
            error = lib.X509_STORE_CTX_get_error(store_ctx)
            _failures[ssl_ptr] = VerifyFailure(
                error=(lib.X509_verify_cert_error_string(error) or b"?").decode(),
                depth=lib.X509_STORE_CTX_get_error_depth(store_ctx),
                subject=_subject(lib, lib.X509_STORE_CTX_get_current_cert(store_ctx)),
            )
    except Exception:  # noqa: BLE001 -- never let an exception cross into OpenSSL
        return 0  # we could not record it: fail the handshake rather than admit
    return 1


# One C function pointer for the whole process; it must outlive every context using it.
_CALLBACK = _VERIFY_CALLBACK(_on_verify)


def install(context: ssl.SSLContext) -> None:
    """Make ``context`` complete handshakes whatever the client's certificate, and record
    what was wrong with it.  Raises ``libssl.LibSSLUnavailable`` where that cannot be."""
    lib = libssl.library()
    _declare(lib)
    context.verify_mode = ssl.CERT_OPTIONAL  # ask for a certificate, do not insist
    lib.SSL_CTX_set_verify(libssl.ssl_ctx_pointer(context), SSL_VERIFY_PEER, _CALLBACK)


def take_failure(sslobj: ssl.SSLObject) -> VerifyFailure | None:
    """What failed in this handshake's verification (and forget it), or None."""
    return _failures.pop(libssl.ssl_pointer(sslobj), None)


def forget(sslobj: ssl.SSLObject) -> None:
    """Drop any record for a handshake that will not be looked at (failed, timed out)."""
    if _failures:
        _failures.pop(libssl.ssl_pointer(sslobj), None)
