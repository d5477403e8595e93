"""The option table: every option stunnel 5.68 knows, and what tlstunnel does with it.

``OPTIONS`` is the single source of truth for option names, where each may be written
(``scope``), whether tlstunnel honours it (``status``), how its value is read
(``parser``), its default and a one-line help text.  ``build`` uses it to check and
convert values; ``-help`` and the README's option table are printed from it.

A parser takes the value as written and the folder of the file it came from (for
relative paths), and returns a typed value or raises ``BadValue`` with a sentence
saying what is wrong and what would be right.  Options with a status other than
"supported" are still listed, with the reason, so a stunnel file never meets a
silent surprise: "no effect" options are accepted with a notice, "refused" ones are
problems.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from tlstunnel.config.model import Address, Failover, Foreground, LogMode, SocketOption

T = TypeVar("T")

Status = Literal["supported", "no effect", "refused"]
ValueParser = Callable[[str, str], T]  # (value as written, folder of its file) -> value


class Scope(enum.Enum):
    """Where an option may be written."""

    GLOBAL = "global"  # only above the first [section]
    SERVICE = "service"  # in a [section]; above the first one it is a default for all
    BOTH = "both"  # means something in either place


class BadValue(ValueError):
    """A value that cannot be used; the message says what would be right."""


@dataclass(frozen=True, slots=True)
class OptionSpec(Generic[T]):
    """One row of the option table."""

    name: str  # canonical spelling, as stunnel's documentation writes it
    scope: Scope
    status: Status
    help: str
    syntax: str = ""  # the value's shape, for -help: "yes|no", "[HOST:]PORT"
    default_text: str = ""
    reason: str = ""  # why an option is refused or has no effect
    repeatable: bool = False  # several lines accumulate instead of the last one winning
    parser: ValueParser[T] | None = None
    misplaced_hint: str = ""  # replaces the generic advice when found in the wrong scope

    def parse(self, value: str, base_dir: str) -> T:
        """Convert a written value; ``BadValue`` if it cannot be used."""
        if self.parser is None:
            raise BadValue(f"{self.name} takes no value here")
        return self.parser(value, base_dir)


# --- value parsers -------------------------------------------------------------------

YES_NO = {"yes": True, "no": False}


def _words(choices: Iterable[str]) -> str:
    names = list(choices)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def _choice(choices: dict[str, T]) -> ValueParser[T]:
    def parse(value: str, _base_dir: str) -> T:
        try:
            return choices[value.lower()]
        except KeyError:
            raise BadValue(f"{value!r} is not an accepted value; write {_words(choices)}") from None

    return parse


parse_yes_no: ValueParser[bool] = _choice(YES_NO)


def _text(value: str, _base_dir: str) -> str:
    if not value:
        raise BadValue("needs a value after '='")
    return value


def _any_text(value: str, _base_dir: str) -> str:
    return value


def _integer(low: int, high: int | None, unit: str = "") -> ValueParser[int]:
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


def _seconds(value: str, base_dir: str) -> float:
    return float(_integer(0, None, "seconds")(value, base_dir))


def _absolute(value: str, base_dir: str) -> str:
    if not value:
        raise BadValue("needs a file name after '='")
    return os.path.normpath(os.path.join(base_dir, value))


def _readable_file(what: str) -> ValueParser[str]:
    def parse(value: str, base_dir: str) -> str:
        path = _absolute(value, base_dir)
        if not os.path.isfile(path):
            raise BadValue(f"the {what} file {path} does not exist (or is not a file)")
        if not os.access(path, os.R_OK):
            raise BadValue(f"the {what} file {path} cannot be read: check its permissions")
        return path

    return parse


def _existing_file(what: str) -> ValueParser[str]:
    def parse(value: str, base_dir: str) -> str:
        path = _absolute(value, base_dir)
        if not os.path.exists(path):
            raise BadValue(f"the {what} file {path} does not exist")
        return path

    return parse


def _existing_folder(value: str, base_dir: str) -> str:
    path = _absolute(value, base_dir)
    if not os.path.isdir(path):
        raise BadValue(f"the CA folder {path} does not exist (or is not a folder)")
    return path


def _optional_path(value: str, base_dir: str) -> str | None:
    return _absolute(value, base_dir) if value else None


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


def parse_address(text: str, allow_port_zero: bool) -> Address:
    """Read ``PORT``, ``HOST:PORT``, ``[IPv6]:PORT`` or stunnel's ``:::PORT``."""
    if not text:
        raise BadValue("needs an address: [HOST:]PORT")
    if text.startswith("/"):
        raise BadValue("Unix socket paths are not supported yet; use [HOST:]PORT")
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


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _accept_address(value: str, _base_dir: str) -> Address:
    return parse_address(value, allow_port_zero=True)


def _connect_address(value: str, _base_dir: str) -> Address:
    return parse_address(value, allow_port_zero=False)


def _ip_address(value: str, _base_dir: str) -> str:
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


def _tls_version(value: str, _base_dir: str) -> ssl.TLSVersion | None:
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


def _debug_level(value: str, _base_dir: str) -> DebugLevel:
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


def _tls_option(value: str, _base_dir: str) -> TlsOptionChange:
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


def _socket_option(value: str, _base_dir: str) -> SocketOption:
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
        parsed = _text(setting, "")
    elif kind == "pair":
        first, _, second = setting.partition(":")
        parsed = (_socket_number(first, name), _socket_number(second or "0", name))
    elif kind == "flag" and setting.lower() in YES_NO:
        parsed = int(YES_NO[setting.lower()])
    else:
        parsed = _socket_number(setting, name)
    return SocketOption(side.lower(), name, parsed)


def _fips(value: str, base_dir: str) -> bool:
    if parse_yes_no(value, base_dir):
        raise BadValue(
            "FIPS mode is not supported: Python's ssl module cannot switch OpenSSL into it; "
            "write fips = no or remove the line"
        )
    return False


def _log_id(value: str, _base_dir: str) -> str:
    lowered = value.lower()
    if lowered in ("unique", "thread", "process"):
        raise BadValue(f"logId = {value} is not supported yet; only sequential is")
    if lowered != "sequential":
        raise BadValue(f"{value!r} is not a connection id type; write sequential")
    return lowered


# --- the table ------------------------------------------------------------------------

NOT_YET = "not supported yet"
NO_ENGINE = "Python's ssl module has no OpenSSL ENGINE support"
WINDOWS_GUI = "it only exists in stunnel's Windows GUI"
RANDOM_SEED = "OpenSSL seeds its own random generator"
G, S, B = Scope.GLOBAL, Scope.SERVICE, Scope.BOTH
VERSIONS = "all|TLSv1|TLSv1.1|TLSv1.2|TLSv1.3"


# Row builders: positional on purpose, so each table row below stays one readable line.
def _on(  # noqa: PLR0917
    name: str,
    scope: Scope,
    parser: ValueParser[T],
    syntax: str,
    default: str,
    help_text: str,
    repeatable: bool = False,
    misplaced_hint: str = "",
) -> OptionSpec[T]:
    return OptionSpec(
        name, scope, "supported", help_text, syntax, default, "", repeatable, parser, misplaced_hint
    )


def _idle(  # noqa: PLR0917
    name: str,
    scope: Scope,
    parser: ValueParser[T],
    syntax: str,
    default: str,
    help_text: str,
    reason: str = RANDOM_SEED,
) -> OptionSpec[T]:
    return OptionSpec(name, scope, "no effect", help_text, syntax, default, reason, False, parser)


def _off(  # noqa: PLR0917
    name: str, scope: Scope, reason: str, syntax: str, help_text: str, repeatable: bool = False
) -> OptionSpec[None]:
    return OptionSpec(name, scope, "refused", help_text, syntax, "", reason, repeatable)


_FOREGROUND_MODES = {"yes": Foreground.YES, "quiet": Foreground.QUIET, "no": Foreground.NO}
_LOG_MODES = {"append": LogMode.APPEND, "overwrite": LogMode.OVERWRITE}
_SETID_HINT = (
    "in a service section stunnel uses it for the owner of a Unix accept socket, which is "
    "not supported yet; to drop privileges, move it above the first [section]"
)

# The table proper.  Kept hand-aligned, one option per row or two, so it reads as a table.
# fmt: off

# Global options.
FOREGROUND = _on("foreground", G, _choice(_FOREGROUND_MODES), "yes|quiet|no", "no",
                 "stay in the foreground; yes also logs to stderr")
PID = _on("pid", G, _optional_path, "FILE", "none", "write the process id here; empty: no file")
OUTPUT = _on("output", G, _absolute, "FILE", "none", "append log lines to this file")
LOG = _on("log", G, _choice(_LOG_MODES), "append|overwrite", "append",
          "keep or empty the output file when opening it")
SYSLOG = _on("syslog", G, parse_yes_no, "yes|no", "yes", "also send log lines to syslog")
SETUID = _on("setuid", G, _text, "USER", "", "become this user once the ports are bound",
             misplaced_hint=_SETID_HINT)
SETGID = _on("setgid", G, _text, "GROUP", "", "become this group once the ports are bound",
             misplaced_hint=_SETID_HINT)
FIPS = _on("fips", G, _fips, "no", "no", "FIPS 140 mode; only no is accepted")
SERVICE = _on("service", B, _text, "NAME", "stunnel",
              "process name for syslog; names the service in inetd mode")
DEBUG = _on("debug", B, _debug_level, "[FACILITY.]LEVEL", "daemon.notice",
            "log level 0-7 or emerg..debug; the global one is each service's default")

# Service options; above the first [section] they are defaults for every service.
ACCEPT = _on("accept", S, _accept_address, "[HOST:]PORT", "none (required unless inetd)",
             "listen here; port 0 picks a free one; :::PORT is all IPv6 addresses", True)
CONNECT = _on("connect", S, _connect_address, "[HOST:]PORT", "none (required)",
              "forward connections here; several lines give failover", True)
CLIENT = _on("client", S, parse_yes_no, "yes|no", "no",
             "yes: take plaintext in, connect out with TLS")
CERT = _on("cert", S, _readable_file("certificate"), "FILE", "none",
           "certificate chain (PEM); required in server mode")
KEY = _on("key", S, _existing_file("key"), "FILE", "the cert file", "private key for cert")
CA_FILE = _on("CAfile", S, _readable_file("CA"), "FILE", "none",
              "trusted certificates for verifyChain and verifyPeer")
CA_PATH = _on("CApath", S, _existing_folder, "DIRECTORY", "none",
              "folder of hashed trusted certificates")
VERIFY_CHAIN = _on("verifyChain", S, parse_yes_no, "yes|no", "no",
                   "check the peer's certificate chain up to a trusted CA")
VERIFY_PEER = _on("verifyPeer", S, parse_yes_no, "yes|no", "no",
                  "accept only peer certificates found in CAfile or CApath")
VERIFY = _on("verify", S, _choice({str(level): level for level in range(5)}), "0..4", "none",
             "legacy; 0 asks for no certificate (Python cannot ask and then ignore it)")
REQUIRE_CERT = _on("requireCert", S, parse_yes_no, "yes|no", "no (yes with verifyChain/Peer)",
                   "refuse peers that present no certificate")
CHECK_HOST = _on("checkHost", S, _text, "HOST", "", "peer certificate must name this host", True)
CHECK_IP = _on("checkIP", S, _ip_address, "IP", "", "peer certificate must name this IP", True)
CHECK_EMAIL = _on("checkEmail", S, _text, "EMAIL", "",
                  "peer certificate must name this email address", True)
SNI = _on("sni", S, _any_text, "SERVER_NAME", "the connect host name",
          "client mode: server name to send; empty sends none")
SSL_VERSION = _on("sslVersion", S, _tls_version, VERSIONS, "", "allow only this TLS version")
SSL_VERSION_MIN = _on("sslVersionMin", S, _tls_version, VERSIONS, "TLSv1.2",
                      "lowest TLS version; the default TLSv1.2 is tlstunnel's secure choice")
SSL_VERSION_MAX = _on("sslVersionMax", S, _tls_version, VERSIONS, "all", "highest TLS version")
CIPHERS = _on("ciphers", S, _text, "LIST", "OpenSSL's", "cipher list for TLS 1.2 and older")
CIPHERSUITES = _on("ciphersuites", S, _text, "LIST", "OpenSSL's", "TLS 1.3 suites, best first")
CURVES = _on("curves", S, _text, "LIST", "OpenSSL's", "key exchange groups, ':' between them")
SECURITY_LEVEL = _on("securityLevel", S, _integer(0, 5), "0..5", "OpenSSL's",
                     "OpenSSL security level")
TLS_OPTIONS = _on("options", S, _tls_option, "[-]NAME", "",
                  "set NAME or clear -NAME, an OpenSSL option without SSL_OP_", True)
RENEGOTIATION = _on("renegotiation", S, parse_yes_no, "yes|no", "yes",
                    "allow TLS 1.2 renegotiation")
TIMEOUT_BUSY = _on("TIMEOUTbusy", S, _seconds, "SECONDS", "300", "wait this long for data")
TIMEOUT_CLOSE = _on("TIMEOUTclose", S, _seconds, "SECONDS", "60", "wait this long for close_notify")
TIMEOUT_CONNECT = _on("TIMEOUTconnect", S, _seconds, "SECONDS", "10", "wait this long to connect")
TIMEOUT_IDLE = _on("TIMEOUTidle", S, _seconds, "SECONDS", "43200", "close idle connections after")
FAILOVER = _on("failover", S, _choice({"rr": Failover.RR, "prio": Failover.PRIO}), "rr|prio",
               "prio", "several connect lines: rr = round robin, prio = in order")
DELAY = _on("delay", S, parse_yes_no, "yes|no", "no", "look connect names up per connection")
SOCKET = _on("socket", S, _socket_option, "a|l|r:OPTION=VALUE[:VALUE]", "",
             "socket option on the accept, local or remote socket", True)
LOG_ID = _on("logId", S, _log_id, "sequential", "sequential", "connection id type in log lines")
INCLUDE = _on("include", B, _any_text, "DIRECTORY", "",
              "read every file of this folder here, in name order")

OPTIONS: tuple[OptionSpec[Any], ...] = (
    FOREGROUND, PID, OUTPUT, LOG, SYSLOG, SETUID, SETGID, FIPS, SERVICE, DEBUG,
    _idle("RNDbytes", G, _integer(0, None), "BYTES", "1024", "bytes to read from the seed file"),
    _idle("RNDfile", G, _text, "FILE", "", "file to seed the random generator from"),
    _idle("RNDoverwrite", G, parse_yes_no, "yes|no", "yes", "rewrite the seed file afterwards"),
    _off("chroot", G, NOT_YET, "DIRECTORY", "confine the process to this folder"),
    _off("compression", G, "TLS compression is insecure (CRIME) and absent from modern OpenSSL",
         "deflate|zlib", "compress TLS records"),
    _off("EGD", G, "OpenSSL no longer reads entropy gathering daemons", "PATH", "EGD socket"),
    _off("engine", G, NO_ENGINE, "auto|ENGINE_ID", "load an OpenSSL engine"),
    _off("engineCtrl", G, NO_ENGINE, "COMMAND[:PARAMETER]", "send the engine a command", True),
    _off("engineDefault", G, NO_ENGINE, "TASK_LIST", "tasks to hand to the engine"),
    _off("iconActive", G, WINDOWS_GUI, "ICON_FILE", "tray icon while connections are open"),
    _off("iconError", G, WINDOWS_GUI, "ICON_FILE", "tray icon when the configuration is bad"),
    _off("iconIdle", G, WINDOWS_GUI, "ICON_FILE", "tray icon when no connection is open"),
    _off("taskbar", G, WINDOWS_GUI, "yes|no", "show the tray icon"),
    ACCEPT, CONNECT, CLIENT, CERT, KEY, CA_FILE, CA_PATH, VERIFY_CHAIN, VERIFY_PEER, VERIFY,
    REQUIRE_CERT, CHECK_HOST, CHECK_IP, CHECK_EMAIL, SNI, SSL_VERSION, SSL_VERSION_MIN,
    SSL_VERSION_MAX, CIPHERS, CIPHERSUITES, CURVES, SECURITY_LEVEL, TLS_OPTIONS, RENEGOTIATION,
    TIMEOUT_BUSY, TIMEOUT_CLOSE, TIMEOUT_CONNECT, TIMEOUT_IDLE, FAILOVER, DELAY, SOCKET, LOG_ID,
    INCLUDE,
    _idle("stack", S, _integer(1, None), "BYTES", "65536", "thread stack size",
          "tlstunnel does not start a thread per connection"),
    _off("CAengine", S, NO_ENGINE, "ID", "load a trusted CA certificate from an engine", True),
    _off("engineId", S, NO_ENGINE, "ENGINE_ID", "engine holding this service's key"),
    _off("engineNum", S, NO_ENGINE, "NUMBER", "number of the engine holding the key"),
    _off("CRLfile", S, NOT_YET, "FILE", "certificate revocation lists"),
    _off("CRLpath", S, NOT_YET, "DIRECTORY", "folder of hashed revocation lists"),
    _off("OCSP", S, NOT_YET, "URL", "check certificates with this OCSP responder"),
    _off("OCSPaia", S, NOT_YET, "yes|no", "check certificates with the responders they name"),
    _off("OCSPflag", S, NOT_YET, "FLAG", "OCSP responder flag", True),
    _off("OCSPnonce", S, NOT_YET, "yes|no", "send and check an OCSP nonce"),
    _off("OCSPrequire", S, NOT_YET, "yes|no", "fail when no OCSP answer arrives"),
    _off("TIMEOUTocsp", S, NOT_YET, "SECONDS", "wait this long for an OCSP responder"),
    _off("PSKidentity", S, NOT_YET, "IDENTITY", "identity for pre-shared keys"),
    _off("PSKsecrets", S, NOT_YET, "FILE", "pre-shared key identities and keys"),
    _off("sessionCacheSize", S, NOT_YET, "NUMBER", "number of cached TLS sessions"),
    _off("sessionCacheTimeout", S, NOT_YET, "SECONDS", "keep cached TLS sessions this long"),
    _off("sessionResume", S, NOT_YET, "yes|no", "allow TLS session resumption"),
    _off("sessiond", S, NOT_YET, "HOST:PORT", "shared session cache server"),
    _off("ticketKeySecret", S, NOT_YET, "HEX", "key that encrypts session tickets"),
    _off("ticketMacSecret", S, NOT_YET, "HEX", "key that authenticates session tickets"),
    _off("redirect", S, NOT_YET, "[HOST:]PORT", "where clients failing verification go"),
    _off("libwrap", S, NOT_YET, "yes|no", "check /etc/hosts.allow and /etc/hosts.deny"),
    _off("ident", S, NOT_YET, "USERNAME", "check the client's IDENT (RFC 1413) user"),
    _off("exec", S, NOT_YET, "PATH", "run this program per connection instead of connect"),
    _off("execArgs", S, NOT_YET, "$0 $1 ...", "arguments for exec, starting with $0"),
    _off("pty", S, NOT_YET, "yes|no", "give the exec program a pseudo terminal"),
    _off("transparent", S, NOT_YET, "none|source|destination|both", "transparent proxying"),
    _off("local", S, NOT_YET, "HOST", "source address for outgoing connections"),
    _off("retry", S, NOT_YET, "yes|no", "restart the exec program when it exits"),
    _off("reset", S, NOT_YET, "yes|no", "close with TCP RST on errors"),
    _off("protocol", S, NOT_YET, "PROTOCOL", "negotiate an application protocol before TLS"),
    _off("protocolAuthentication", S, NOT_YET, "TYPE", "authentication type for protocol"),
    _off("protocolDomain", S, NOT_YET, "DOMAIN", "domain for protocol negotiation"),
    _off("protocolHeader", S, NOT_YET, "HEADER", "extra header for protocol negotiation"),
    _off("protocolHost", S, NOT_YET, "HOST:PORT", "host for protocol negotiation"),
    _off("protocolPassword", S, NOT_YET, "PASSWORD", "password for protocol negotiation"),
    _off("protocolUsername", S, NOT_YET, "USERNAME", "user name for protocol negotiation"),
    _off("config", S, NOT_YET, "COMMAND[:PARAMETER]", "a command for OpenSSL's SSL_CONF", True),
)

# fmt: on

_BY_KEY: dict[str, OptionSpec[Any]] = {spec.name.lower(): spec for spec in OPTIONS}


def lookup(name: str) -> OptionSpec[Any] | None:
    """The table row for ``name`` (any letter case), or None for an unknown option."""
    return _BY_KEY.get(name.lower())


def suggest(name: str) -> str | None:
    """The known option name closest to ``name``, if one is close enough to be a typo."""
    matches = difflib.get_close_matches(name.lower(), _BY_KEY, n=1, cutoff=0.7)
    return _BY_KEY[matches[0]].name if matches else None
