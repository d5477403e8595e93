"""The option table: every option stunnel 5.68 knows, and what tlstunnel does with it.

``OPTIONS`` is the single source of truth for option names, where each may be written
(``scope``), whether tlstunnel honours it (``status``), how its value is read
(``parser``), its default and a one-line help text.  ``build`` uses it to check and
convert values; ``-help`` and the README's option table are printed from it.

The parsers themselves live in ``values``.  Options with a status other than
"supported" are still listed, with the reason, so a stunnel file never meets a
silent surprise: "no effect" options are accepted with a notice, "refused" ones are
problems.
"""

from __future__ import annotations

import difflib
import enum
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from tlstunnel.config import values as v
from tlstunnel.config.model import Failover, Foreground, LogMode, Transparent
from tlstunnel.config.values import (
    BadValue,
    DebugLevel,
    TlsOptionChange,
    ValueParser,
    parse_address,
    parse_yes_no,
)

__all__ = [
    "OPTIONS",
    "BadValue",
    "DebugLevel",
    "OptionSpec",
    "Scope",
    "TlsOptionChange",
    "lookup",
    "parse_address",
    "parse_yes_no",
    "suggest",
]

T = TypeVar("T")

Status = Literal["supported", "no effect", "refused"]


class Scope(enum.Enum):
    """Where an option may be written."""

    GLOBAL = "global"  # only above the first [section]
    SERVICE = "service"  # in a [section]; above the first one it is a default for all
    BOTH = "both"  # means something in either place


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


# --- the table ------------------------------------------------------------------------

NOT_YET = "not supported yet"
NO_ENGINE = "Python's ssl module has no OpenSSL ENGINE support"
WINDOWS_GUI = "it only exists in stunnel's Windows GUI"
RANDOM_SEED = "OpenSSL seeds its own random generator"
G, S, B = Scope.GLOBAL, Scope.SERVICE, Scope.BOTH
VERSIONS = v.VERSIONS


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
_TRANSPARENT_MODES = {mode.value: mode for mode in Transparent}
_TRANSPARENT_MODES |= {"yes": Transparent.SOURCE, "no": Transparent.NONE}  # stunnel's old names

# The table proper.  Kept hand-aligned, one option per row or two, so it reads as a table.
# fmt: off

# Global options.
FOREGROUND = _on("foreground", G, v.choice(_FOREGROUND_MODES), "yes|quiet|no", "no",
                 "stay in the foreground; yes also logs to stderr")
PID = _on("pid", G, v.optional_path, "FILE", "none", "write the process id here; empty: no file")
OUTPUT = _on("output", G, v.absolute, "FILE", "none", "append log lines to this file")
LOG = _on("log", G, v.choice(_LOG_MODES), "append|overwrite", "append",
          "keep or empty the output file when opening it")
SYSLOG = _on("syslog", G, parse_yes_no, "yes|no", "yes", "also send log lines to syslog")
SETUID = _on("setuid", B, v.text, "USER", "",
             "global: become this user once the ports are bound; "
             "in a section: owner of its Unix accept socket")
SETGID = _on("setgid", B, v.text, "GROUP", "",
             "global: become this group once the ports are bound; "
             "in a section: group of its Unix accept socket")
CHROOT = _on("chroot", G, v.existing_folder("chroot"), "DIRECTORY", "none",
             "confine the process to this folder once the ports are bound (Unix)")
TIMEOUT_DRAIN = _on("TIMEOUTdrain", G, v.seconds, "SECONDS", "0",
                    "on stop, wait this long for open connections to finish; 0 closes them")
FIPS = _on("fips", G, v.fips, "no", "no", "FIPS 140 mode; only no is accepted")
SERVICE = _on("service", B, v.text, "NAME", "stunnel",
              "process name for syslog; names the service in inetd mode")
DEBUG = _on("debug", B, v.debug_level, "[FACILITY.]LEVEL", "daemon.notice",
            "log level 0-7 or emerg..debug; the global one is each service's default")
MAX_CONNECTIONS = _on("maxConnections", B, v.integer(1, None), "NUMBER", "no limit",
                      "global: cap on open connections in all; in a section: for that service")

# Service options; above the first [section] they are defaults for every service.
ACCEPT = _on("accept", S, v.accept_address, "[HOST:]PORT|/PATH",
             "none (required unless inetd or exec+connect)",
             "listen here; port 0 picks a free one; :::PORT is all IPv6 addresses; "
             "/PATH is a Unix socket", True)
CONNECT = _on("connect", S, v.connect_address, "[HOST:]PORT|/PATH",
              "none (required unless exec)",
              "forward connections here; several lines give failover", True)
EXEC = _on("exec", S, v.program, "PATH", "none",
           "run this program per connection, on its standard input and output; "
           "with connect: run it once and connect out for it")
EXEC_ARGS = _on("execArgs", S, v.argument_list, "$0 $1 ...", "the program's name",
                "arguments for exec, starting with $0; split on spaces, no quoting")
PTY = _on("pty", S, parse_yes_no, "yes|no", "no",
          "give the exec program a pseudo-terminal (Unix)")
RETRY = _on("retry", S, parse_yes_no, "yes|no", "no",
            "exec+connect: start the program again when it ends")
LOCAL = _on("local", S, v.host_or_ip, "HOST", "the outgoing interface's",
            "source address for outgoing connections")
RESET = _on("reset", S, parse_yes_no, "yes|no", "yes",
            "end a failed connection with a TCP reset instead of a normal close")
TRANSPARENT = _on("transparent", S, v.choice(_TRANSPARENT_MODES),
                  "none|source|destination|both", "none",
                  "source: connect out from the client's address; destination: connect to "
                  "the address the client dialled (Linux)")
CLIENT = _on("client", S, parse_yes_no, "yes|no", "no",
             "yes: take plaintext in, connect out with TLS")
CERT = _on("cert", S, v.readable_file("certificate"), "FILE", "none",
           "certificate chain (PEM); required in server mode")
KEY = _on("key", S, v.existing_file("key"), "FILE", "the cert file", "private key for cert")
CA_FILE = _on("CAfile", S, v.readable_file("CA"), "FILE", "none",
              "trusted certificates for verifyChain and verifyPeer")
CA_PATH = _on("CApath", S, v.existing_folder("CA"), "DIRECTORY", "none",
              "folder of hashed trusted certificates")
VERIFY_CHAIN = _on("verifyChain", S, parse_yes_no, "yes|no", "no",
                   "check the peer's certificate chain up to a trusted CA")
VERIFY_PEER = _on("verifyPeer", S, parse_yes_no, "yes|no", "no",
                  "accept only peer certificates found in CAfile or CApath")
VERIFY = _on("verify", S, v.choice({str(level): level for level in range(5)}), "0..4", "none",
             "legacy; 0 asks for no certificate (Python cannot ask and then ignore it)")
REQUIRE_CERT = _on("requireCert", S, parse_yes_no, "yes|no", "no (yes with verifyChain/Peer)",
                   "refuse peers that present no certificate")
CHECK_HOST = _on("checkHost", S, v.text, "HOST", "", "peer certificate must name this host", True)
CHECK_IP = _on("checkIP", S, v.ip_address, "IP", "", "peer certificate must name this IP", True)
CHECK_EMAIL = _on("checkEmail", S, v.text, "EMAIL", "",
                  "peer certificate must name this email address", True)
SNI = _on("sni", S, v.any_text, "SERVER_NAME", "the connect host name",
          "client mode: server name to send; empty sends none")
SSL_VERSION = _on("sslVersion", S, v.tls_version, VERSIONS, "", "allow only this TLS version")
SSL_VERSION_MIN = _on("sslVersionMin", S, v.tls_version, VERSIONS, "TLSv1.2",
                      "lowest TLS version; the default TLSv1.2 is tlstunnel's secure choice")
SSL_VERSION_MAX = _on("sslVersionMax", S, v.tls_version, VERSIONS, "all", "highest TLS version")
CIPHERS = _on("ciphers", S, v.text, "LIST", "OpenSSL's", "cipher list for TLS 1.2 and older")
CIPHERSUITES = _on("ciphersuites", S, v.text, "LIST", "OpenSSL's", "TLS 1.3 suites, best first")
CURVES = _on("curves", S, v.text, "LIST", "OpenSSL's", "key exchange groups, ':' between them")
SECURITY_LEVEL = _on("securityLevel", S, v.integer(0, 5), "0..5", "OpenSSL's",
                     "OpenSSL security level")
TLS_OPTIONS = _on("options", S, v.tls_option, "[-]NAME", "",
                  "set NAME or clear -NAME, an OpenSSL option without SSL_OP_", True)
RENEGOTIATION = _on("renegotiation", S, parse_yes_no, "yes|no", "yes",
                    "allow TLS 1.2 renegotiation")
TIMEOUT_BUSY = _on("TIMEOUTbusy", S, v.seconds, "SECONDS", "300", "wait this long for data")
TIMEOUT_CLOSE = _on("TIMEOUTclose", S, v.seconds, "SECONDS", "60",
                    "wait this long for close_notify")
TIMEOUT_CONNECT = _on("TIMEOUTconnect", S, v.seconds, "SECONDS", "10", "wait this long to connect")
TIMEOUT_IDLE = _on("TIMEOUTidle", S, v.seconds, "SECONDS", "43200", "close idle connections after")
FAILOVER = _on("failover", S, v.choice({"rr": Failover.RR, "prio": Failover.PRIO}), "rr|prio",
               "prio", "several connect lines: rr = round robin, prio = in order")
DELAY = _on("delay", S, parse_yes_no, "yes|no", "no", "look connect names up per connection")
SOCKET = _on("socket", S, v.socket_option, "a|l|r:OPTION=VALUE[:VALUE]", "",
             "socket option on the accept, local or remote socket", True)
LOG_ID = _on("logId", S, v.log_id, "sequential", "sequential", "connection id type in log lines")
# Protocol negotiation (tlstunnel.protocols).
PROTOCOL = _on("protocol", S, v.protocol_name,
               "smtp|pop3|imap|nntp|ldap|pgsql|connect|socks|proxy", "none",
               "speak this application protocol around the TLS handshake")
PROTOCOL_AUTHENTICATION = _on("protocolAuthentication", S, v.choice(
                                  {"basic": "basic", "ntlm": "ntlm", "plain": "plain",
                                   "login": "login"}),
                              "basic|plain|login", "basic (connect), plain (smtp)",
                              "how protocolUsername/protocolPassword are sent")
PROTOCOL_DOMAIN = _on("protocolDomain", S, v.text, "DOMAIN", "none",
                      "domain for protocol authentication")
PROTOCOL_HEADER = _on("protocolHeader", S, v.header_line, "NAME: VALUE", "none",
                      "connect: extra header line for the proxy", True)
PROTOCOL_HOST = _on("protocolHost", S, v.host_optional_port, "HOST[:PORT]", "none",
                    "connect: where the proxy should connect; smtp: the EHLO name; "
                    "socks client: the destination")
PROTOCOL_PASSWORD = _on("protocolPassword", S, v.any_text, "PASSWORD", "none",
                        "password for protocol authentication")
PROTOCOL_USERNAME = _on("protocolUsername", S, v.text, "USERNAME", "none",
                        "user name for protocol authentication")
PROXY_VERSION = _on("proxyVersion", S, v.choice({"1": 1, "2": 2}), "1|2", "1",
                    "protocol = proxy: PROXY header version sent to the backend")
SOCKS_ALLOW = _on("socksAllow", S, v.network, "NETWORK/PREFIX", "none",
                  "protocol = socks: also allow targets in this local network", True)
ACCEPT_PROXY = _on("acceptProxy", S, parse_yes_no, "yes|no", "no",
                   "clients start with a PROXY v1/v2 header naming the real client")
ACCEPT_PROXY_FROM = _on("acceptProxyFrom", S, v.network, "NETWORK/PREFIX", "anyone",
                        "acceptProxy: only these sources may send the header", True)
INCLUDE = _on("include", B, v.any_text, "DIRECTORY", "",
              "read every file of this folder here, in name order")

OPTIONS: tuple[OptionSpec[Any], ...] = (
    FOREGROUND, PID, OUTPUT, LOG, SYSLOG, SETUID, SETGID, CHROOT, TIMEOUT_DRAIN, FIPS, SERVICE,
    DEBUG, MAX_CONNECTIONS,
    _idle("RNDbytes", G, v.integer(0, None), "BYTES", "1024", "bytes to read from the seed file"),
    _idle("RNDfile", G, v.text, "FILE", "", "file to seed the random generator from"),
    _idle("RNDoverwrite", G, parse_yes_no, "yes|no", "yes", "rewrite the seed file afterwards"),
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
    ACCEPT, CONNECT, EXEC, EXEC_ARGS, PTY, RETRY, LOCAL, RESET, TRANSPARENT, CLIENT, CERT, KEY,
    CA_FILE, CA_PATH, VERIFY_CHAIN, VERIFY_PEER, VERIFY,
    REQUIRE_CERT, CHECK_HOST, CHECK_IP, CHECK_EMAIL, SNI, SSL_VERSION, SSL_VERSION_MIN,
    SSL_VERSION_MAX, CIPHERS, CIPHERSUITES, CURVES, SECURITY_LEVEL, TLS_OPTIONS, RENEGOTIATION,
    TIMEOUT_BUSY, TIMEOUT_CLOSE, TIMEOUT_CONNECT, TIMEOUT_IDLE, FAILOVER, DELAY, SOCKET, LOG_ID,
    INCLUDE,
    _idle("stack", S, v.integer(1, None), "BYTES", "65536", "thread stack size",
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
    PROTOCOL, PROTOCOL_AUTHENTICATION, PROTOCOL_DOMAIN, PROTOCOL_HEADER, PROTOCOL_HOST,
    PROTOCOL_PASSWORD, PROTOCOL_USERNAME, PROXY_VERSION, SOCKS_ALLOW, ACCEPT_PROXY,
    ACCEPT_PROXY_FROM,
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
