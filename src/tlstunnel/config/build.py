"""Building the model: lexer tokens in, a frozen ``Config`` (or every problem) out.

This module owns the rules that tie options together; the option table in ``options``
owns what each single value may be.  The work happens in three passes:

1. *check*: every ``name = value`` line is looked up in the table, refused if the
   option is refused or written in the wrong section, and its value parsed.  A bad
   line becomes a ``Problem`` and is dropped; "no effect" options become notices.
2. *resolve*: service options written above the first ``[section]`` are defaults for
   every service.  A service's own lines for an option replace the default entirely
   (for repeatable options too: a service with its own ``connect`` ignores the
   global ones).  Within one section a later line of a single-valued option wins.
3. *build*: each service's values are turned into one explicit ``ServiceConfig``:
   stunnel's shorthands (``verify`` levels, ``sslVersion``, ``renegotiation``) are
   expanded, and the cross-option rules (a server needs ``cert``, verification needs
   CAfile or CApath, ...) are checked.

Problems never stop the work: every pass keeps going so ``ConfigError`` lists all of
them at once.  An option whose line was rejected is remembered as "failed", so a bad
``connect`` does not also produce "connect is missing".

A file with no ``[section]`` at all is stunnel's inetd mode: the global section is
the one service, named by the global ``service`` option.

Options that mean something in both places but differently (``setuid``/``setgid``:
privileges globally, a Unix socket's owner in a section; ``maxConnections``: the
process's cap globally, the service's in a section) are not inherited as defaults.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tlstunnel.config import options as opt
from tlstunnel.config.errors import ConfigError, Problem
from tlstunnel.config.lexer import (
    Setting,
    Token,
    decode_lines,
    read_file_lines,
    read_numbered_lines,
    read_tokens,
    split_sections,
)
from tlstunnel.config.model import (
    Config,
    Failover,
    Foreground,
    GlobalConfig,
    Location,
    LogLevel,
    LogMode,
    ServiceConfig,
)
from tlstunnel.config.options import BadValue, Scope
from tlstunnel.config.sections import Entry, SectionValues
from tlstunnel.config.shape import ServiceShape

T = TypeVar("T")

DEFAULT_MIN_VERSION = ssl.TLSVersion.TLSv1_2
NO_RENEGOTIATION = "NO_RENEGOTIATION"
# Legacy ``verify`` levels as (verify_chain, verify_peer, require_cert).  Level 0 asks
# stunnel to request a certificate and ignore it; Python's ssl module cannot ask without
# checking, so 0 requests none at all (a notice says so in server mode).
VERIFY_LEVELS: dict[int, tuple[bool, bool, bool]] = {
    0: (False, False, False),
    1: (True, False, False),  # verify the certificate if the peer sends one
    2: (True, False, True),
    3: (True, True, True),
    4: (False, True, True),  # trust only certificates in CAfile/CApath, ignore the chain
}
VERSION_NAMES = {
    ssl.TLSVersion.TLSv1: "TLSv1",
    ssl.TLSVersion.TLSv1_1: "TLSv1.1",
    ssl.TLSVersion.TLSv1_2: "TLSv1.2",
    ssl.TLSVersion.TLSv1_3: "TLSv1.3",
}


@dataclass(frozen=True, slots=True)
class LoadResult:
    """A loaded configuration and the notices the caller should log once.

    Notices are about lines that load fine but do nothing here ("RNDfile has no
    effect: ..."); they are not part of ``Config`` so reloading the same file yields
    an equal ``Config``.
    """

    config: Config
    notices: tuple[str, ...] = ()


def load_file(path: str) -> LoadResult:
    """Load the configuration file at ``path``; relative paths in it are resolved
    against its folder.  Raises ``ConfigError`` listing every problem."""
    source = os.path.abspath(path)
    problems: list[Problem] = []
    lines = read_file_lines(source, problems)
    if lines is None:
        raise ConfigError(problems)
    tokens = read_numbered_lines(lines, source, os.path.dirname(source), problems)
    return _build(tokens, source, problems)


def load_fd(fd: int) -> LoadResult:
    """Load a configuration read to its end from file descriptor ``fd`` (stunnel's
    ``-fd N``), named ``descriptor N`` in messages.  The descriptor is left open and
    relative paths are resolved against the current directory."""
    source = f"descriptor {fd}"
    try:
        with open(fd, "rb", closefd=False) as stream:
            data = stream.read()
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(
            [Problem(source, 0, "", f"cannot read the configuration: {reason}")]
        ) from error
    problems: list[Problem] = []
    lines = decode_lines(data, source, problems)
    tokens = read_numbered_lines(lines, source, os.getcwd(), problems)
    return _build(tokens, source, problems)


def load_text(text: str, source: str, base_dir: str) -> LoadResult:
    """Load configuration ``text``, named ``source`` in messages, with relative paths
    (and includes) resolved against ``base_dir``."""
    problems: list[Problem] = []
    tokens = read_tokens(text, source, os.path.abspath(base_dir), problems)
    return _build(tokens, source, problems)


class _Builder(ServiceShape):
    """Checks lines and builds the model, collecting problems and notices."""

    # --- pass 1: check each line ------------------------------------------------------

    def check(self, settings: Iterable[Setting], in_service: bool) -> SectionValues:
        values = SectionValues()
        for setting in settings:
            entry = self._check_line(setting, in_service)
            if entry is None:
                spec = opt.lookup(setting.name)
                if spec is not None:
                    values.failed.add(spec.name)
            else:
                values.entries.append(entry)
        return values

    def _check_line(self, setting: Setting, in_service: bool) -> Entry | None:
        name = setting.name
        spec = opt.lookup(name)
        if spec is None:
            close = opt.suggest(name)
            hint = f"; did you mean {close!r}?" if close else "; see -help for the full list"
            self.problem(setting, name, f"unknown option {name!r}{hint}")
            return None
        if spec.status == "refused":
            if spec.reason == opt.NOT_YET:
                message = f"{spec.name} is not supported yet; remove the line"
            else:
                message = f"{spec.name} is not supported: {spec.reason}; remove the line"
            self.problem(setting, name, message)
            return None
        if in_service and spec.scope is Scope.GLOBAL:
            hint = spec.misplaced_hint or "move it above the first [section]"
            self.problem(setting, name, f"{spec.name} is a global option; {hint}")
            return None
        try:
            value = spec.parse(setting.value, setting.base_dir)
        except BadValue as error:
            self.problem(setting, name, str(error))
            return None
        if in_service and isinstance(value, opt.DebugLevel) and value.facility is not None:
            self.problem(
                setting,
                name,
                "a syslog facility applies to the whole process, so it can only be set above "
                f"the first [section]; write just the level here (debug = {value.level})",
            )
            return None
        if spec.status == "no effect":
            self.notices.append(f"{setting.location}: {name} has no effect: {spec.reason}")
        elif in_service and spec is opt.SERVICE:
            self.notices.append(
                f"{setting.location}: {name} has no effect in a service section; "
                "it names the process, so put it above the first [section]"
            )
        return Entry(spec, value, setting)

    # --- pass 3: build the model ------------------------------------------------------

    def build_globals(self, values: SectionValues) -> GlobalConfig:
        debug = values.get(opt.DEBUG)
        log_level = LogLevel(debug.level, debug.facility or "daemon") if debug else LogLevel()
        return GlobalConfig(
            foreground=values.get_or(opt.FOREGROUND, Foreground.NO),
            pid_file=values.get(opt.PID),
            output=values.get(opt.OUTPUT),
            log_mode=values.get_or(opt.LOG, LogMode.APPEND),
            syslog=values.get_or(opt.SYSLOG, True),
            setuid=values.get(opt.SETUID),
            setgid=values.get(opt.SETGID),
            log_level=log_level,
            service_name=values.get_or(opt.SERVICE, "stunnel"),
            chroot=self.unix_only(values, opt.CHROOT),
            max_connections=values.get(opt.MAX_CONNECTIONS),
            timeout_drain=values.get_or(opt.TIMEOUT_DRAIN, 0.0),
        )

    def build_service(
        self,
        name: str,
        location: Location,
        values: SectionValues,
        globals_config: GlobalConfig,
        inetd: bool,
    ) -> ServiceConfig:
        global_level = globals_config.log_level
        where = "inetd mode (no [section] in the file)" if inetd else f"service [{name}]"
        client = values.get_or(opt.CLIENT, False)
        accept = values.every(opt.ACCEPT)
        connect = values.every(opt.CONNECT)
        transparent = self.transparent(values)
        exec_path = values.get(opt.EXEC)
        self.endpoints(values, location, where, inetd, transparent)
        exec_args = self.exec_arguments(values, location, globals_config.chroot)
        pty = self.unix_only(values, opt.PTY)
        cert = values.get(opt.CERT)
        if not client and cert is None and opt.CERT.name not in values.failed:
            self.problem(
                location,
                "",
                f"{where}: TLS server needs a certificate; add cert = FILE "
                "(or client = yes if this service connects out to a TLS server)",
            )
        verify_chain, verify_peer, require_cert = self._verification(values, client, location)
        min_version, max_version = self._versions(values)
        options_set, options_clear = self._tls_options(values)
        own_debug = values.get(opt.DEBUG)
        return ServiceConfig(
            name=name,
            location=location,
            client=client,
            accept=accept,
            connect=connect,
            failover=values.get_or(opt.FAILOVER, Failover.PRIO),
            delay=values.get_or(opt.DELAY, False),
            socket_options=values.every(opt.SOCKET),
            cert=cert,
            key=values.get(opt.KEY) or cert,
            ca_file=values.get(opt.CA_FILE),
            ca_path=values.get(opt.CA_PATH),
            verify_chain=verify_chain,
            verify_peer=verify_peer,
            require_cert=require_cert,
            check_host=values.every(opt.CHECK_HOST),
            check_ip=values.every(opt.CHECK_IP),
            check_email=values.every(opt.CHECK_EMAIL),
            sni=self._sni(values, client),
            min_version=min_version,
            max_version=max_version,
            ciphers=values.get(opt.CIPHERS),
            ciphersuites=values.get(opt.CIPHERSUITES),
            curves=values.get(opt.CURVES),
            security_level=values.get(opt.SECURITY_LEVEL),
            options_set=options_set,
            options_clear=options_clear,
            timeout_busy=values.get_or(opt.TIMEOUT_BUSY, 300.0),
            timeout_close=values.get_or(opt.TIMEOUT_CLOSE, 60.0),
            timeout_connect=values.get_or(opt.TIMEOUT_CONNECT, 10.0),
            timeout_idle=values.get_or(opt.TIMEOUT_IDLE, 43200.0),
            log_level=LogLevel(own_debug.level, global_level.facility)
            if own_debug
            else global_level,
            exec_path=exec_path,
            exec_args=exec_args,
            pty=pty is True,
            retry=values.get_or(opt.RETRY, False),
            local=values.get(opt.LOCAL),
            reset=values.get_or(opt.RESET, True),
            transparent=transparent,
            # In inetd mode these lines are the global ones (the process's cap, privileges).
            max_connections=None if inetd else values.get(opt.MAX_CONNECTIONS),
            socket_user=None if inetd else self.socket_owner(values, opt.SETUID),
            socket_group=None if inetd else self.socket_owner(values, opt.SETGID),
            **self._protocol_fields(values, client, location, where),
        )

    def _protocol_fields(
        self, values: SectionValues, client: bool, location: Location, where: str
    ) -> dict[str, Any]:
        """``protocol`` and its ``protocol*`` companions, checked against the mode."""
        protocol = values.get(opt.PROTOCOL)
        if protocol is not None:
            from tlstunnel.protocols import negotiator_class

            if negotiator_class(protocol, client) is None:
                line = values.where(opt.PROTOCOL)
                mode, other = ("client", "server") if client else ("server", "client")
                self.problem(
                    line or location,
                    opt.PROTOCOL.name,
                    f"{where}: protocol = {protocol} has no {mode} mode (stunnel has only "
                    f"the {other} side of it); use client = {'no' if client else 'yes'} "
                    "or another protocol",
                )
        host = values.get(opt.PROTOCOL_HOST)
        return {
            "protocol": protocol,
            "protocol_host": host[0] if host else None,
            "protocol_port": host[1] if host else None,
            "protocol_username": values.get(opt.PROTOCOL_USERNAME),
            "protocol_password": values.get(opt.PROTOCOL_PASSWORD),
            "protocol_authentication": values.get(opt.PROTOCOL_AUTHENTICATION),
            "protocol_domain": values.get(opt.PROTOCOL_DOMAIN),
            "protocol_headers": values.every(opt.PROTOCOL_HEADER),
            "proxy_version": values.get_or(opt.PROXY_VERSION, 1),
            "socks_allow": values.every(opt.SOCKS_ALLOW),
            "accept_proxy": values.get_or(opt.ACCEPT_PROXY, False),
            "accept_proxy_from": values.every(opt.ACCEPT_PROXY_FROM),
        }

    def _verification(
        self, values: SectionValues, client: bool, location: Location
    ) -> tuple[bool, bool, bool]:
        """Expand ``verify``, ``verifyChain``, ``verifyPeer`` and ``requireCert``."""
        level = values.get(opt.VERIFY)
        chain, peer, require = VERIFY_LEVELS[level] if level is not None else (False,) * 3
        if level == 0 and not client:
            line = values.where(opt.VERIFY)
            self.notices.append(
                f"{line.location if line else location}: verify = 0 requests no client "
                "certificate: Python's ssl module cannot request one and then ignore it"
            )
        explicit_chain = values.get(opt.VERIFY_CHAIN)
        explicit_peer = values.get(opt.VERIFY_PEER)
        chain = chain if explicit_chain is None else explicit_chain
        peer = peer if explicit_peer is None else explicit_peer
        if explicit_chain or explicit_peer:
            require = True  # stunnel: verifyChain/verifyPeer = yes imply requireCert = yes
        require = values.get_or(opt.REQUIRE_CERT, require)
        if client and (chain or peer):
            require = True  # a TLS server always presents a certificate
        trust_failed = {opt.CA_FILE.name, opt.CA_PATH.name} & values.failed
        has_trust = values.get(opt.CA_FILE) or values.get(opt.CA_PATH)
        if (chain or peer) and not has_trust and not trust_failed:
            # Point at the line that turned verification on.
            if explicit_chain:
                line = values.where(opt.VERIFY_CHAIN)
            elif explicit_peer:
                line = values.where(opt.VERIFY_PEER)
            else:
                line = values.where(opt.VERIFY)
            written = line.name if line else "verification"
            self.problem(
                line or location,
                written,
                f"{written} needs CAfile = FILE or CApath = DIRECTORY: the certificates to trust",
            )
        return chain, peer, require

    def _versions(
        self, values: SectionValues
    ) -> tuple[ssl.TLSVersion | None, ssl.TLSVersion | None]:
        """Apply ``sslVersion``, ``sslVersionMin`` and ``sslVersionMax`` in written order."""
        version_names = {opt.SSL_VERSION.name, opt.SSL_VERSION_MIN.name, opt.SSL_VERSION_MAX.name}
        lowest: ssl.TLSVersion | None = DEFAULT_MIN_VERSION
        highest: ssl.TLSVersion | None = None
        lowest_written = False
        last: Setting | None = None
        for entry in values.entries:
            if entry.spec.name not in version_names:
                continue
            last = entry.setting
            if entry.spec is not opt.SSL_VERSION_MAX:
                lowest, lowest_written = entry.value, True
            if entry.spec is not opt.SSL_VERSION_MIN:
                highest = entry.value
        if last is not None and lowest is not None and highest is not None and lowest > highest:
            low, high = VERSION_NAMES[lowest], VERSION_NAMES[highest]
            if lowest_written:
                message = f"the lowest TLS version ({low}) is above the highest ({high}); swap them"
            else:
                message = (
                    f"{high} is below tlstunnel's default minimum {low}; "
                    f"add sslVersionMin = {high} to allow it"
                )
            self.problem(last, last.name, message)
        return lowest, highest

    def _tls_options(self, values: SectionValues) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Fold ``options`` lines and ``renegotiation`` into (names to set, names to clear)."""
        to_set: list[str] = []
        to_clear: list[str] = []

        def change(name: str, enable: bool) -> None:
            for names in (to_set, to_clear):
                if name in names:
                    names.remove(name)
            (to_set if enable else to_clear).append(name)

        for option in values.every(opt.TLS_OPTIONS):
            change(option.name, option.enable)
        renegotiation = values.get(opt.RENEGOTIATION)
        if renegotiation is not None:
            change(NO_RENEGOTIATION, not renegotiation)
        return tuple(to_set), tuple(to_clear)

    def _sni(self, values: SectionValues, client: bool) -> str | None:
        sni = values.get(opt.SNI)
        line = values.where(opt.SNI)
        if sni is not None and not client and line is not None:
            self.problem(
                line,
                line.name,
                "in server mode sni = SERVICE:PATTERN makes a virtual service, which is not "
                "supported yet; remove the line (in client mode it sets the name to send)",
            )
            return None
        return sni


def _build(tokens: Sequence[Token], source: str, problems: list[Problem]) -> LoadResult:
    """Turn tokens into a ``LoadResult``; raise ``ConfigError`` if anything was wrong."""
    builder = _Builder(problems)
    layout = split_sections(tuple(tokens))
    global_values = builder.check(layout.global_settings, in_service=False)
    globals_config = builder.build_globals(global_values)
    services: list[ServiceConfig] = []
    inetd = not layout.sections
    if inetd:
        # The whole file is the service; problems about it point at its first line.
        location = Location(source, 1)
        services.append(
            builder.build_service(
                globals_config.service_name,
                location,
                global_values,
                globals_config,
                inetd=True,
            )
        )
    seen: dict[str, Location] = {}
    for section in layout.sections:
        own_values = builder.check(section.settings, in_service=True)
        if section.name in seen:
            builder.problem(
                section.location,
                "",
                f"service [{section.name}] is already defined at {seen[section.name]}; "
                "give each section its own name",
            )
            continue
        seen[section.name] = section.location
        values = own_values.with_defaults(global_values)
        services.append(
            builder.build_service(
                section.name, section.location, values, globals_config, inetd=False
            )
        )
    if problems:
        # A default written above the first [section] is checked once per service;
        # report each of its problems once.
        raise ConfigError(list(dict.fromkeys(problems)))
    config = Config(source, globals_config, tuple(services), inetd=inetd)
    return LoadResult(config, tuple(dict.fromkeys(builder.notices)))
