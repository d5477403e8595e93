"""OCSP stapling: a server hands out its own OCSP response; a client asks for one.

Python's ``ssl`` has no API for the TLS ``status_request`` extension, so both sides go
through ``libssl`` (the OpenSSL objects behind Python's, see ``libssl.py``).  Where those
cannot be reached, nothing is stapled and clients ask the responder themselves: stapling
only ever saves work, it never decides anything on its own.

When it happens (stunnel's trigger)
-----------------------------------
stunnel 5.68 (Debian 12) staples nothing: its TODO lists "OCSP stapling (tlsext_status)"
and its ClientHello carries no ``status_request``.  stunnel's later sources (``ocsp.c``)
staple the way this module does, with no option: a *server-mode* service whose certificate names an
OCSP responder in its Authority Information Access extension staples that responder's
answer to every client that asks (not with ``PSKsecrets``, which stunnel also leaves
out); a *client-mode* service that checks OCSP (``verifyChain`` with ``OCSP`` or
``OCSPaia``) asks the server for a staple and, when one comes, judges it exactly like a
responder's answer (``ocsp.judge_response``) before asking anyone.  A good or revoked
staple settles the leaf; none, or one that cannot be trusted, and the responders are
asked as before.  ``OCSP = URL`` names the responder for *peers'* certificates, so it is
not used for our own (stunnel does the same).

Server side, theory of operation
--------------------------------
``install`` reads the certificate and chain the context really serves (``SSL_CTX_get0_
certificate`` and ``SSL_CTX_get0_chain_certs``: PEM and PKCS#12 alike), finds the issuer
there or in CAfile/CApath, and registers a ``Stapler`` for the context.  The handshake
never waits for the network: the status callback (a C function pointer made once per
process) only copies the cached DER answer into an ``OPENSSL_malloc`` buffer, which
OpenSSL frees after sending it.  ``keep_fresh`` (a task of the server) fetches the
answers in the background: at start, then at half the remaining validity (at most
hourly, at least a second apart), then again after a failure with a growing delay.  An
answer is stapled only after it verifies (signed by the issuer or a responder it
delegated, an entry for our certificate, within thisUpdate/nextUpdate), and only until
its nextUpdate.  A failed fetch logs one line and keeps the last good answer until it
expires.  The answer is cached per service and certificate, so a configuration or
certificate reload that keeps the certificate keeps its staple.

Contexts without a stapler never get the callback: services without an OCSP URL in
their certificate pay nothing per handshake.
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime
import math
import ssl
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tlstunnel.log import DEBUG, ERR, INFO, NOTICE, WARNING
from tlstunnel.tls import libssl

if TYPE_CHECKING:  # cryptography is imported only when a certificate is looked at
    from cryptography import x509

    from tlstunnel.config.model import ServiceConfig

__all__ = ["Stapler", "install", "keep_fresh", "received_staple"]

LogFunction = Callable[[int, str], None]

# openssl/ssl.h and tls1.h; stable across OpenSSL 1.1 and 3.x.
SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB = 63
SSL_CTRL_SET_TLSEXT_STATUS_REQ_TYPE = 65
SSL_CTRL_GET_TLSEXT_STATUS_REQ_OCSP_RESP = 70
SSL_CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP = 71
SSL_CTRL_GET_CHAIN_CERTS = 115
TLSEXT_STATUSTYPE_OCSP = 1
SSL_TLSEXT_ERR_OK = 0
SSL_TLSEXT_ERR_NOACK = 3

# Refresh policy (seconds).
MIN_REFRESH = 1.0  # a responder that issues answers valid for 2 s is asked every second
MAX_REFRESH = 3600.0  # a week-long answer is still fetched hourly: revocations show sooner
FIRST_RETRY = 60.0  # after a failed fetch; doubled after each further failure...
MAX_RETRY = 900.0  # ...up to this
POLL_INTERVAL = 1.0  # keep_fresh looks at least this often (new staplers after a reload)

# DER of the OID id-ad-ocsp (1.3.6.1.5.5.7.48.1): a certificate without these bytes
# names no OCSP responder.
_AIA_OCSP_OID = bytes.fromhex("06082b06010505073001")

_STATUS_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_functions_ready = False


def _declare(lib: Any) -> None:
    global _functions_ready  # noqa: PLW0603 -- declare the C signatures once
    if _functions_ready:
        return
    lib.SSL_ctrl.restype = ctypes.c_long
    lib.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    # The callback goes through as a plain pointer, so no other module's declaration of
    # SSL_CTX_callback_ctrl can clash with this one.
    lib.SSL_CTX_callback_ctrl.restype = ctypes.c_long
    lib.SSL_CTX_callback_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.SSL_CTX_get0_certificate.restype = ctypes.c_void_p
    lib.SSL_CTX_get0_certificate.argtypes = [ctypes.c_void_p]
    lib.OPENSSL_sk_num.restype = ctypes.c_int
    lib.OPENSSL_sk_num.argtypes = [ctypes.c_void_p]
    lib.OPENSSL_sk_value.restype = ctypes.c_void_p
    lib.OPENSSL_sk_value.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.i2d_X509.restype = ctypes.c_int
    lib.i2d_X509.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.CRYPTO_malloc.restype = ctypes.c_void_p
    lib.CRYPTO_malloc.argtypes = [ctypes.c_size_t, ctypes.c_char_p, ctypes.c_int]
    lib.CRYPTO_free.restype = None
    lib.CRYPTO_free.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    _functions_ready = True


# --- the staple for one certificate ---------------------------------------------------------


@dataclass(eq=False)
class Stapler:
    """The OCSP answer stapled for one service's certificate, and when to fetch it again."""

    service: str
    cert: x509.Certificate
    chain: Sequence[x509.Certificate]  # cert, its issuer, and up as far as known
    trusted: Sequence[x509.Certificate]  # what may anchor the responder's certificate
    urls: tuple[str, ...]
    timeout: float  # TIMEOUTocsp, for each responder
    der: bytes | None = None
    expires: float = 0.0  # time.time() at the answer's nextUpdate (inf: none given)
    due: float = 0.0  # time.monotonic() of the next fetch
    failures: int = 0
    fetching: bool = field(default=False, repr=False)

    def staple(self) -> bytes | None:
        """The answer to send now, or None (none yet, or past its nextUpdate)."""
        der = self.der
        if der is not None and time.time() < self.expires:
            return der
        return None

    async def refresh(self, log: LogFunction) -> None:
        """Ask the responders once; keep the answer if it verifies, else keep the old one."""
        reasons: list[str] = []
        try:
            for url in self.urls:
                try:
                    outcome = await self._ask(url)
                except Exception as exc:  # noqa: BLE001 -- a task boundary: log it, retry later
                    outcome = f"unexpected error: {exc!r}"
                if isinstance(outcome, str):
                    reasons.append(f'"{url}": {outcome}')
                    continue
                self._accept(url, *outcome, log)
                return
            self._failed("; ".join(reasons), log)
        finally:
            self.fetching = False

    async def _ask(self, url_text: str) -> tuple[bytes, str, datetime.datetime | None] | str:
        """(DER, status, nextUpdate) of a verified conclusive answer, or why there is none."""
        from tlstunnel.tls import ocsp
        from tlstunnel.tls.ocsp_http import ResponderError, ResponderURL, post_ocsp_request

        try:
            url = ResponderURL.parse(url_text)
            request = ocsp.build_request(self.cert, self.chain[1], None)
            der = await post_ocsp_request(url, request, self.timeout)
        except ValueError as exc:
            return f"cannot use the URL: {exc}"
        except TimeoutError:
            return f"no answer within TIMEOUTocsp = {self.timeout:g} s"
        except ResponderError as exc:
            return str(exc)
        now = datetime.datetime.now(datetime.UTC)
        context = ocsp.AnswerContext(
            cert=self.cert,
            issuer=self.chain[1],
            chain=self.chain,
            trusted=self.trusted,
            flags=frozenset(),  # every check: a bad staple would only embarrass us
            nonce=None,
            now=now,
        )
        finding = ocsp.judge_response(der, context)
        if finding.status == ocsp.Status.UNKNOWN:
            problems = [text for level, text in finding.lines if level <= WARNING]
            return problems[0].removeprefix("OCSP: ") if problems else "status unknown"
        if finding.next_update is not None and finding.next_update <= now:
            return "the answer is already past its nextUpdate"
        return der, finding.status, finding.next_update

    def _accept(
        self,
        url: str,
        der: bytes,
        status: str,
        next_update: datetime.datetime | None,
        log: LogFunction,
    ) -> None:
        self.der = der
        self.expires = next_update.timestamp() if next_update is not None else math.inf
        self.failures = 0
        remaining = self.expires - time.time()
        wait = min(max(remaining / 2, MIN_REFRESH), MAX_REFRESH)
        self.due = time.monotonic() + wait
        until = "no nextUpdate" if next_update is None else f"valid until {_stamp(next_update)}"
        level = WARNING if status != "good" else INFO
        log(
            level,
            f'Service [{self.service}]: OCSP stapling: "{url}" says {status} ({until}); '
            f"stapling it, next refresh in {wait:.0f} s",
        )

    def _failed(self, reasons: str, log: LogFunction) -> None:
        self.failures += 1
        wait = min(FIRST_RETRY * 2 ** (self.failures - 1), MAX_RETRY)
        held = self.staple() is not None
        if held and math.isfinite(self.expires):
            # Try again while the answer we hold is still good to send.
            wait = min(wait, max((self.expires - time.time()) / 2, MIN_REFRESH))
        self.due = time.monotonic() + wait
        keeping = (
            "still stapling the previous answer" + _until(self.expires)
            if held
            else "nothing to staple"
        )
        log(
            ERR,
            f"Service [{self.service}]: OCSP stapling: no usable answer from {reasons}; "
            f"{keeping}; next try in {wait:.0f} s",
        )


def _stamp(moment: datetime.datetime) -> str:
    return moment.astimezone().strftime("%Y.%m.%d %H:%M:%S")


def _until(expires: float) -> str:
    if not math.isfinite(expires):
        return ""
    return f" (valid until {_stamp(datetime.datetime.fromtimestamp(expires, datetime.UTC))})"


# --- which context staples what --------------------------------------------------------------

_by_context: dict[int, Stapler] = {}  # SSL_CTX * -> its stapler, while the context lives
_shared: dict[tuple[str, bytes, bytes, float], Stapler] = {}  # (service, cert, issuer, timeout)


def _forget(pointer: int, stapler: Stapler) -> None:
    if _by_context.get(pointer) is stapler:
        del _by_context[pointer]


def _on_status_request(ssl_pointer: int | None, _arg: int | None) -> int:
    """OpenSSL asks what to staple for this handshake (the client sent status_request)."""
    try:
        lib = libssl.library()
        stapler = _by_context.get(lib.SSL_get_SSL_CTX(ssl_pointer) or 0)
        der = stapler.staple() if stapler is not None else None
        if der is None:
            return SSL_TLSEXT_ERR_NOACK
        buffer = lib.CRYPTO_malloc(len(der), None, 0)  # OpenSSL frees it after sending
        if not buffer:
            return SSL_TLSEXT_ERR_NOACK
        ctypes.memmove(buffer, der, len(der))
        if (
            lib.SSL_ctrl(ssl_pointer, SSL_CTRL_SET_TLSEXT_STATUS_REQ_OCSP_RESP, len(der), buffer)
            <= 0
        ):
            lib.CRYPTO_free(buffer, None, 0)
            return SSL_TLSEXT_ERR_NOACK
    except Exception:  # noqa: BLE001 -- never let an exception cross into OpenSSL
        return SSL_TLSEXT_ERR_NOACK
    return SSL_TLSEXT_ERR_OK


# One C function pointer for the whole process; it must outlive every context using it.
_CALLBACK = _STATUS_CALLBACK(_on_status_request)


def _der_of(lib: Any, x509_pointer: int) -> bytes:
    size = lib.i2d_X509(x509_pointer, None)
    if size <= 0:
        return b""
    buffer = ctypes.create_string_buffer(size)
    cursor = ctypes.c_void_p(ctypes.addressof(buffer))  # i2d_X509 advances it
    lib.i2d_X509(x509_pointer, ctypes.byref(cursor))
    return buffer.raw[:size]


def _served_certificates(context: ssl.SSLContext) -> tuple[bytes, list[bytes]]:
    """DER of the certificate ``context`` serves (b"" if none) and of its chain."""
    lib = libssl.library()
    _declare(lib)
    pointer = libssl.ssl_ctx_pointer(context)
    leaf = lib.SSL_CTX_get0_certificate(pointer)
    if not leaf:
        return b"", []
    stack = ctypes.c_void_p()
    lib.SSL_CTX_ctrl(pointer, SSL_CTRL_GET_CHAIN_CERTS, 0, ctypes.byref(stack))
    chain = []
    if stack.value:
        for index in range(lib.OPENSSL_sk_num(stack.value)):
            chain.append(_der_of(lib, lib.OPENSSL_sk_value(stack.value, index)))
    return _der_of(lib, leaf), chain


def install(context: ssl.SSLContext, config: ServiceConfig, log: LogFunction) -> None:
    """Wire stapling into a fresh ``context`` of ``config``'s service (see the module's
    docstring for when); does nothing where it does not apply or cannot be done."""
    if not libssl.available():
        return  # clients ask the responder themselves; nothing else changes
    if config.client:
        if config.verify_chain and (config.ocsp_url or config.ocsp_aia):
            libssl.ctx_ctrl(context, SSL_CTRL_SET_TLSEXT_STATUS_REQ_TYPE, TLSEXT_STATUSTYPE_OCSP)
        return
    leaf_der, chain_ders = _served_certificates(context)
    if _AIA_OCSP_OID not in leaf_der:
        return  # no responder named (or no certificate): cryptography need not even load
    from tlstunnel.tls.revocation import ocsp_support_missing

    if ocsp_support_missing():
        return  # no cryptography package: no way to read the certificate or the answers
    from cryptography import x509 as x509_module
    from cryptography.hazmat.primitives.serialization import Encoding

    from tlstunnel.tls import ocsp

    leaf = x509_module.load_der_x509_certificate(leaf_der)
    urls = tuple(ocsp.aia_urls(leaf))
    if not urls:
        return
    name = config.name
    if config.psk_secrets:
        log(NOTICE, f"Service [{name}]: OCSP: Server OCSP stapling is incompatible with PSK")
        return
    served = [x509_module.load_der_x509_certificate(d) for d in chain_ders if d]
    from_files = ocsp.load_trusted(config.ca_file, config.ca_path)
    chain = ocsp.build_chain(leaf, [*served, *from_files])
    if len(chain) < 2:
        log(
            WARNING,
            f"Service [{name}]: OCSP stapling: the issuer of the certificate "
            f"({leaf.issuer.rfc4514_string()}) is neither in the cert file nor in "
            "CAfile/CApath: nothing will be stapled",
        )
        return
    issuer_der = chain[1].public_bytes(Encoding.DER)
    key = (name, leaf_der, issuer_der, config.timeout_ocsp)
    stapler = _shared.get(key)
    if stapler is None:
        # Our own issuer and its parents are trusted by definition: they are what we serve.
        stapler = Stapler(name, leaf, chain, [*chain[1:], *from_files], urls, config.timeout_ocsp)
        _shared[key] = stapler
    lib = libssl.library()
    pointer = libssl.ssl_ctx_pointer(context)
    _by_context[pointer] = stapler
    weakref.finalize(context, _forget, pointer, stapler)
    lib.SSL_CTX_callback_ctrl(
        pointer, SSL_CTRL_SET_TLSEXT_STATUS_REQ_CB, ctypes.cast(_CALLBACK, ctypes.c_void_p)
    )
    log(DEBUG, f"Service [{name}]: OCSP: Server OCSP stapling enabled ({', '.join(urls)})")


async def keep_fresh(log: LogFunction) -> None:
    """Forever: fetch the answer of every stapler in use when it is due (a server task)."""
    running: set[asyncio.Task[None]] = set()
    try:
        while True:
            in_use = set(_by_context.values())
            for key in [k for k, s in _shared.items() if s not in in_use]:
                del _shared[key]  # its certificate is served no more
            now = time.monotonic()
            wake = now + POLL_INTERVAL
            for stapler in in_use:
                if not stapler.fetching and stapler.due <= now:
                    stapler.fetching = True
                    task = asyncio.get_running_loop().create_task(stapler.refresh(log))
                    running.add(task)
                    task.add_done_callback(running.discard)
                elif not stapler.fetching:
                    wake = min(wake, stapler.due)
            await asyncio.sleep(wake - now)
    finally:
        for task in running:
            task.cancel()
        for stapler in _shared.values():
            stapler.fetching = False


# --- client side ---------------------------------------------------------------------------


def received_staple(sslobj: ssl.SSLObject | ssl.SSLSocket) -> bytes | None:
    """The OCSP answer the server stapled in this handshake (None: none, or not asked)."""
    if not libssl.available() or not isinstance(sslobj, ssl.SSLObject):
        return None
    lib = libssl.library()
    _declare(lib)
    answer = ctypes.c_void_p()
    length = lib.SSL_ctrl(
        libssl.ssl_pointer(sslobj),
        SSL_CTRL_GET_TLSEXT_STATUS_REQ_OCSP_RESP,
        0,
        ctypes.byref(answer),
    )
    if length <= 0 or not answer.value:
        return None
    return ctypes.string_at(answer.value, length)
