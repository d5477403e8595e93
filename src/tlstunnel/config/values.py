"""Value parsers for the option table: text as written in, typed values (or ``BadValue``) out.

Each parser takes the value as written and the folder of the file it came from (for
relative paths), and returns a typed value or raises ``BadValue`` with a sentence
saying what is wrong and what would be right.  ``options`` assembles them into the
table; nothing here knows which option uses which parser.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

from tlstunnel.config.model import Address, SocketOption

T = TypeVar("T")

ValueParser = Callable[[str, str], T]  # (value as written, folder of its file) -> value
VERSIONS = "all|TLSv1|TLSv1.1|TLSv1.2|TLSv1.3"


class BadValue(ValueError):
    """A value that cannot be used; the message says what would be right."""


YES_NO = {"yes": True, "no": False}


def _words(choices: Iterable[str]) -> str:
    names = list(choices)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def choice(choices: dict[str, T]) -> ValueParser[T]:
    def parse(value: str, _base_dir: str) -> T:
        try:
            return choices[value.lower()]
        except KeyError:
            raise BadValue(f"{value!r} is not an accepted value; write {_words(choices)}") from None

    return parse


parse_yes_no: ValueParser[bool] = choice(YES_NO)


def text(value: str, _base_dir: str) -> str:
    if not value:
        raise BadValue("needs a value after '='")
    return value


def any_text(value: str, _base_dir: str) -> str:
    return value


def integer(low: int, high: int | None, unit: str = "") -> ValueParser[int]:
    wanted = "a whole number" + (f" of {unit}" if unit else "")
    wanted += f" from {low} to {high}" if high is not None else f", at least {low}"

    def parse(value: str, _base_dir: str) -> int:
        if not value.isascii() or not value.isdigit():
            raise BadValue(f"{value!r} is not a whole number; write {wanted}")
        number = int(value)
        if number < low or (high is not None and number > high):
            raise BadValue(f"{number} is out of range; write {wanted}")
        return number

    return parse


def seconds(value: str, base_dir: str) -> float:
    return float(integer(0, None, "seconds")(value, base_dir))


def absolute(value: str, base_dir: str) -> str:
    if not value:
        raise BadValue("needs a file name after '='")
    return os.path.normpath(os.path.join(base_dir, value))


def readable_file(what: str) -> ValueParser[str]:
    def parse(value: str, base_dir: str) -> str:
        path = absolute(value, base_dir)
        if not os.path.isfile(path):
            raise BadValue(f"the {what} file {path} does not exist (or is not a file)")
        if not os.access(path, os.R_OK):
            raise BadValue(f"the {what} file {path} cannot be read: check its permissions")
        return path

    return parse


def existing_file(what: str) -> ValueParser[str]:
    def parse(value: str, base_dir: str) -> str:
        path = absolute(value, base_dir)
        if not os.path.exists(path):
            raise BadValue(f"the {what} file {path} does not exist")
        return path

    return parse


def existing_folder(what: str) -> ValueParser[str]:
    def parse(value: str, base_dir: str) -> str:
        path = absolute(value, base_dir)
        if not os.path.isdir(path):
            raise BadValue(f"the {what} folder {path} does not exist (or is not a folder)")
        return path

    return parse


def optional_path(value: str, base_dir: str) -> str | None:
    return absolute(value, base_dir) if value else None


SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?")


def _host(host: str) -> str:
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadValue(f"{host!r} is not a valid IPv6 address") from None
    elif re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise BadValue(f"{host!r} is not a valid IPv4 address") from None
    elif not HOST_NAME.fullmatch(host):
        raise BadValue(f"{host!r} is not a valid host name")
    return host


def _port(text: str, allow_zero: bool) -> int:
    if text.isascii() and text.isdigit():
        port = int(text)
        if port > 65535 or (port == 0 and not allow_zero):
            lowest = 0 if allow_zero else 1
            raise BadValue(f"port {port} is out of range; use {lowest} to 65535")
        return port
    if not text:
        raise BadValue("needs a port: [HOST:]PORT")
    if not SERVICE_NAME.fullmatch(text):
        raise BadValue(f"{text!r} is not a port; use a number from 1 to 65535 or a service name")
    try:
        return socket.getservbyname(text, "tcp")
    except OSError:
        raise BadValue(
            f"{text!r} is neither a port number nor a known service name (see /etc/services)"
        ) from None


# sockaddr_un.sun_path holds 108 bytes on Linux (104 on the BSDs), ending in a NUL.
UNIX_PATH_MAX = 107


def parse_address(text: str, allow_port_zero: bool) -> Address:
    """Read ``PORT``, ``HOST:PORT``, ``[IPv6]:PORT``, stunnel's ``:::PORT`` or a Unix
    socket path (anything starting with ``/``)."""
    if not text:
        raise BadValue("needs an address: [HOST:]PORT or /PATH")
    if text.startswith("/"):
        return _unix_address(text)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":") or ":" not in host:
            raise BadValue(f"{text!r} is not an address; write [IPv6-ADDRESS]:PORT")
        return Address(_host(host), _port(rest[1:], allow_port_zero))
    host, colon, port_text = text.rpartition(":")
    if not colon:
        return Address(None, _port(text, allow_port_zero))
    if ":" in host and not _is_ipv6(host) and _is_ipv6(text):
        raise BadValue(f"{text} has no port; write [{text}]:PORT")
    return Address(_host(host) if host else None, _port(port_text, allow_port_zero))


def _unix_address(text: str) -> Address:
    if not hasattr(socket, "AF_UNIX"):
        raise BadValue("Unix socket paths need a Unix system; use [HOST:]PORT")
    if "\0" in text:
        raise BadValue("a Unix socket path cannot contain a NUL character")
    if len(os.fsencode(text)) > UNIX_PATH_MAX:
        raise BadValue(
            f"the Unix socket path is {len(os.fsencode(text))} bytes long; the system "
            f"allows at most {UNIX_PATH_MAX}: choose a shorter path"
        )
    return Address(None, 0, os.path.normpath(text))


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def accept_address(value: str, _base_dir: str) -> Address:
    return parse_address(value, allow_port_zero=True)


def connect_address(value: str, _base_dir: str) -> Address:
    return parse_address(value, allow_port_zero=False)


def host_or_ip(value: str, _base_dir: str) -> str:
    """``local = HOST``: an IPv4 or IPv6 literal (brackets optional) or a host name."""
    if not value:
        raise BadValue("needs an address after '=': an IP address or a host name")
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return _host(value)


def program(value: str, base_dir: str) -> str:
    """``exec``: the program's path, relative ones resolved against the file's folder."""
    if not value:
        raise BadValue("needs the program to run after '='")
    return absolute(value, base_dir)


def argument_list(value: str, _base_dir: str) -> tuple[str, ...]:
    """``execArgs``: words separated by any whitespace, as stunnel splits them (no quoting)."""
    words = tuple(value.split())
    if not words:
        raise BadValue("needs at least the program name ($0) after '='")
    return words


def ip_address(value: str, _base_dir: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise BadValue(f"{value!r} is not an IPv4 or IPv6 address") from None
    return value


TLS_VERSIONS: dict[str, ssl.TLSVersion | None] = {
    "all": None,
    "tlsv1": ssl.TLSVersion.TLSv1,
    "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}


def tls_version(value: str, _base_dir: str) -> ssl.TLSVersion | None:
    lowered = value.lower()
    if lowered in ("sslv2", "sslv3"):
        raise BadValue(
            f"{value} is broken and not available in modern OpenSSL; use TLSv1.2 or TLSv1.3"
        )
    if lowered not in TLS_VERSIONS:
        raise BadValue(f"{value!r} is not a TLS version; write {_words(VERSIONS.split('|'))}")
    return TLS_VERSIONS[lowered]


@dataclass(frozen=True, slots=True)
class DebugLevel:
    """A parsed ``debug`` value; ``facility`` is None when only a level was written."""

    level: int
    facility: str | None


LOG_LEVEL_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
SYSLOG_FACILITIES = frozenset(
    ["auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog"]
    + ["user", "uucp"]
    + [f"local{number}" for number in range(8)]
)


def debug_level(value: str, _base_dir: str) -> DebugLevel:
    facility_text, dot, level_text = value.lower().rpartition(".")
    facility = facility_text if dot else None
    if facility is not None and facility not in SYSLOG_FACILITIES:
        known = ", ".join(sorted(SYSLOG_FACILITIES))
        raise BadValue(f"{facility!r} is not a syslog facility; use one of {known}")
    if level_text in LOG_LEVEL_NAMES:
        return DebugLevel(LOG_LEVEL_NAMES.index(level_text), facility)
    if level_text.isascii() and level_text.isdigit() and int(level_text) <= 7:
        return DebugLevel(int(level_text), facility)
    raise BadValue(
        f"{level_text!r} is not a log level; use 0-7 or one of {', '.join(LOG_LEVEL_NAMES)}"
    )


# The names ``stunnel -options`` lists (OpenSSL 3.0), without the SSL_OP_ prefix.
TLS_OPTION_NAMES = frozenset(
    """ALL ALLOW_CLIENT_RENEGOTIATION ALLOW_NO_DHE_KEX ALLOW_UNSAFE_LEGACY_RENEGOTIATION
    CIPHER_SERVER_PREFERENCE CISCO_ANYCONNECT CLEANSE_PLAINTEXT COOKIE_EXCHANGE
    CRYPTOPRO_TLSEXT_BUG DISABLE_TLSEXT_CA_NAMES DONT_INSERT_EMPTY_FRAGMENTS ENABLE_KTLS
    ENABLE_MIDDLEBOX_COMPAT EPHEMERAL_RSA IGNORE_UNEXPECTED_EOF LEGACY_SERVER_CONNECT
    MICROSOFT_BIG_SSLV3_BUFFER MICROSOFT_SESS_ID_BUG MSIE_SSLV2_RSA_PADDING NETSCAPE_CA_DN_BUG
    NETSCAPE_CHALLENGE_BUG NETSCAPE_DEMO_CIPHER_CHANGE_BUG NETSCAPE_REUSE_CIPHER_CHANGE_BUG
    NO_ANTI_REPLAY NO_COMPRESSION NO_DTLS_MASK NO_DTLSv1 NO_DTLSv1_2 NO_ENCRYPT_THEN_MAC
    NO_EXTENDED_MASTER_SECRET NO_QUERY_MTU NO_RENEGOTIATION
    NO_SESSION_RESUMPTION_ON_RENEGOTIATION NO_SSL_MASK NO_SSLv2 NO_SSLv3 NO_TICKET NO_TLSv1
    NO_TLSv1_1 NO_TLSv1_2 NO_TLSv1_3 PKCS1_CHECK_1 PKCS1_CHECK_2 PRIORITIZE_CHACHA
    SAFARI_ECDHE_ECDSA_BUG SINGLE_DH_USE SINGLE_ECDH_USE SSLEAY_080_CLIENT_DH_BUG
    SSLREF2_REUSE_CERT_TYPE_BUG TLS_BLOCK_PADDING_BUG TLS_D5_BUG TLSEXT_PADDING
    TLS_ROLLBACK_BUG""".split()  # noqa: SIM905 (a word list reads better than 53 quoted names)
)
_TLS_OPTION_BY_UPPER = {name.upper(): name for name in TLS_OPTION_NAMES}


@dataclass(frozen=True, slots=True)
class TlsOptionChange:
    """One ``options`` line: set (``NAME``) or clear (``-NAME``) an OpenSSL option."""

    name: str
    enable: bool


def tls_option(value: str, _base_dir: str) -> TlsOptionChange:
    enable = not value.startswith("-")
    written = value.removeprefix("-").strip()
    upper = written.upper()
    if upper.startswith("SSL_OP_") and upper[7:] in _TLS_OPTION_BY_UPPER:
        raise BadValue(f"write the name without the SSL_OP_ prefix: {written[7:]}")
    if upper not in _TLS_OPTION_BY_UPPER:
        close = difflib.get_close_matches(upper, _TLS_OPTION_BY_UPPER, n=1)
        hint = f"; did you mean {_TLS_OPTION_BY_UPPER[close[0]]!r}?" if close else ""
        raise BadValue(f"{written!r} is not a known OpenSSL option (see -options){hint}")
    return TlsOptionChange(_TLS_OPTION_BY_UPPER[upper], enable)


# How each socket option's value is written (names from ``stunnel -sockets``).
SOCKET_OPTION_KINDS: dict[str, Literal["flag", "int", "pair", "text"]] = {
    "SO_DEBUG": "flag", "SO_DONTROUTE": "flag", "SO_KEEPALIVE": "flag",
    "SO_LINGER": "pair", "SO_OOBINLINE": "flag", "SO_RCVBUF": "int", "SO_SNDBUF": "int",
    "SO_RCVLOWAT": "int", "SO_SNDLOWAT": "int", "SO_RCVTIMEO": "pair", "SO_SNDTIMEO": "pair",
    "SO_REUSEADDR": "flag", "SO_BINDTODEVICE": "text", "TCP_KEEPCNT": "int",
    "TCP_KEEPIDLE": "int", "TCP_KEEPINTVL": "int", "IP_TOS": "int", "IP_TTL": "int",
    "TCP_NODELAY": "flag", "IP_FREEBIND": "flag", "IPV6_V6ONLY": "flag",
}  # fmt: skip
SOCKET_SIDES = ("a", "l", "r")


def _socket_number(text: str, name: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise BadValue(f"{name} needs a whole number, not {text!r}")
    return int(text)


def socket_option(value: str, _base_dir: str) -> SocketOption:
    side, colon, rest = value.partition(":")
    name, equals, setting = rest.partition("=")
    if not colon or not equals or side.lower() not in SOCKET_SIDES:
        raise BadValue(
            f"{value!r} is not a socket option; write a|l|r:OPTION=VALUE "
            "(a = listening socket, l = local client, r = remote server)"
        )
    name = name.strip().upper()
    setting = setting.strip()
    kind = SOCKET_OPTION_KINDS.get(name)
    if kind is None:
        close = difflib.get_close_matches(name, SOCKET_OPTION_KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (see -sockets)"
        raise BadValue(f"{name!r} is not a known socket option{hint}")
    parsed: int | tuple[int, int] | str
    if kind == "text":
        parsed = text(setting, "")
    elif kind == "pair":
        first, _, second = setting.partition(":")
        parsed = (_socket_number(first, name), _socket_number(second or "0", name))
    elif kind == "flag" and setting.lower() in YES_NO:
        parsed = int(YES_NO[setting.lower()])
    else:
        parsed = _socket_number(setting, name)
    return SocketOption(side.lower(), name, parsed)


def fips(value: str, base_dir: str) -> bool:
    if parse_yes_no(value, base_dir):
        raise BadValue(
            "FIPS mode is not supported: Python's ssl module cannot switch OpenSSL into it; "
            "write fips = no or remove the line"
        )
    return False


def log_id(value: str, _base_dir: str) -> str:
    lowered = value.lower()
    if lowered in ("unique", "thread", "process"):
        raise BadValue(f"logId = {value} is not supported yet; only sequential is")
    if lowered != "sequential":
        raise BadValue(f"{value!r} is not a connection id type; write sequential")
    return lowered


def network(value: str, _base_dir: str) -> str:
    """A network in CIDR form (``10.0.0.0/8``, ``2001:db8::/32``) or one address;
    returned normalised (host bits cleared)."""
    text = value[1:].replace("]", "", 1) if value.startswith("[") else value
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise BadValue(
            f"{value!r} is not a network; write ADDRESS/PREFIX (10.0.0.0/8, 2001:db8::/32) "
            "or one address"
        ) from None


def host_optional_port(value: str, _base_dir: str) -> tuple[str, int | None]:
    """``protocolHost``: ``HOST``, ``HOST:PORT`` or ``[IPv6]:PORT``."""
    if not value:
        raise BadValue("needs a host name after '=': HOST or HOST:PORT")
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise BadValue(f"{value!r}: write [IPv6-ADDRESS]:PORT")
        return _host(host), (_port(rest[1:], False) if rest else None)
    if value.count(":") == 1:
        host, _, port_text = value.partition(":")
        return _host(host), _port(port_text, False)
    return _host(value), None


def protocol_name(value: str, _base_dir: str) -> str:
    """``protocol``: one of the negotiators tlstunnel has."""
    from tlstunnel.protocols import MODULES, REFUSED

    name = value.lower()
    if name in REFUSED:
        raise BadValue(f"protocol {name} is not supported: {REFUSED[name]}")
    if name not in MODULES:
        raise BadValue(f"unknown protocol {value!r}; use {_words(MODULES)}")
    return name


def header_line(value: str, _base_dir: str) -> str:
    """``protocolHeader``: one ``Name: value`` HTTP header line."""
    name, colon, rest = value.partition(":")
    if not colon or not name.strip() or any(c in value for c in "\r\n"):
        raise BadValue(f"{value!r} is not a header; write Name: value")
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name.strip()):
        raise BadValue(f"{name.strip()!r} is not a valid HTTP header name")
    return f"{name.strip()}: {rest.strip()}"


def alpn_list(value: str, _base_dir: str) -> tuple[str, ...]:
    """``alpn``: protocol names separated by commas, best first (``h2, http/1.1``)."""
    from tlstunnel.tls.alpn import parse_alpn_list

    try:
        return parse_alpn_list(value)
    except ValueError as exc:
        raise BadValue(str(exc)) from None


def uri_pattern(value: str, _base_dir: str) -> str:
    """``allowURI``: a URI where ``*`` matches within one path segment, ``**`` across."""
    from tlstunnel.tls.peer_acl import compile_uri_pattern

    try:
        compile_uri_pattern(value)
    except ValueError as exc:
        raise BadValue(str(exc)) from None
    return value


def spki_pin(value: str, _base_dir: str) -> bytes:
    """``allowSPKI``: ``sha256:`` and the hex or base64 SHA-256 of a SubjectPublicKeyInfo."""
    from tlstunnel.tls.peer_acl import parse_spki_pin

    try:
        return parse_spki_pin(value)
    except ValueError as exc:
        raise BadValue(str(exc)) from None


def ticket_secret(value: str, _base_dir: str) -> bytes:
    """``ticketKeySecret``/``ticketMacSecret``: 16 or 32 bytes in hex, colons allowed
    between digit pairs (stunnel's syntax)."""
    if not re.fullmatch(r"[0-9A-Fa-f]{2}(:?[0-9A-Fa-f]{2})*", value):
        raise BadValue(
            "write the secret as 32 or 64 hexadecimal digits (16 or 32 bytes), "
            "optionally with ':' between digit pairs"
        )
    secret = bytes.fromhex(value.replace(":", ""))
    if len(secret) not in (16, 32):
        raise BadValue(f"the secret is {len(secret)} bytes; it must be 16 or 32 bytes")
    return secret


def psk_secrets(value: str, base_dir: str) -> tuple[tuple[str, bytes], ...]:
    """``PSKsecrets``: the file's IDENTITY:KEY lines, read now so mistakes name their line."""
    from tlstunnel.tls.psk import PSKFileError, psk_unsupported_reason, read_psk_file

    path = readable_file("PSKsecrets")(value, base_dir)
    reason = psk_unsupported_reason()
    if reason:
        raise BadValue(reason)
    try:
        return read_psk_file(path)
    except PSKFileError as exc:
        raise BadValue(str(exc)) from None


# Certificate revocation: stunnel's OCSPflag names, and what each means here.
OCSP_FLAGS_HONOURED = frozenset(
    {"NOINTERN", "NOSIGS", "NOCHAIN", "NOVERIFY", "NOEXPLICIT", "NOCASIGN", "NODELEGATED",
     "NOCHECKS", "TRUSTOTHER", "NOTIME"}
)  # fmt: skip
OCSP_FLAGS_REFUSED = {
    "NOCERTS": "it only shapes signed OCSP requests, and stunnel sends unsigned ones",
    "RESPID_KEY": "it only shapes the responses a responder signs; this is the client side",
}


def ocsp_url(value: str, _base_dir: str) -> str:
    """``OCSP``: an ``http://HOST[:PORT][/PATH]`` responder URL."""
    from tlstunnel.tls.ocsp_http import ResponderURL

    try:
        return ResponderURL.parse(value).text
    except ValueError as exc:
        raise BadValue(str(exc)) from None


def ocsp_flag(value: str, _base_dir: str) -> str:
    """``OCSPflag``: one of stunnel's flag names (any letter case)."""
    name = value.strip().upper()
    if name in OCSP_FLAGS_REFUSED:
        raise BadValue(f"OCSPflag = {name} is not supported: {OCSP_FLAGS_REFUSED[name]}")
    if name not in OCSP_FLAGS_HONOURED:
        known = _words(sorted(OCSP_FLAGS_HONOURED | set(OCSP_FLAGS_REFUSED)))
        raise BadValue(f"{value!r} is not an OCSP flag; write {known}")
    return name


def reload_interval(value: str, _base_dir: str) -> float | None:
    """``reload``: no (None), watch (every 2 s) or a number of seconds."""
    from tlstunnel.tls.reload import WATCH_INTERVAL

    lowered = value.lower()
    if lowered == "no":
        return None
    if lowered == "watch":
        return WATCH_INTERVAL
    try:
        seconds = float(value)
    except ValueError:
        raise BadValue(f"{value!r}: write no, watch, or a number of seconds") from None
    if not 0.1 <= seconds <= 86400:
        raise BadValue(f"{value!r}: the interval must be between 0.1 and 86400 seconds")
    return seconds
