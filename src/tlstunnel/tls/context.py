"""The only place that builds ``ssl.SSLContext`` objects: ``build_service_tls``.

It turns one resolved ``ServiceConfig`` into a ``ServiceTLS``: the context, the checks
that run on the peer's certificate after the handshake (``check_peer``; then
``check_access``: the allow* rules of ``peer_acl`` and the ``policy`` hook), ALPN (``alpn.py``),
the SNI name to send (``server_hostname``) and the lines stunnel logs at debug level
(``describe_settings``).  Any setting that cannot be honoured raises ``TLSSetupError``
at build time, never at the first connection.

What Python's ``ssl`` can and cannot express (Python 3.11, OpenSSL 3.0)
----------------------------------------------------------------------
* ``verifyPeer`` (pinning).  There is no verify callback in Python, so stunnel's "ignore
  chain errors, then require the leaf to be in the store" is rebuilt from two parts:
  ``VERIFY_X509_PARTIAL_CHAIN`` makes any certificate in CAfile/CApath a trust anchor
  (so a pinned self-signed or pinned leaf with an unknown issuer verifies), and
  ``check_peer`` compares the peer's DER certificate with the certificates read from
  CAfile and every file of CApath at build time.  With ``verifyChain`` as well the flag
  is not set: stunnel then wants the whole chain up to a self-signed root *and* the pin.
  CApath certificates are also loaded into the store directly, so a directory that was
  never ``c_rehash``-ed still pins.
* ``checkHost``/``checkIP``/``checkEmail`` run in ``verify`` (``ssl.match_hostname`` is
  gone); ``check_hostname`` stays off.  They need a verified certificate, so they need
  ``verifyChain`` or ``verifyPeer`` (stunnel refuses the same configuration).
* ``ciphersuites`` (TLS 1.3): Python cannot call ``SSL_CTX_set_ciphersuites``.  The value
  is accepted when it names exactly OpenSSL's default set (any order), or when TLS 1.3 is
  disabled; anything else is refused, suggesting ``sslVersionMax = TLSv1.2``.
* ``curves``: ``SSLContext.set_ecdh_curve`` takes one name.  On OpenSSL 3 it calls
  ``SSL_CTX_set1_groups(ctx, &nid, 1)`` (read in CPython 3.11's ``_ssl.c`` and observed
  in ClientHellos): it *replaces* the whole supported-groups list, so it restricts TLS 1.3
  key exchange as well as TLS 1.2 ECDHE: a client limited to ``prime256v1`` offers only
  secp256r1 in supported_groups and key_share, and a server limited to ``X25519`` refuses
  a P-256-only TLS 1.3 client with NO_SUITABLE_KEY_SHARE.  Two consequences: with an
  ECDSA certificate, TLS 1.2 also needs the certificate's curve in the list (a P-256
  certificate with ``curves = X25519`` fails TLS 1.2 with "no shared cipher"); and names
  OpenSSL knows but TLS 1.3 cannot use (brainpool, secp224r1...) fail only at handshake
  time, so each single curve is tried on a throw-away ClientHello here.  Lists of several
  curves cannot be set; stunnel's default ``X25519:P-256:X448:P-521:P-384`` is accepted
  because OpenSSL 3.0's default groups are exactly that list, in that order, followed by
  the ffdhe groups (seen in a ClientHello); any other list is refused.
* ``options``: see ``options``; the version names become minimum/maximum versions.
* ``securityLevel`` is set through the cipher string (``@SECLEVEL=N``), stunnel's default
  2 when unset; ``SSLContext.security_level`` reads it back for the log line.

Always set: ``OP_NO_COMPRESSION``, and ``OP_CIPHER_SERVER_PREFERENCE`` on servers.
Session cache, timeout, resumption and ticket keys: ``sessions``; pre-shared keys:
``psk``.  CPython's ``SSLContext``
constructor already calls ``SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS)`` (read in
3.11's ``_ssl.c``), so idle connections give their record buffers back.
"""

from __future__ import annotations

import os
import ssl
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from tlstunnel.tls import subject_params
from tlstunnel.tls.alpn import apply_alpn, describe_alpn
from tlstunnel.tls.errors import TLSSetupError
from tlstunnel.tls.identity import load_identity
from tlstunnel.tls.options import OptionChanges, resolve_options, supported_option_names
from tlstunnel.tls.peer_acl import PeerACL, PeerCertificate
from tlstunnel.tls.policy import Policy, PolicyError, load_policy
from tlstunnel.tls.psk import PSK_DEFAULT_CIPHERS, configure_psk
from tlstunnel.tls.revocation import load_crls, ocsp_support_missing
from tlstunnel.tls.sessions import configure_sessions
from tlstunnel.tls.verify import PinnedCertificates, SubjectChecks, parse_ip, pem_certificates

__all__ = [
    "ServiceTLS",
    "TLSSetupError",
    "build_service_tls",
    "supported_option_names",
]

if TYPE_CHECKING:  # only the type: the config package is not needed at run time
    from tlstunnel.config.model import ServiceConfig
    from tlstunnel.tls.ocsp import OCSPChecker  # imports cryptography: only when configured

# Mozilla "intermediate" without DHE: ECDHE key exchange with AES-GCM or ChaCha20 only.
DEFAULT_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
DEFAULT_SECURITY_LEVEL = 2  # stunnel's default securityLevel

# OpenSSL 3.0's default TLS 1.3 suites (the only set Python can leave in place).
OPENSSL_DEFAULT_CIPHERSUITES = frozenset(
    {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"}
)
TLS13_CIPHERSUITES = OPENSSL_DEFAULT_CIPHERSUITES | {
    "TLS_AES_128_CCM_SHA256",
    "TLS_AES_128_CCM_8_SHA256",
}

# stunnel's default ``curves`` (OpenSSL >= 1.1.1), equal to OpenSSL 3.0's default EC groups.
STUNNEL_DEFAULT_CURVES = ("X25519", "P-256", "X448", "P-521", "P-384")

# Spellings stunnel and OpenSSL accept that ``set_ecdh_curve`` (OBJ_sn2nid) does not.
_CURVE_NAMES = {
    "p-256": "prime256v1",
    "secp256r1": "prime256v1",
    "prime256v1": "prime256v1",
    "p-384": "secp384r1",
    "secp384r1": "secp384r1",
    "p-521": "secp521r1",
    "secp521r1": "secp521r1",
    "x25519": "X25519",
    "x448": "X448",
    **{f"ffdhe{bits}": f"ffdhe{bits}" for bits in (2048, 3072, 4096, 6144, 8192)},
}

_VERSION_ORDER = (
    ssl.TLSVersion.SSLv3,
    ssl.TLSVersion.TLSv1,
    ssl.TLSVersion.TLSv1_1,
    ssl.TLSVersion.TLSv1_2,
    ssl.TLSVersion.TLSv1_3,
)
_VERSION_NAMES = {
    ssl.TLSVersion.SSLv3: "SSLv3",
    ssl.TLSVersion.TLSv1: "TLSv1",
    ssl.TLSVersion.TLSv1_1: "TLSv1.1",
    ssl.TLSVersion.TLSv1_2: "TLSv1.2",
    ssl.TLSVersion.TLSv1_3: "TLSv1.3",
    ssl.TLSVersion.MINIMUM_SUPPORTED: "the lowest available",
    ssl.TLSVersion.MAXIMUM_SUPPORTED: "the highest available",
}


class ServiceTLS:
    """One service's TLS: the context plus what ``ssl`` cannot do by itself.

    Build it with ``build_service_tls``; it is immutable afterwards and shared by every
    connection of the service (and every worker process, when built before forking).
    """

    __slots__ = (
        "_acl",
        "_checks",
        "_pinned",
        "_policy",
        "_psk_only",
        "_require_cert",
        "_revocation",
        "_settings",
        "_sni",
        "_verifying",
        "context",
        "server_side",
        "warnings",
    )

    def __init__(
        self,
        *,
        context: ssl.SSLContext,
        server_side: bool,
        verifying: bool,
        require_cert: bool,
        pinned: PinnedCertificates | None,
        checks: SubjectChecks,
        sni: str | None,
        settings: tuple[str, ...],
        warnings: tuple[str, ...] = (),
        acl: PeerACL | None = None,
        policy: Policy | None = None,
        revocation: OCSPChecker | None = None,
        psk_only: bool = False,
    ) -> None:
        self.context = context
        # Client mode with PSKsecrets and no certificate verification: the pre-shared key
        # is the only proof of the server's identity, so a server that answers with a
        # certificate instead (a downgrade anyone could perform) is refused.
        self._psk_only = psk_only
        self.server_side = server_side
        self.warnings = warnings  # stunnel logs these at warning level when it starts
        self._verifying = verifying
        self._require_cert = require_cert
        self._pinned = pinned
        self._checks = checks
        self._sni = sni
        self._settings = settings
        self._acl = acl if acl else None  # allow* rules (peer_acl.py)
        self._policy = policy  # the policy hook (policy.py)
        self._revocation = revocation  # OCSP checks (ocsp.py); CRLs are in the context

    @property
    def checks_revocation(self) -> bool:
        """Whether ``check_revocation`` has anything to ask (OCSP is configured)."""
        return self._revocation is not None

    async def check_revocation(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, log: Callable[[int, str], None]
    ) -> str | None:
        """After ``check_peer``: None, or why OCSP refuses the peer's certificate."""
        if self._revocation is None:
            return None
        return await self._revocation.check(sslobj, log)

    def check_peer(self, sslobj: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        """After the handshake: None to accept the peer, or why it is refused."""
        if not self._verifying:
            if self._psk_only and sslobj.getpeercert(binary_form=True) is not None:
                return (
                    "the server authenticated with a certificate, not the pre-shared key; "
                    "add verifyChain or verifyPeer to accept servers with certificates"
                )
            return None
        der = sslobj.getpeercert(binary_form=True)
        if der is None:
            if self.server_side and not self._require_cert:
                return None  # requireCert = no: a client without a certificate is fine
            return "the peer did not present a certificate"
        if self._pinned is not None:
            refusal = self._pinned.refusal(der)
            if refusal is not None:
                return refusal
        if self._checks:
            cert = sslobj.getpeercert()
            if not cert:
                return "the peer's certificate could not be decoded for the subject checks"
            return self._checks.refusal(cert)
        return None

    def check_access(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, source: object = None
    ) -> str | None:
        """After ``check_peer``: the allow* rules, then the policy hook; None admits the
        peer, else why it is refused.  ``source`` is the peername of whoever connected
        to the tunnel (handed to the hook)."""
        if self._acl is not None:
            refusal = self._acl.refusal(PeerCertificate.of(sslobj))
            if refusal is not None:
                return refusal
        if self._policy is not None:
            return self._policy.refusal(sslobj, source)
        return None

    def server_hostname(self, connect_host: str | None) -> str | None:
        """The SNI name a client sends when connecting to ``connect_host`` (None: no SNI)."""
        if self.server_side:
            return None
        if self._sni is not None:
            return self._sni or None
        if not connect_host:
            return None
        try:
            parse_ip(connect_host)
        except ValueError:
            return connect_host.rstrip(".") or None
        return None

    def describe_settings(self) -> list[str]:
        """Lines for the log at debug level, in the spirit of stunnel's own."""
        return list(self._settings)


# --- building ---------------------------------------------------------------------------


def build_service_tls(svc: ServiceConfig) -> ServiceTLS:
    """Turn ``svc``'s TLS settings into a ``ServiceTLS``; ``TLSSetupError`` says what is wrong."""
    server_side = not svc.client
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    if not server_side:
        context.check_hostname = False  # checkHost/checkIP are ours (verify.py)
    settings: list[str] = [f"TLS mode: {'server' if server_side else 'client'}"]
    notes: list[str] = []

    changes = _resolve_options(svc)
    low, high = _apply_versions(context, svc, changes)
    settings.append(f"Protocol versions: {_VERSION_NAMES[low]} to {_VERSION_NAMES[high]}")

    cipher_string = _apply_ciphers(context, svc)
    if svc.psk_secrets and svc.ciphers is None:
        # TLS 1.2 PSK handshakes need a PSK cipher; the default list has none (psk.py).
        cipher_string = f"{cipher_string}:{PSK_DEFAULT_CIPHERS}"
        context.set_ciphers(cipher_string)
        settings.append(f"PSK cipher added for TLSv1.2: {PSK_DEFAULT_CIPHERS}")
    settings.append(f"Ciphers: {svc.ciphers if svc.ciphers is not None else DEFAULT_CIPHERS}")
    settings.append(_ciphersuites_setting(context, svc.ciphersuites, high))
    if svc.security_level is not None:
        settings.append(f"User-specified security level set: {svc.security_level}")
    else:
        settings.append(f"stunnel default security level set: {DEFAULT_SECURITY_LEVEL}")
    settings.append(f"OpenSSL security level is used: {context.security_level}")
    if svc.curves is not None:
        settings.append(_apply_curves(context, svc.curves, cipher_string))

    _apply_option_bits(context, changes, server_side)
    settings.append(f"TLS options: {int(context.options):#x}")

    settings.extend(configure_sessions(svc, context, server_side))
    settings.extend(configure_psk(svc, context, server_side))
    # A server with pre-shared keys needs no certificate (stunnel's rule too).
    load_identity(context, svc.cert, svc.key, server_side=server_side and not svc.psk_secrets)
    if svc.cert is not None:
        settings.append(f"Certificate: {svc.cert}")

    checks = _subject_checks(svc)
    pinned = _load_trust(context, svc, server_side, settings)
    if subject_params.install(context, checks):
        settings.append("Subject checks: during the handshake (OpenSSL), and after it")
    revocation = _load_revocation(context, svc, settings)
    verifying = svc.verify_chain or svc.verify_peer
    apply_alpn(context, svc.alpn)
    if svc.alpn:
        settings.append(describe_alpn(svc.alpn, server_side))
    acl, policy = _access_rules(svc, server_side, verifying, settings)
    if not server_side and svc.verify_chain and not svc.verify_peer and not checks:
        notes.append(
            f'Service [{svc.name}] uses "verifyChain" without subject checks: '
            'use "checkHost" or "checkIP" to restrict trusted certificates'
        )
    return ServiceTLS(
        context=context,
        server_side=server_side,
        verifying=verifying,
        require_cert=svc.require_cert or not server_side,
        pinned=pinned,
        checks=checks,
        sni=svc.sni,
        settings=tuple(settings),
        warnings=tuple(notes),
        acl=acl,
        policy=policy,
        revocation=revocation,
        psk_only=not server_side and bool(svc.psk_secrets) and not verifying,
    )


def _load_revocation(
    context: ssl.SSLContext, svc: ServiceConfig, settings: list[str]
) -> OCSPChecker | None:
    """CRLs into the store (revocation.py); the OCSP checker when OCSP is configured."""
    load_crls(context, svc.crl_file, svc.crl_path, settings)
    if not svc.verify_chain or not (svc.ocsp_url or svc.ocsp_aia):
        return None
    missing = ocsp_support_missing()
    if missing:
        raise TLSSetupError(missing)
    from tlstunnel.tls.ocsp import OCSPChecker, OCSPSettings, load_trusted

    ocsp_settings = OCSPSettings(
        url=svc.ocsp_url,
        aia=svc.ocsp_aia,
        flags=frozenset(svc.ocsp_flags),
        nonce=svc.ocsp_nonce,
        require=svc.ocsp_require,
        timeout=svc.timeout_ocsp,
    )
    asked = [f"{svc.ocsp_url}"] if svc.ocsp_url else []
    asked += ["the AIA responders"] if svc.ocsp_aia else []
    settings.append(
        f"OCSP: asking {' then '.join(asked)}; OCSPrequire = "
        f"{'yes' if svc.ocsp_require else 'no'}, TIMEOUTocsp = {svc.timeout_ocsp:g} s"
    )
    return OCSPChecker(ocsp_settings, load_trusted(svc.ca_file, svc.ca_path))


def _access_rules(
    svc: ServiceConfig,
    server_side: bool,
    verifying: bool,
    settings: list[str],
) -> tuple[PeerACL, Policy | None]:
    """Compile the allow* rules and load the policy hook (both already checked by the
    configuration builder; checked again here for callers that skip it)."""
    try:
        acl = PeerACL.build(
            common_names=svc.allow_cn,
            organizational_units=svc.allow_ou,
            dns_names=svc.allow_dns,
            uris=svc.allow_uri,
            spki_digests=svc.allow_spki,
        )
    except ValueError as exc:
        raise TLSSetupError(f"allowURI = {exc}") from None
    if acl and not verifying:
        raise TLSSetupError('allow* rules need "verifyChain" or "verifyPeer"')
    if acl:
        settings.append(f"Peer allow rules: {', '.join(acl.rule_names())}")
    if svc.policy is None:
        return acl, None
    try:
        function = load_policy(svc.policy, svc.policy_folder)
    except PolicyError as exc:
        raise TLSSetupError(f"policy = {svc.policy}: {exc}") from None
    settings.append(f"Policy hook: {svc.policy}")
    return acl, Policy(svc.policy.strip(), function, service=svc.name, server_side=server_side)


def _resolve_options(svc: ServiceConfig) -> OptionChanges:
    try:
        return resolve_options(svc.options_set, svc.options_clear)
    except KeyError as exc:
        name = exc.args[0] if exc.args else "?"
        raise TLSSetupError(
            f"options = {name}: unknown option (run 'tlstunnel -options' for the list)"
        ) from None


# --- protocol versions --------------------------------------------------------------------


def _rank(version: ssl.TLSVersion) -> int:
    if version == ssl.TLSVersion.MINIMUM_SUPPORTED:
        return -1
    if version == ssl.TLSVersion.MAXIMUM_SUPPORTED:
        return 1 << 16
    return int(version)


def _set_version(context: ssl.SSLContext, which: str, version: ssl.TLSVersion) -> None:
    """Set minimum/maximum_version; Python warns for anything below TLS 1.2, which the
    user asked for explicitly, so that warning is silenced here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            setattr(context, which, version)
    except ValueError as exc:
        raise TLSSetupError(f"{_VERSION_NAMES[version]} is not available: {exc}") from None


def _apply_versions(
    context: ssl.SSLContext, svc: ServiceConfig, changes: OptionChanges
) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """Apply sslVersionMin/Max and the NO_* options; return the enabled (low, high)."""
    low = svc.min_version if svc.min_version is not None else context.minimum_version
    high = svc.max_version if svc.max_version is not None else ssl.TLSVersion.MAXIMUM_SUPPORTED
    if _rank(low) > _rank(high):
        raise TLSSetupError(
            f"sslVersionMin ({_VERSION_NAMES[low]}) is above sslVersionMax ({_VERSION_NAMES[high]})"
        )
    in_range = [v for v in _VERSION_ORDER if _rank(low) <= _rank(v) <= _rank(high)]
    if changes.disabled_versions & set(in_range):
        enabled = [v for v in in_range if v not in changes.disabled_versions]
        if not enabled:
            raise TLSSetupError("options = NO_* disable every protocol version that is enabled")
        first, last = in_range.index(enabled[0]), in_range.index(enabled[-1])
        if last - first + 1 != len(enabled):
            names = ", ".join(_VERSION_NAMES[v] for v in enabled)
            raise TLSSetupError(
                f"options = NO_* leave a gap between the enabled protocol versions ({names}); "
                "use sslVersionMin/sslVersionMax instead"
            )
        low, high = enabled[0], enabled[-1]
    if low != context.minimum_version:
        _set_version(context, "minimum_version", low)
    if high != context.maximum_version:
        _set_version(context, "maximum_version", high)
    if high == ssl.TLSVersion.MAXIMUM_SUPPORTED:
        high = ssl.TLSVersion.TLSv1_3  # OpenSSL 3's highest
    return low, high


# --- algorithms ---------------------------------------------------------------------------


def _apply_ciphers(context: ssl.SSLContext, svc: ServiceConfig) -> str:
    """Set the TLS <= 1.2 cipher list and the security level; return the string used."""
    ciphers = svc.ciphers if svc.ciphers is not None else DEFAULT_CIPHERS
    if svc.security_level is not None:
        if not 0 <= svc.security_level <= 5:
            raise TLSSetupError(f"securityLevel = {svc.security_level}: must be 0 to 5")
        cipher_string = f"{ciphers}:@SECLEVEL={svc.security_level}"
    else:
        # First, so a @SECLEVEL the user wrote into ``ciphers`` still wins.
        cipher_string = f"@SECLEVEL={DEFAULT_SECURITY_LEVEL}:{ciphers}"
    try:
        context.set_ciphers(cipher_string)
    except ssl.SSLError:
        raise TLSSetupError(
            f"ciphers = {ciphers}: OpenSSL selects no cipher from this list "
            "(see 'openssl ciphers -v'; TLSv1.3 suites belong in ciphersuites)"
        ) from None
    return cipher_string


def _ciphersuites_setting(
    context: ssl.SSLContext, ciphersuites: str | None, high: ssl.TLSVersion
) -> str:
    """Check ``ciphersuites`` against what Python can express; return the log line."""
    in_effect = ":".join(c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.3")
    if ciphersuites is None:
        return f"TLSv1.3 ciphersuites: {in_effect}"
    names = [n.strip() for n in ciphersuites.split(":") if n.strip()]
    unknown = [n for n in names if n not in TLS13_CIPHERSUITES]
    if not names or unknown:
        bad = unknown[0] if unknown else "(empty)"
        raise TLSSetupError(
            f"ciphersuites = {ciphersuites}: {bad} is not a TLSv1.3 ciphersuite "
            f"(known: {', '.join(sorted(TLS13_CIPHERSUITES))})"
        )
    if _rank(high) < _rank(ssl.TLSVersion.TLSv1_3):
        return f"TLSv1.3 ciphersuites: {ciphersuites} (unused: TLSv1.3 is disabled)"
    if set(names) == OPENSSL_DEFAULT_CIPHERSUITES:
        return f"TLSv1.3 ciphersuites: {in_effect}"
    raise TLSSetupError(
        f"ciphersuites = {ciphersuites}: Python's ssl module cannot restrict TLSv1.3 "
        f"ciphersuites; it always offers {in_effect}. Remove the option, or set "
        "sslVersionMax = TLSv1.2 if you must control the suites (ciphers then decides)"
    )


def _curve_name(name: str) -> str:
    return _CURVE_NAMES.get(name.strip().lower(), name.strip())


def _apply_curves(context: ssl.SSLContext, curves: str, cipher_string: str) -> str:
    """Apply ``curves`` (one name, or stunnel's default list); return the log line."""
    names = [n for n in (part.strip() for part in curves.split(":")) if n]
    if not names:
        raise TLSSetupError("curves is empty")
    if len(names) > 1:
        if [_curve_name(n) for n in names] == [_curve_name(n) for n in STUNNEL_DEFAULT_CURVES]:
            return f"ECDH initialized with curves {curves} (OpenSSL's default groups)"
        raise TLSSetupError(
            f"curves = {curves}: Python's ssl module can set only one curve; use a single "
            f"name, or leave curves unset for OpenSSL's defaults "
            f"({':'.join(STUNNEL_DEFAULT_CURVES)})"
        )
    name = _curve_name(names[0])
    try:
        context.set_ecdh_curve(name)
    except (ValueError, ssl.SSLError):
        raise TLSSetupError(
            f"curves = {curves}: unknown curve (try P-256, P-384, P-521, X25519, X448 "
            "or an ffdhe group)"
        ) from None
    _probe_curve(context, name, curves, cipher_string)
    return f"ECDH initialized with curves {name}"


def _probe_curve(context: ssl.SSLContext, name: str, written: str, cipher_string: str) -> None:
    """Start a handshake with ``name`` alone: curves TLS cannot use fail here, not later."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    _set_version(probe, "minimum_version", context.minimum_version)
    _set_version(probe, "maximum_version", context.maximum_version)
    probe.set_ciphers(cipher_string)
    probe.set_ecdh_curve(name)
    hello = probe.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    try:
        hello.do_handshake()
    except ssl.SSLWantReadError:
        return
    except ssl.SSLError as exc:
        why = getattr(exc, "reason", None) or exc
        raise TLSSetupError(
            f"curves = {written}: {name} cannot be used with the enabled protocol versions "
            f"({why}); TLSv1.3 allows only P-256, P-384, P-521, X25519, X448 and the ffdhe groups"
        ) from None


def _apply_option_bits(context: ssl.SSLContext, changes: OptionChanges, server_side: bool) -> None:
    options = int(context.options) | int(ssl.OP_NO_COMPRESSION)
    if server_side:
        options |= int(ssl.OP_CIPHER_SERVER_PREFERENCE)
    options = (options | changes.set_bits) & ~changes.clear_bits
    context.options = ssl.Options(options)


# --- certificates and trust ---------------------------------------------------------------


def _subject_checks(svc: ServiceConfig) -> SubjectChecks:
    try:
        checks = SubjectChecks.parse(svc.check_host, svc.check_ip, svc.check_email)
    except ValueError as exc:
        raise TLSSetupError(str(exc)) from None
    if checks and not (svc.verify_chain or svc.verify_peer):
        raise TLSSetupError(
            'checkHost/checkIP/checkEmail need "verifyChain" or "verifyPeer": '
            "either of them has to be enabled"
        )
    return checks


def _read_directory_certificates(ca_path: str) -> list[bytes]:
    """Every PEM certificate in every regular file of ``ca_path`` (unreadable files skipped)."""
    found: list[bytes] = []
    for entry in sorted(os.listdir(ca_path)):
        path = os.path.join(ca_path, entry)
        if not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as handle:
                found.extend(pem_certificates(handle.read()))
        except OSError:
            continue
    return found


def _load_trust(
    context: ssl.SSLContext, svc: ServiceConfig, server_side: bool, settings: list[str]
) -> PinnedCertificates | None:
    """Load CAfile/CApath, set the verify mode; return the pin set for verifyPeer."""
    if svc.ca_file is not None:
        try:
            context.load_verify_locations(cafile=svc.ca_file)
        except FileNotFoundError:
            raise TLSSetupError(f"CAfile = {svc.ca_file}: no such file") from None
        except (ssl.SSLError, OSError) as exc:
            raise TLSSetupError(
                f"CAfile = {svc.ca_file}: no PEM certificates could be loaded ({exc})"
            ) from None
        settings.append(f"CAfile: {svc.ca_file}")
    if svc.ca_path is not None:
        if not os.path.isdir(svc.ca_path):
            raise TLSSetupError(f"CApath = {svc.ca_path}: not a directory")
        context.load_verify_locations(capath=svc.ca_path)
        settings.append(f"CApath: {svc.ca_path}")

    if not (svc.verify_chain or svc.verify_peer):
        context.verify_mode = ssl.CERT_NONE
        settings.append("Peer certificate verification: none")
        return None
    if svc.ca_file is None and svc.ca_path is None:
        raise TLSSetupError(
            'verifyChain/verifyPeer need trusted certificates: either "CAfile" or "CApath" '
            "has to be configured"
        )
    if server_side and not svc.require_cert:
        context.verify_mode = ssl.CERT_OPTIONAL
    else:
        context.verify_mode = ssl.CERT_REQUIRED
    kinds = [k for k, on in (("chain", svc.verify_chain), ("pinned", svc.verify_peer)) if on]
    settings.append(f"Peer certificate verification: {' and '.join(kinds)}")
    if not svc.verify_peer:
        return None

    pinned: list[bytes] = []
    if svc.ca_file is not None:
        with open(svc.ca_file, "rb") as handle:
            pinned.extend(pem_certificates(handle.read()))
    if svc.ca_path is not None:
        from_directory = _read_directory_certificates(svc.ca_path)
        if from_directory:
            # Unhashed directories: put the certificates in the store as well.
            context.load_verify_locations(cadata=b"".join(dict.fromkeys(from_directory)))
        pinned.extend(from_directory)
    if not pinned:
        raise TLSSetupError("verifyPeer: CAfile/CApath hold no certificate to pin")
    if not svc.verify_chain:
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    pins = PinnedCertificates(frozenset(pinned))
    settings.append(f"Pinned certificates: {len(pins)}")
    return pins
