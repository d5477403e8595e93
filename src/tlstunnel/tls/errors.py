"""TLS errors in words a person understands.

This module owns two things: ``TLSSetupError``, raised while a service's TLS settings
are turned into an ``ssl.SSLContext`` (a bad certificate, an unknown cipher string...),
and ``describe_tls_error``, which turns what a handshake raised (``ssl.SSLError`` and its
subclasses, connection resets, EOF) into one sentence for the log.

OpenSSL names each failure with a *reason* code (``exc.reason``, e.g. ``NO_SHARED_CIPHER``)
and, for certificate failures, an X.509 verify code (``exc.verify_code``) with its own
message.  The sentences below were checked against the exceptions real sockets raise on
Python 3.11 with OpenSSL 3.0 (the tests in ``tests/tls`` provoke most of them).  Alerts
(``*_ALERT_*``) are what the *peer* told us about *our* side; the other reasons are what
OpenSSL found wrong with the peer.  Anything not in the table keeps OpenSSL's own text.
"""

from __future__ import annotations

import re
import ssl


class TLSSetupError(Exception):
    """A service's TLS settings cannot be used; ``message`` says why, for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# Sentences for OpenSSL reason codes that mean the same on both sides of the connection.
_REASONS: dict[str, str] = {
    # The bytes the peer sent are not TLS at all.
    "HTTP_REQUEST": "the peer does not speak TLS (it sent plain HTTP)",
    "HTTPS_PROXY_REQUEST": "the peer does not speak TLS (it sent an HTTP proxy CONNECT request)",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS",
    "UNEXPECTED_MESSAGE": "the peer does not speak TLS (it sent an unexpected message)",
    "UNEXPECTED_RECORD": "the peer does not speak TLS (it sent an unexpected record)",
    "PACKET_LENGTH_TOO_LONG": "the peer does not speak TLS (its data is not a TLS record)",
    "RECORD_LENGTH_MISMATCH": "the peer does not speak TLS (its data is not a TLS record)",
    # Nothing in common.
    "NO_SHARED_CIPHER": (
        "no cipher in common with the peer (check ciphers, and that the certificate's key "
        "type suits them)"
    ),
    "NO_SUITABLE_KEY_SHARE": "no key exchange group (curve) in common with the peer",
    "NO_SHARED_GROUPS": "no key exchange group (curve) in common with the peer",
    "NO_SUITABLE_GROUPS": "no key exchange group (curve) is usable with the enabled TLS versions",
    "UNSUPPORTED_PROTOCOL": (
        "no TLS version in common with the peer (it offered only versions outside "
        "sslVersionMin..sslVersionMax)"
    ),
    "NO_PROTOCOLS_AVAILABLE": "no TLS version is enabled (check sslVersionMin/sslVersionMax)",
    "UNSAFE_LEGACY_RENEGOTIATION_DISABLED": (
        "the server does not support secure renegotiation (RFC 5746); "
        "options = LEGACY_SERVER_CONNECT would allow it"
    ),
    "DH_KEY_TOO_SMALL": "the peer's Diffie-Hellman key is too small for the security level",
    "EE_KEY_TOO_SMALL": "a certificate key is too small for the security level",
    "CA_MD_TOO_WEAK": "a certificate signature is too weak for the security level",
    # Alerts: the peer refused something of ours.
    "TLSV1_ALERT_PROTOCOL_VERSION": (
        "the peer refused the TLS version (no version in common with the peer)"
    ),
    "SSLV3_ALERT_HANDSHAKE_FAILURE": (
        "the peer aborted the handshake (it found no acceptable cipher or curve, "
        "or it needs a certificate we did not send)"
    ),
    "TLSV1_ALERT_INSUFFICIENT_SECURITY": "the peer considers our ciphers too weak",
    "TLSV1_ALERT_UNKNOWN_CA": (
        "the peer does not trust our certificate (it does not know the CA that issued it)"
    ),
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate (bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer rejected our certificate as expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the peer rejected our certificate as revoked",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer rejected our certificate (certificate unknown)",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": (
        "the peer rejected our certificate as unsuitable (key type or key usage)"
    ),
    # Pre-shared keys (PSKsecrets): OpenSSL's words name the mechanism, not the cause.
    "BINDER_DOES_NOT_VERIFY": "the peer's pre-shared key does not match ours (PSKsecrets)",
    "PSK_IDENTITY_NOT_FOUND": "the peer's PSK identity is not in PSKsecrets",
    "DECRYPTION_FAILED_OR_BAD_RECORD_MAC": (
        "the peer's data failed its integrity check (with PSKsecrets: the keys differ)"
    ),
    "NO_SUITABLE_SIGNATURE_ALGORITHM": (
        "no signature algorithm in common with the peer (on a PSK server without a "
        "certificate: the client's PSK identity is not in PSKsecrets)"
    ),
    "TLSV1_ALERT_ACCESS_DENIED": "the peer denied access",
    "TLSV1_ALERT_INTERNAL_ERROR": "the peer reported an internal error",
    "TLSV1_UNRECOGNIZED_NAME": "the server does not know the name we sent in SNI",
    "TLSV1_ALERT_UNRECOGNIZED_NAME": "the server does not know the name we sent in SNI",
}

# Extra words for X.509 verify codes (X509_V_ERR_*) whose OpenSSL message leaves the
# reader guessing what to change.
_VERIFY_HINTS: dict[int, str] = {
    2: "the CA that issued it is not in CAfile/CApath",  # UNABLE_TO_GET_ISSUER_CERT
    # CRLfile/CRLpath (revocation.py): CRLs are checked for every certificate of the chain.
    3: "CRLfile/CRLpath has no CRL from one of the CAs of its chain; each CA needs one",
    8: "a CRL in CRLfile/CRLpath does not carry its CA's signature",  # CRL_SIGNATURE_FAILURE
    11: "a CRL in CRLfile/CRLpath is not valid yet",  # CRL_NOT_YET_VALID
    12: "a CRL in CRLfile/CRLpath is past its nextUpdate: install a fresh one",
    23: "a CRL in CRLfile/CRLpath lists it or a CA certificate of its chain",  # CERT_REVOKED
    18: "it is self-signed and not in CAfile/CApath",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "its chain ends in a root CA that is not in CAfile/CApath",  # SELF_SIGNED_CERT_IN_CHAIN
    20: "the CA that issued it is not in CAfile/CApath",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "the peer did not send the intermediate CA certificates",  # UNABLE_TO_VERIFY_LEAF_...
    26: "its key usage does not allow this use",  # INVALID_PURPOSE
    66: "see securityLevel",  # EE_KEY_TOO_SMALL
    67: "see securityLevel",  # CA_KEY_TOO_SMALL
    68: "see securityLevel",  # CA_MD_TOO_WEAK
}

# OpenSSL's own text inside Python's message: "[SSL: REASON] the text (_ssl.c:1006)".
_OPENSSL_TEXT = re.compile(r"^\[[^\]]*\]\s*(?P<text>.*?)(?:\s*\(_ssl\.c:\d+\))?$")

_EOF_REASONS = frozenset({"UNEXPECTED_EOF_WHILE_READING"})


def _openssl_text(exc: ssl.SSLError) -> str:
    """OpenSSL's sentence for ``exc`` without the ``[LIB: REASON]`` and ``_ssl.c`` parts."""
    message = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], str) else str(exc)
    match = _OPENSSL_TEXT.match(message)
    text = match.group("text") if match else message
    return text or type(exc).__name__


# checkHost/checkEmail/checkIP handed to OpenSSL (subject_params.py): Python words these
# after the name *it* would have checked (none here: "not valid for '<NULL>'").
_SUBJECT_MISMATCH: dict[int, str] = {
    62: "the peer's certificate does not match checkHost (it names none of those hosts)",
    63: "the peer's certificate does not match checkEmail",
    64: "the peer's certificate does not match checkIP",
}


def _verify_failure(exc: ssl.SSLError) -> str:
    code = getattr(exc, "verify_code", None)
    if isinstance(code, int) and code in _SUBJECT_MISMATCH:
        return _SUBJECT_MISMATCH[code]
    message = getattr(exc, "verify_message", None)
    if not isinstance(message, str) or not message:
        text = _openssl_text(exc)
        message = text.removeprefix("certificate verify failed: ")
    sentence = f"the peer's certificate could not be verified: {message}"
    hint = _VERIFY_HINTS.get(code) if isinstance(code, int) else None
    return f"{sentence} ({hint})" if hint else sentence


def _closed(in_handshake: bool) -> str:
    if in_handshake:
        return "the peer closed the connection during the handshake"
    return "the peer closed the connection without a TLS close_notify"


def describe_tls_error(exc: BaseException, *, server_side: bool, in_handshake: bool = True) -> str:
    """One sentence saying why a TLS connection failed.

    ``server_side`` is True when *we* are the TLS server (stunnel's server mode).
    ``in_handshake`` is False for errors after the handshake (only the wording of
    EOF and reset changes).
    """
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or ""  # absent on hand-made SSLErrors
        if isinstance(exc, ssl.SSLCertVerificationError) or reason == "CERTIFICATE_VERIFY_FAILED":
            return _verify_failure(exc)
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            who = "the client" if server_side else "the peer"
            return f"{who} did not present a certificate"
        if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
            if server_side:
                return "the peer requires a certificate we did not send"
            return "the server requires a client certificate and none was sent (see cert)"
        if reason == "WRONG_VERSION_NUMBER" and not server_side:
            return "the server does not speak TLS (its reply is not a TLS record)"
        if reason in _EOF_REASONS or (isinstance(exc, ssl.SSLEOFError) and not reason):
            return _closed(in_handshake)
        if isinstance(exc, ssl.SSLZeroReturnError):
            return "the peer closed the TLS session"
        if reason in _REASONS:
            return _REASONS[reason]
        if isinstance(exc, ssl.SSLSyscallError) and exc.errno:
            return f"the connection failed: {exc.strerror or exc}"
        return f"TLS error: {_openssl_text(exc)}"
    if isinstance(exc, ConnectionResetError):
        return "the peer reset the connection" + (" during the handshake" if in_handshake else "")
    if isinstance(exc, BrokenPipeError):
        return _closed(in_handshake)
    if isinstance(exc, TimeoutError):
        return "the TLS handshake timed out" if in_handshake else "the connection timed out"
    if isinstance(exc, OSError):
        detail = exc.strerror or str(exc) or type(exc).__name__
        return f"connection error: {detail}"
    return str(exc) or type(exc).__name__
