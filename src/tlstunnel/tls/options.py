"""stunnel's ``options = NAME`` / ``options = -NAME`` lines, as OpenSSL 3.0 option bits.

This module owns the one table of option names (``OPENSSL_OPTIONS``) and the rule that
turns a service's set/clear lists into (a) bits for ``SSLContext.options`` and (b) the
protocol versions the ``NO_SSLv3`` / ``NO_TLSv1*`` names switch off.

Where the values come from: Python's ``ssl`` module exposes only some ``SSL_OP_*``
constants (``ssl.OP_NO_TICKET``...); those are used as they are.  The others are the
values OpenSSL 3.0 publishes in ``<openssl/ssl.h>`` (``SSL_OP_BIT(n)``); they are part
of OpenSSL's API and did not move between 3.0 and 3.x.  The names are exactly those
``stunnel -options`` lists when built against OpenSSL 3.0; the obsolete ones OpenSSL 3
defines as 0 (``SINGLE_DH_USE``, ``NO_SSLv2``...) are accepted and change nothing.

Protocol versions: Python deprecates setting ``OP_NO_TLSv1*`` (a DeprecationWarning
each time), and OpenSSL itself prefers min/max versions.  So the version bits are never
given to OpenSSL: ``context`` turns them into ``minimum_version``/``maximum_version``.
That includes the aliases whose bits coincide on a TLS context: ``NO_DTLSv1`` is the
same bit as ``NO_TLSv1``, ``NO_DTLSv1_2`` as ``NO_TLSv1_2``, and ``NO_SSL_MASK`` is every
version bit.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass


def _bit(n: int) -> int:
    return 1 << n


# SSL_OP_* values from OpenSSL 3.0's ssl.h that Python's ssl module does not export.
OPENSSL3_ONLY_OPTIONS: dict[str, int] = {
    "NO_EXTENDED_MASTER_SECRET": _bit(0),
    "CLEANSE_PLAINTEXT": _bit(1),
    "LEGACY_SERVER_CONNECT": _bit(2),
    "ENABLE_KTLS": _bit(3),
    "TLSEXT_PADDING": _bit(4),
    "SAFARI_ECDHE_ECDSA_BUG": _bit(6),
    "ALLOW_CLIENT_RENEGOTIATION": _bit(8),
    "DISABLE_TLSEXT_CA_NAMES": _bit(9),
    "ALLOW_NO_DHE_KEX": _bit(10),
    "DONT_INSERT_EMPTY_FRAGMENTS": _bit(11),
    "NO_QUERY_MTU": _bit(12),  # DTLS only
    "COOKIE_EXCHANGE": _bit(13),  # DTLS only
    "CISCO_ANYCONNECT": _bit(15),
    "NO_SESSION_RESUMPTION_ON_RENEGOTIATION": _bit(16),
    "ALLOW_UNSAFE_LEGACY_RENEGOTIATION": _bit(18),
    "NO_ENCRYPT_THEN_MAC": _bit(19),
    "PRIORITIZE_CHACHA": _bit(21),
    "TLS_ROLLBACK_BUG": _bit(23),
    "NO_ANTI_REPLAY": _bit(24),
    "CRYPTOPRO_TLSEXT_BUG": _bit(31),
    # Same bits as NO_TLSv1 / NO_TLSv1_2 (the DTLS names alias them).
    "NO_DTLSv1": _bit(26),
    "NO_DTLSv1_2": _bit(27),
    "NO_DTLS_MASK": _bit(26) | _bit(27),
    "NO_SSL_MASK": _bit(25) | _bit(26) | _bit(27) | _bit(28) | _bit(29),
    # Obsolete: 0 in OpenSSL 3, accepted for old configuration files.
    "MICROSOFT_SESS_ID_BUG": 0,
    "NETSCAPE_CHALLENGE_BUG": 0,
    "NETSCAPE_REUSE_CIPHER_CHANGE_BUG": 0,
    "SSLREF2_REUSE_CERT_TYPE_BUG": 0,
    "MICROSOFT_BIG_SSLV3_BUFFER": 0,
    "MSIE_SSLV2_RSA_PADDING": 0,
    "SSLEAY_080_CLIENT_DH_BUG": 0,
    "TLS_D5_BUG": 0,
    "TLS_BLOCK_PADDING_BUG": 0,
    "EPHEMERAL_RSA": 0,
    "PKCS1_CHECK_1": 0,
    "PKCS1_CHECK_2": 0,
    "NETSCAPE_CA_DN_BUG": 0,
    "NETSCAPE_DEMO_CIPHER_CHANGE_BUG": 0,
}

# The ones Python exports (ssl.OP_SINGLE_DH_USE and friends are 0 on OpenSSL 3 too).
PYTHON_OPTIONS: dict[str, int] = {
    "ALL": int(ssl.OP_ALL),
    "CIPHER_SERVER_PREFERENCE": int(ssl.OP_CIPHER_SERVER_PREFERENCE),
    "ENABLE_MIDDLEBOX_COMPAT": int(ssl.OP_ENABLE_MIDDLEBOX_COMPAT),
    "IGNORE_UNEXPECTED_EOF": int(ssl.OP_IGNORE_UNEXPECTED_EOF),
    "NO_COMPRESSION": int(ssl.OP_NO_COMPRESSION),
    "NO_RENEGOTIATION": int(ssl.OP_NO_RENEGOTIATION),
    "NO_TICKET": int(ssl.OP_NO_TICKET),
    "SINGLE_DH_USE": int(ssl.OP_SINGLE_DH_USE),
    "SINGLE_ECDH_USE": int(ssl.OP_SINGLE_ECDH_USE),
    "NO_SSLv2": int(ssl.OP_NO_SSLv2),
    "NO_SSLv3": int(ssl.OP_NO_SSLv3),
    "NO_TLSv1": int(ssl.OP_NO_TLSv1),
    "NO_TLSv1_1": int(ssl.OP_NO_TLSv1_1),
    "NO_TLSv1_2": int(ssl.OP_NO_TLSv1_2),
    "NO_TLSv1_3": int(ssl.OP_NO_TLSv1_3),
}

# Every name stunnel accepts, without the SSL_OP_ prefix.
OPENSSL_OPTIONS: dict[str, int] = {**OPENSSL3_ONLY_OPTIONS, **PYTHON_OPTIONS}

# Each version bit and the protocol version it switches off.
VERSION_BITS: dict[int, ssl.TLSVersion] = {
    int(ssl.OP_NO_SSLv3): ssl.TLSVersion.SSLv3,
    int(ssl.OP_NO_TLSv1): ssl.TLSVersion.TLSv1,
    int(ssl.OP_NO_TLSv1_1): ssl.TLSVersion.TLSv1_1,
    int(ssl.OP_NO_TLSv1_2): ssl.TLSVersion.TLSv1_2,
    int(ssl.OP_NO_TLSv1_3): ssl.TLSVersion.TLSv1_3,
}
VERSION_MASK = sum(VERSION_BITS)

_BY_UPPER_NAME = {name.upper(): name for name in OPENSSL_OPTIONS}


@dataclass(frozen=True, slots=True)
class OptionChanges:
    """What a service's option lines ask for, split into what goes where."""

    set_bits: int = 0  # for SSLContext.options (never a version bit)
    clear_bits: int = 0
    disabled_versions: frozenset[ssl.TLSVersion] = frozenset()


def option_value(name: str) -> int:
    """The bits for ``name`` (``NO_TICKET`` or ``SSL_OP_NO_TICKET``, any case).

    Raises ``KeyError`` for a name OpenSSL 3.0 does not define.
    """
    key = name.strip().upper().removeprefix("SSL_OP_")
    if key not in _BY_UPPER_NAME:
        raise KeyError(name)
    return OPENSSL_OPTIONS[_BY_UPPER_NAME[key]]


def _versions_in(bits: int) -> set[ssl.TLSVersion]:
    return {version for bit, version in VERSION_BITS.items() if bits & bit}


def resolve_options(set_names: tuple[str, ...], clear_names: tuple[str, ...]) -> OptionChanges:
    """Translate ``options`` lines; clearing wins over setting the same bit.

    The model keeps set and clear lines apart, so their relative order is lost; applying
    every set, then every clear, means ``-NAME`` anywhere turns ``NAME`` off.
    Raises ``KeyError`` naming the first unknown option.
    """
    set_bits = 0
    clear_bits = 0
    for name in set_names:
        set_bits |= option_value(name)
    for name in clear_names:
        clear_bits |= option_value(name)
    disabled = _versions_in(set_bits) - _versions_in(clear_bits)
    return OptionChanges(
        set_bits=set_bits & ~VERSION_MASK & ~clear_bits,
        clear_bits=clear_bits & ~VERSION_MASK,
        disabled_versions=frozenset(disabled),
    )


def supported_option_names() -> list[str]:
    """Every accepted name, in the order ``stunnel -options`` prints them."""
    return sorted(OPENSSL_OPTIONS, key=lambda name: (name.replace("_", "").lower(), name))
