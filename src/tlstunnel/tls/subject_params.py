"""checkHost / checkIP / checkEmail inside the handshake, as stunnel does them.

stunnel matches the peer's certificate against ``checkHost``/``checkIP``/``checkEmail``
while OpenSSL verifies it, so a peer that fails is refused *in* the handshake, with an
alert (TLS 1.2 clients never see "connected").  Python's ssl exposes no verification
parameters, so ``verify.SubjectChecks`` used to run only after the handshake.  This module
hands the same names to OpenSSL's own verification through ``libssl``: the context's
``X509_VERIFY_PARAM`` gets every ``checkHost`` name (``set1_host``/``add1_host``: any may
match), the ``checkIP`` address and the ``checkEmail`` address; OpenSSL then applies
``X509_check_host``/``_ip``/``_email`` with default flags — the matching stunnel relies
on — and fails the handshake with ``hostname mismatch`` and the like.

OpenSSL's parameters hold one IP address and one email address, so a service with more
than one of either keeps the post-handshake check alone (``install`` returns False); the
post-handshake check always stays as well, a second look that costs nothing.
"""

from __future__ import annotations

import ctypes
import ssl

from tlstunnel.tls import libssl
from tlstunnel.tls.verify import SubjectChecks

_declared = False


def _declare(lib: ctypes.CDLL) -> None:
    global _declared  # noqa: PLW0603 -- declare the C signatures once
    if _declared:
        return
    lib.SSL_CTX_get0_param.restype = ctypes.c_void_p
    lib.SSL_CTX_get0_param.argtypes = [ctypes.c_void_p]
    for name in ("X509_VERIFY_PARAM_set1_host", "X509_VERIFY_PARAM_add1_host"):
        function = getattr(lib, name)
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.X509_VERIFY_PARAM_set1_email.restype = ctypes.c_int
    lib.X509_VERIFY_PARAM_set1_email.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.X509_VERIFY_PARAM_set1_ip.restype = ctypes.c_int
    lib.X509_VERIFY_PARAM_set1_ip.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    _declared = True


def install(context: ssl.SSLContext, checks: SubjectChecks) -> bool:
    """Give ``checks`` to OpenSSL's verification on ``context``.  False when they cannot
    all be expressed there (or OpenSSL's objects are out of reach): the caller relies on
    the check after the handshake alone."""
    if not checks or len(checks.ips) > 1 or len(checks.emails) > 1 or not libssl.available():
        return False
    lib = libssl.library()
    _declare(lib)
    param = lib.SSL_CTX_get0_param(libssl.ssl_ctx_pointer(context))
    if not param:
        return False
    ok = True
    for index, host in enumerate(checks.hosts):
        raw = host.encode("ascii")
        setter = lib.X509_VERIFY_PARAM_set1_host if index == 0 else lib.X509_VERIFY_PARAM_add1_host
        ok = ok and setter(param, raw, len(raw)) == 1
    for ip in checks.ips:
        packed = ip.packed
        ok = ok and lib.X509_VERIFY_PARAM_set1_ip(param, packed, len(packed)) == 1
    for email in checks.emails:
        raw = email.encode("utf-8")
        ok = ok and lib.X509_VERIFY_PARAM_set1_email(param, raw, len(raw)) == 1
    return ok
