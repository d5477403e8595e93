"""The configuration model: frozen, typed dataclasses that the rest of tlstunnel reads.

Nothing here parses text or touches the network.  ``config.build`` turns the lexer's
tokens into these objects, resolving stunnel's shorthands on the way (legacy ``verify``
levels, ``sslVersion``, global defaults for services), so every consumer sees one
explicit value per setting and never has to know how it was spelled.
"""

from __future__ import annotations

import enum
import ssl
from dataclasses import dataclass, field


class Foreground(enum.Enum):
    """stunnel's ``foreground`` option: ``yes`` also logs to stderr, ``quiet`` does not."""

    NO = "no"
    YES = "yes"
    QUIET = "quiet"


class Failover(enum.Enum):
    """How a service picks among several ``connect`` addresses."""

    PRIO = "prio"  # try them in the order written
    RR = "rr"  # round robin: each new connection starts at the next address


class Transparent(enum.Enum):
    """stunnel's ``transparent`` option (Linux): whose address the proxied connection uses."""

    NONE = "none"
    SOURCE = "source"  # connect out from the client's own address (IP_TRANSPARENT)
    DESTINATION = "destination"  # connect to the address the client originally dialled
    BOTH = "both"


class LogMode(enum.Enum):
    """What happens to an existing ``output`` file when it is opened."""

    APPEND = "append"
    OVERWRITE = "overwrite"


@dataclass(frozen=True, slots=True)
class Location:
    """Where something was written: a file (or ``descriptor N``) and a 1-based line."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True, slots=True)
class Address:
    """An endpoint as written in ``accept`` or ``connect``: TCP, or a Unix socket.

    ``host`` is ``None`` when only a port was given: for ``accept`` that means every
    IPv4 address (stunnel's rule), for ``connect`` it means localhost.  IPv6 literals
    are stored without brackets (``::1``), names are kept unresolved.  A value that
    starts with ``/`` is a Unix domain socket: ``path`` holds it, ``host`` is None and
    ``port`` is 0.
    """

    host: str | None
    port: int
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        host = self.host if self.host is not None else "0.0.0.0"
        if ":" in host:
            return f"[{host}]:{self.port}"
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class LogLevel:
    """A syslog facility and level, as in ``debug = daemon.notice`` (level 0..7)."""

    level: int = 5
    facility: str = "daemon"


@dataclass(frozen=True, slots=True)
class SocketOption:
    """One ``socket = a|l|r:NAME=VALUE`` line.

    ``side`` is ``a`` (listening/accepted socket), ``l`` (local: the accepted client
    socket) or ``r`` (remote: the socket towards ``connect``).  ``value`` is an int, or
    a pair of ints for ``SO_LINGER`` and the time options, or a string for
    ``SO_BINDTODEVICE``.
    """

    side: str
    name: str
    value: int | tuple[int, int] | str


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """One ``[service]`` section (or the whole file in inetd style), fully resolved.

    Every field has the value stunnel would use, defaults included; tuples keep the
    order the options were written in, which matters for ``connect`` (failover order)
    and ``options`` (later lines win).
    """

    name: str
    location: Location
    client: bool = False
    accept: tuple[Address, ...] = ()
    connect: tuple[Address, ...] = ()
    failover: Failover = Failover.PRIO
    # delay = yes: resolve connect names per connection (we always do; with delay = no
    # the names are also checked once at start, so a typo fails the configuration).
    delay: bool = False
    socket_options: tuple[SocketOption, ...] = ()

    # Certificates and trust.  Paths are absolute (resolved against the config's folder).
    cert: str | None = None
    key: str | None = None
    ca_file: str | None = None
    ca_path: str | None = None
    verify_chain: bool = False
    verify_peer: bool = False
    # Server mode: refuse clients without a certificate.  Client mode: always true
    # when either verification is on (a TLS server always presents one).
    require_cert: bool = False
    check_host: tuple[str, ...] = ()
    check_ip: tuple[str, ...] = ()
    check_email: tuple[str, ...] = ()
    # Client mode SNI: None = stunnel's default (the connect host when it is a name),
    # "" = send no SNI at all.
    sni: str | None = None

    # Protocol versions and algorithms.  None means "the library default".
    min_version: ssl.TLSVersion | None = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion | None = None
    ciphers: str | None = None
    ciphersuites: str | None = None
    curves: str | None = None
    security_level: int | None = None
    # ``options = NAME`` / ``options = -NAME`` lines, names without the SSL_OP_ prefix.
    options_set: tuple[str, ...] = ()
    options_clear: tuple[str, ...] = ()

    # Deadlines in seconds.
    timeout_busy: float = 300.0
    timeout_close: float = 60.0
    timeout_connect: float = 10.0
    timeout_idle: float = 43200.0

    log_level: LogLevel = field(default_factory=LogLevel)

    # exec: run this program per connection (or, with connect too, once per tunnel)
    # and carry its standard input and output.  exec_args starts with $0; it defaults
    # to the program's base name.
    exec_path: str | None = None
    exec_args: tuple[str, ...] = ()
    pty: bool = False  # give the program a pseudo-terminal instead of a socket pair
    retry: bool = False  # exec + connect: start the program again after it ends
    local: str | None = None  # source address for outgoing connections (IP or name)
    reset: bool = True  # end failed connections with a TCP RST (stunnel's default)
    transparent: Transparent = Transparent.NONE
    max_connections: int | None = None  # this service's cap on open connections
    # setuid/setgid written in a section: owner and group of a Unix accept socket.
    socket_user: str | None = None
    socket_group: str | None = None

    # Server-mode sni = PRIMARY:PATTERN: this section is a virtual service of PRIMARY,
    # chosen during the handshake when the client's SNI matches one of the patterns.
    sni_primary: str | None = None
    sni_patterns: tuple[str, ...] = ()

    # Server mode: clients failing certificate authentication are connected here.
    redirect: tuple[Address, ...] = ()

    # protocol = NAME: an application protocol spoken around TLS (tlstunnel.protocols).
    protocol: str | None = None
    protocol_host: str | None = None  # protocolHost: host part
    protocol_port: int | None = None  # protocolHost: port part, when written
    protocol_username: str | None = None
    protocol_password: str | None = None
    protocol_authentication: str | None = None
    protocol_domain: str | None = None
    protocol_headers: tuple[str, ...] = ()
    proxy_version: int = 1  # protocol = proxy: PROXY header version
    socks_allow: tuple[str, ...] = ()  # protocol = socks: local networks allowed as targets
    # acceptProxy: each client starts with a PROXY v1/v2 header (from these sources only).
    accept_proxy: bool = False
    accept_proxy_from: tuple[str, ...] = ()

    # ALPN, identity rules and the policy hook (tls/alpn.py, tls/peer_acl.py, tls/policy.py).
    alpn: tuple[str, ...] = ()  # best first: selected from (server) or offered (client)
    allow_cn: tuple[str, ...] = ()
    allow_ou: tuple[str, ...] = ()
    allow_dns: tuple[str, ...] = ()
    allow_uri: tuple[str, ...] = ()  # patterns: * within a path segment, ** across
    allow_spki: tuple[bytes, ...] = ()  # SHA-256 digests of SubjectPublicKeyInfo
    policy: str | None = None  # package.module:function
    policy_folder: str | None = None  # the configuration's folder, also searched for it

    # TLS sessions and pre-shared keys (tls/sessions.py, tls/psk.py).  None: stunnel's
    # defaults (1000 entries, 300 s).  Secrets stay out of repr().
    session_cache_size: int | None = None  # 0: unlimited
    session_cache_timeout: float | None = None
    session_resume: bool = True
    ticket_key_secret: bytes | None = field(default=None, repr=False)
    ticket_mac_secret: bytes | None = field(default=None, repr=False)
    psk_secrets: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    psk_identity: str | None = None  # client mode; None: the file's first identity

    # Certificate revocation (tls/revocation.py, tls/ocsp.py); stunnel's defaults.
    crl_file: str | None = None
    crl_path: str | None = None
    ocsp_url: str | None = None  # http://HOST[:PORT]/PATH, asked about the peer's leaf
    ocsp_aia: bool = False  # also ask the responders each certificate's AIA names
    ocsp_flags: tuple[str, ...] = ()  # OCSPflag names (NOINTERN, NOSIGS, ...)
    ocsp_nonce: bool = False
    ocsp_require: bool = True  # refuse the peer when no conclusive answer arrives
    timeout_ocsp: float = 5.0  # the whole exchange with one responder

    # libwrap: TCP wrappers (net/hosts_access.py, net/libwrap.py); the daemon name is `name`.
    libwrap: bool = False
    hosts_allow: str = "/etc/hosts.allow"
    hosts_deny: str = "/etc/hosts.deny"


@dataclass(frozen=True, slots=True)
class GlobalConfig:
    """The options that only make sense once per process."""

    foreground: Foreground = Foreground.NO
    pid_file: str | None = None
    output: str | None = None
    log_mode: LogMode = LogMode.APPEND
    syslog: bool = True
    # Unix only: drop to this user/group after the listening sockets are bound.
    setuid: str | None = None
    setgid: str | None = None
    # The ``debug`` level written in the global section: it governs the process's own
    # lines ("ui" in stunnel's logs) and is the default for every service.
    log_level: LogLevel = field(default_factory=LogLevel)
    # The global ``service`` option: the name used for syslog, and the name of the one
    # service in inetd mode.
    service_name: str = "stunnel"
    # Unix only: confine the process to this folder once the ports are bound.
    chroot: str | None = None
    # The cap on open connections across every service.
    max_connections: int | None = None
    # On stop, wait up to this long for live connections to end before closing them.
    timeout_drain: float = 0.0
    # reload = watch|SECONDS: look this often for changed certificate files (None: never).
    reload_interval: float | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """A whole configuration: where it came from, its global part and its services."""

    source: str  # the file's absolute path, or "descriptor N" for -fd
    globals: GlobalConfig
    services: tuple[ServiceConfig, ...]
    # True when the file had no [section]: stunnel's inetd mode (one connection on stdio).
    inetd: bool = False
