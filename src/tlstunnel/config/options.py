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
RELOAD = _on("reload", G, v.reload_interval, "no|watch|SECONDS", "no",
             "reload certificates, keys, CAs and CRLs when their files change (watch: "
             "look every 2 s)")
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
# Identity rules and the policy hook (tls/peer_acl.py, tls/policy.py); need verifyChain/Peer.
ALLOW_CN = _on("allowCN", S, v.text, "NAME", "",
               "admit a peer whose certificate subject has this CN (any allow* line admits)", True)
ALLOW_OU = _on("allowOU", S, v.text, "NAME", "",
               "admit a peer whose certificate subject has this OU", True)
ALLOW_DNS = _on("allowDNS", S, v.text, "NAME", "",
                "admit a peer whose certificate has this DNS name (any case, no wildcards)", True)
ALLOW_URI = _on("allowURI", S, v.uri_pattern, "URI", "",
                "admit a peer whose certificate has a matching URI name; * matches within "
                "one path segment, ** across segments", True)
ALLOW_SPKI = _on("allowSPKI", S, v.spki_pin, "sha256:HEX|BASE64", "",
                 "admit a peer whose public key (DER SubjectPublicKeyInfo) has this SHA-256",
                 True)
POLICY = _on("policy", S, v.text, "MODULE:FUNCTION", "none",
             "Python function that admits (True) or refuses (False or a reason) each peer, "
             "after the allow* rules; runs on the event loop, so it must be quick")
SNI = _on("sni", S, v.any_text, "SERVER_NAME|SERVICE:PATTERN", "the connect host name",
          "client mode: server name to send, empty sends none; server mode: make this "
          "section a virtual service of SERVICE for names matching PATTERN", True)
ALPN = _on("alpn", S, v.alpn_list, "PROTOCOL[, PROTOCOL...]", "none",
           "ALPN, best first: server mode selects the first the client offers; "
           "client mode offers them; several lines add up", True)
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
SESSION_CACHE_SIZE = _on("sessionCacheSize", S, v.integer(0, None), "NUMBER", "1000",
                         "TLS sessions the server keeps for resumption; 0: no limit")
SESSION_CACHE_TIMEOUT = _on("sessionCacheTimeout", S, v.seconds, "SECONDS", "300",
                            "how long a session (cached, or in a ticket) can be resumed")
SESSION_RESUME = _on("sessionResume", S, parse_yes_no, "yes|no", "yes",
                     "no: every handshake is a full one (no cache, no tickets, "
                     "client mode offers no session)")
TICKET_KEY_SECRET = _on("ticketKeySecret", S, v.ticket_secret, "HEX", "random per start",
                        "server mode: session ticket encryption secret, 16 or 32 bytes; "
                        "with ticketMacSecret, tickets survive restarts and work across "
                        "instances")
TICKET_MAC_SECRET = _on("ticketMacSecret", S, v.ticket_secret, "HEX", "random per start",
                        "server mode: session ticket integrity secret, 16 or 32 bytes; "
                        "needs ticketKeySecret")
PSK_SECRETS = _on("PSKsecrets", S, v.psk_secrets, "FILE", "none",
                  "pre-shared keys, IDENTITY:KEY per line (Python >= 3.13); "
                  "a server with it needs no cert")
PSK_IDENTITY = _on("PSKidentity", S, v.text, "IDENTITY", "the file's first",
                   "client mode: which PSKsecrets identity to use")
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
REDIRECT = _on("redirect", S, v.connect_address, "[HOST:]PORT", "none",
                "server mode: send clients that fail certificate authentication here "
                "instead of connect", True)

# Protocol negotiation (tlstunnel.protocols).
PROTOCOL = _on("protocol", S, v.protocol_name,
               "smtp|pop3|imap|nntp|ldap|pgsql|connect|socks|proxy", "none",
               "speak this application protocol around the TLS handshake")
PROTOCOL_AUTHENTICATION = _on("protocolAuthentication", S, v.choice(
                                  {"basic": "basic", "ntlm": "ntlm", "plain": "plain",
                                   "login": "login"}),
                              "basic|plain|login", "basic (connect), plain (smtp)",
                              "how protocolUsername/protocolPassword are sent; "
                              "connect: basic only (ntlm is refused)")
PROTOCOL_DOMAIN = _on("protocolDomain", S, v.text, "DOMAIN", "none",
                      "domain for protocol authentication")
PROTOCOL_HEADER = _on("protocolHeader", S, v.header_line, "NAME: VALUE", "none",
                      "connect: extra header line for the proxy", True)
PROTOCOL_HOST = _on("protocolHost", S, v.host_optional_port, "HOST[:PORT]", "none",
                    "connect/socks client: HOST:PORT the proxy should connect to "
                    "(also the TLS server name); smtp: the EHLO name")
PROTOCOL_PASSWORD = _on("protocolPassword", S, v.any_text, "PASSWORD", "none",
                        "password for protocol authentication")
PROTOCOL_USERNAME = _on("protocolUsername", S, v.text, "USERNAME", "none",
                        "user name for protocol authentication")
PROXY_VERSION = _on("proxyVersion", S, v.choice({"1": 1, "2": 2}), "1|2", "1",
                    "protocol = proxy: the header sent to the backend; 1: stunnel's text "
                    "line, 2: binary, with SNI, ALPN, TLS version, cipher and client CN")
SOCKS_ALLOW = _on("socksAllow", S, v.network, "NETWORK/PREFIX", "none",
                  "protocol = socks or connect, server mode: also allow destinations in "
                  "this network (the tunnel host's own addresses are refused otherwise)", True)
ACCEPT_PROXY = _on("acceptProxy", S, parse_yes_no, "yes|no", "no",
                   "each connection starts with a PROXY v1/v2 header naming the real client "
                   "(from a load balancer); without acceptProxyFrom anyone may send one")
ACCEPT_PROXY_FROM = _on("acceptProxyFrom", S, v.network, "NETWORK/PREFIX", "anyone",
                        "acceptProxy: only these sources may send the header; others are "
                        "refused", True)
# Certificate revocation (CRLfile, CRLpath, OCSP*): tls/revocation.py and tls/ocsp.py.
CRL_FILE = _on("CRLfile", S, v.readable_file("CRL"), "FILE", "none",
               "revocation lists (PEM); with CRLs every CA of the peer's chain needs one")
CRL_PATH = _on("CRLpath", S, v.existing_folder("CRL"), "DIRECTORY", "none",
               "folder of revocation lists named HASH.r0 ('openssl rehash DIRECTORY')")
OCSP_URL = _on("OCSP", S, v.ocsp_url, "URL", "none",
               "ask this http:// OCSP responder about the peer's certificate (needs verifyChain)")
OCSP_AIA = _on("OCSPaia", S, parse_yes_no, "yes|no", "no",
               "ask the OCSP responders each certificate names (Authority Information Access)")
OCSP_FLAG = _on("OCSPflag", S, v.ocsp_flag, "FLAG", "",
                "relax a check on OCSP responses (NOINTERN, NOSIGS, NOCHAIN, NOVERIFY, "
                "NOEXPLICIT, NOCASIGN, NODELEGATED, NOCHECKS, TRUSTOTHER, NOTIME)", True)
OCSP_NONCE = _on("OCSPnonce", S, parse_yes_no, "yes|no", "no",
                 "send a nonce and require the responder to return it")
OCSP_REQUIRE = _on("OCSPrequire", S, parse_yes_no, "yes|no", "yes",
                   "refuse the peer when no conclusive OCSP answer arrives")
TIMEOUT_OCSP = _on("TIMEOUTocsp", S, v.seconds, "SECONDS", "5",
                   "wait this long for each OCSP responder (connect, send and answer)")
# TCP wrappers without the C library (net/hosts_access.py, net/libwrap.py).
LIBWRAP = _on("libwrap", S, parse_yes_no, "yes|no", "no",
              "check each client against hostsAllow and hostsDeny (hosts_access(5)) before "
              "any TLS work; the daemon name is the service name; files re-read when changed")
HOSTS_ALLOW = _on("hostsAllow", S, v.absolute, "FILE", "/etc/hosts.allow",
                  "libwrap: the allow table; a missing file has no rules")
HOSTS_DENY = _on("hostsDeny", S, v.absolute, "FILE", "/etc/hosts.deny",
                 "libwrap: the deny table; a missing file has no rules")
INCLUDE = _on("include", B, v.any_text, "DIRECTORY", "",
              "read every file of this folder here, in name order")

OPTIONS: tuple[OptionSpec[Any], ...] = (
    FOREGROUND, PID, OUTPUT, LOG, SYSLOG, SETUID, SETGID, CHROOT, TIMEOUT_DRAIN, RELOAD, FIPS,
    SERVICE,
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
    REQUIRE_CERT, CHECK_HOST, CHECK_IP, CHECK_EMAIL, ALLOW_CN, ALLOW_OU, ALLOW_DNS, ALLOW_URI,
    ALLOW_SPKI, POLICY, SNI, ALPN, SSL_VERSION, SSL_VERSION_MIN,
    SSL_VERSION_MAX, CIPHERS, CIPHERSUITES, CURVES, SECURITY_LEVEL, TLS_OPTIONS, RENEGOTIATION,
    TIMEOUT_BUSY, TIMEOUT_CLOSE, TIMEOUT_CONNECT, TIMEOUT_IDLE, FAILOVER, DELAY, SOCKET, LOG_ID,
    INCLUDE,
    _idle("stack", S, v.integer(1, None), "BYTES", "65536", "thread stack size",
          "tlstunnel does not start a thread per connection"),
    _off("CAengine", S, NO_ENGINE, "ID", "load a trusted CA certificate from an engine", True),
    _off("engineId", S, NO_ENGINE, "ENGINE_ID", "engine holding this service's key"),
    _off("engineNum", S, NO_ENGINE, "NUMBER", "number of the engine holding the key"),
    CRL_FILE, CRL_PATH, OCSP_URL, OCSP_AIA, OCSP_FLAG, OCSP_NONCE, OCSP_REQUIRE, TIMEOUT_OCSP,
    SESSION_CACHE_SIZE, SESSION_CACHE_TIMEOUT, SESSION_RESUME, TICKET_KEY_SECRET,
    TICKET_MAC_SECRET, PSK_SECRETS, PSK_IDENTITY,
    _off("sessiond", S, "tlstunnel has no shared session cache daemon; set the same "
         "ticketKeySecret and ticketMacSecret on every instance to resume sessions across "
         "them", "HOST:PORT", "shared session cache server"),
    REDIRECT,
    LIBWRAP, HOSTS_ALLOW, HOSTS_DENY,
    _off("ident", S, "IDENT (RFC 1413) answers come from the client's own host and prove "
         "nothing; use client certificates (allowCN, checkHost) or libwrap instead",
         "USERNAME", "check the client's IDENT (RFC 1413) user"),
    PROTOCOL, PROTOCOL_AUTHENTICATION, PROTOCOL_DOMAIN, PROTOCOL_HEADER, PROTOCOL_HOST,
    PROTOCOL_PASSWORD, PROTOCOL_USERNAME, PROXY_VERSION, SOCKS_ALLOW, ACCEPT_PROXY,
    ACCEPT_PROXY_FROM,
    _off("config", S, "Python's ssl module cannot pass commands to OpenSSL's SSL_CONF; use "
         "the matching tlstunnel option (ciphers, curves, options, sslVersionMin...)",
         "COMMAND[:PARAMETER]", "a command for OpenSSL's SSL_CONF", True),
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
