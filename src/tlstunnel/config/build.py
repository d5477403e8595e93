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
    Address,
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
            reload_interval=values.get(opt.RELOAD),
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
        has_psk = values.get(opt.PSK_SECRETS) is not None or opt.PSK_SECRETS.name in values.failed
        if not client and cert is None and opt.CERT.name not in values.failed and not has_psk:
            self.problem(
                location,
                "",
                f"{where}: TLS server needs a certificate; add cert = FILE "
                "(or PSKsecrets = FILE for pre-shared keys only, "
                "or client = yes if this service connects out to a TLS server)",
            )
        verify_chain, verify_peer, require_cert = self._verification(values, client, location)
        min_version, max_version = self._versions(values)
        options_set, options_clear = self._tls_options(values)
        own_debug = values.get(opt.DEBUG)
        primary, patterns = self._virtual_service(values, client)
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
            sni_primary=primary,
            sni_patterns=patterns,
            redirect=self._redirect(values, client, verify_chain or verify_peer),
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
            **self._peer_identity_fields(values, verify_chain or verify_peer),
            **self._session_and_psk_fields(values, client),
            **self._revocation_fields(values, verify_chain, verify_peer, where),
            **self._libwrap_fields(values),
        )

    def _libwrap_fields(self, values: SectionValues) -> dict[str, Any]:
        """``libwrap`` and the tables it reads (net/libwrap.py).  The files need not
        exist (a missing table has no rules, as in libwrap); a table path written
        without ``libwrap = yes`` does nothing, which a notice says."""
        libwrap = values.get_or(opt.LIBWRAP, False)
        if not libwrap:
            for spec in (opt.HOSTS_ALLOW, opt.HOSTS_DENY):
                line = values.where(spec)
                if line is not None:
                    self.notices.append(
                        f"{line.location}: {line.name} has no effect without libwrap = yes"
                    )
        return {
            "libwrap": libwrap,
            "hosts_allow": values.get_or(opt.HOSTS_ALLOW, "/etc/hosts.allow"),
            "hosts_deny": values.get_or(opt.HOSTS_DENY, "/etc/hosts.deny"),
        }

    def _revocation_fields(
        self, values: SectionValues, verify_chain: bool, verify_peer: bool, where: str
    ) -> dict[str, Any]:
        """CRLfile/CRLpath and the OCSP options (see tls/revocation.py and tls/ocsp.py).

        CRLs are checked by OpenSSL while it verifies, so they need verifyChain or
        verifyPeer; OCSP runs on the chain OpenSSL verified, so it needs verifyChain
        (stunnel silently skips it otherwise: here that is a problem, not a surprise).
        OCSP needs the cryptography package; the companions of OCSP do nothing alone."""
        from tlstunnel.tls.revocation import ocsp_support_missing

        for spec in (opt.CRL_FILE, opt.CRL_PATH):
            line = values.where(spec)
            if line is not None and not (verify_chain or verify_peer):
                self.problem(
                    line,
                    line.name,
                    f'{spec.name} needs "verifyChain" or "verifyPeer": revocation lists are '
                    "only read while a peer certificate is verified",
                )
        asking = [line for line in (values.where(opt.OCSP_URL),) if line is not None]
        aia_line = values.where(opt.OCSP_AIA)
        if aia_line is not None and values.get(opt.OCSP_AIA):
            asking.append(aia_line)
        for line in asking:
            if not verify_chain:
                self.problem(
                    line,
                    line.name,
                    f'{line.name} needs "verifyChain = yes": OCSP is asked about the chain '
                    "OpenSSL verified (stunnel skips it otherwise)",
                )
            missing = ocsp_support_missing()
            if missing:
                self.problem(line, line.name, missing)
        if not asking:
            companions: tuple[opt.OptionSpec[Any], ...] = (
                opt.OCSP_FLAG, opt.OCSP_NONCE, opt.OCSP_REQUIRE, opt.TIMEOUT_OCSP,
            )  # fmt: skip
            for companion in companions:
                line = values.where(companion)
                if line is not None:
                    self.notices.append(
                        f"{line.location}: {companion.name} has no effect in {where}: "
                        "it needs OCSP = URL or OCSPaia = yes"
                    )
        return {
            "crl_file": values.get(opt.CRL_FILE),
            "crl_path": values.get(opt.CRL_PATH),
            "ocsp_url": values.get(opt.OCSP_URL),
            "ocsp_aia": values.get_or(opt.OCSP_AIA, False),
            "ocsp_flags": tuple(dict.fromkeys(values.every(opt.OCSP_FLAG))),
            "ocsp_nonce": values.get_or(opt.OCSP_NONCE, False),
            "ocsp_require": values.get_or(opt.OCSP_REQUIRE, True),
            "timeout_ocsp": values.get_or(opt.TIMEOUT_OCSP, 5.0),
        }

    def _session_and_psk_fields(self, values: SectionValues, client: bool) -> dict[str, Any]:
        """Session options (tls/sessions.py) and pre-shared keys (tls/psk.py).

        The session options need OpenSSL calls Python has no API for (tls/libssl.py);
        where those cannot be reached the options are refused, never ignored.  The ticket
        secrets come as a pair and mean something to a server only."""
        from tlstunnel.tls import libssl

        session_specs = (
            opt.SESSION_CACHE_SIZE,
            opt.SESSION_CACHE_TIMEOUT,
            opt.TICKET_KEY_SECRET,
            opt.TICKET_MAC_SECRET,
        )
        resume = values.get_or(opt.SESSION_RESUME, True)
        needs_libssl: list[opt.OptionSpec[Any]] = [
            spec for spec in session_specs if values.where(spec) is not None
        ]
        if not resume and not client:
            needs_libssl.append(opt.SESSION_RESUME)  # client mode needs no OpenSSL call
        if needs_libssl and not libssl.available():
            for spec in needs_libssl:
                line = values.where(spec)
                if line is not None:
                    self.problem(
                        line, line.name, f"cannot be honoured here: {libssl.unavailable_reason()}"
                    )
        key_secret = values.get(opt.TICKET_KEY_SECRET)
        mac_secret = values.get(opt.TICKET_MAC_SECRET)
        for spec, other in (
            (opt.TICKET_KEY_SECRET, opt.TICKET_MAC_SECRET),
            (opt.TICKET_MAC_SECRET, opt.TICKET_KEY_SECRET),
        ):
            line = values.where(spec)
            if line is None:
                continue
            if client:
                self.problem(line, line.name, f"{spec.name} only works in server mode")
            elif values.get(other) is None and other.name not in values.failed:
                self.problem(
                    line, line.name, f"{spec.name} needs {other.name} too: set both or neither"
                )
        secrets = values.get(opt.PSK_SECRETS) or ()
        identity = values.get(opt.PSK_IDENTITY)
        identity_line = values.where(opt.PSK_IDENTITY)
        if identity_line is not None and opt.PSK_SECRETS.name not in values.failed:
            if not secrets:
                self.problem(
                    identity_line, identity_line.name, "PSKidentity needs PSKsecrets = FILE"
                )
            elif not client:
                self.notices.append(
                    f"{identity_line.location}: PSKidentity has no effect in server mode "
                    "(the client's identity picks the key)"
                )
            elif identity not in dict(secrets):
                self.problem(
                    identity_line,
                    identity_line.name,
                    f"no identity {identity!r} in the PSKsecrets file "
                    f"(it has {', '.join(repr(name) for name, _key in secrets)})",
                )
        self._warn_if_public(values)
        return {
            "session_cache_size": values.get(opt.SESSION_CACHE_SIZE),
            "session_cache_timeout": values.get(opt.SESSION_CACHE_TIMEOUT),
            "session_resume": resume,
            "ticket_key_secret": key_secret,
            "ticket_mac_secret": mac_secret,
            "psk_secrets": secrets,
            "psk_identity": identity,
        }

    def _warn_if_public(self, values: SectionValues) -> None:
        """stunnel's advice: a PSKsecrets file other users can read or write is a leak."""
        line = values.where(opt.PSK_SECRETS)
        if line is None or values.get(opt.PSK_SECRETS) is None:
            return
        path = os.path.normpath(os.path.join(line.base_dir, line.value))
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return
        if mode & 0o007:
            self.notices.append(
                f"{line.location}: PSKsecrets: {path} can be read or written by other "
                f"users; restrict it (chmod o-rwx {path})"
            )

    def _peer_identity_fields(self, values: SectionValues, verifying: bool) -> dict[str, Any]:
        """``alpn``, the ``allow*`` rules and ``policy`` (see tls/peer_acl.py, tls/policy.py).

        The rules judge who a certificate names, which proves nothing unless OpenSSL
        verified it: like stunnel's checkHost they need verifyChain or verifyPeer.  The
        policy module is imported here, so a bad one fails the configuration."""
        rules = (opt.ALLOW_CN, opt.ALLOW_OU, opt.ALLOW_DNS, opt.ALLOW_URI, opt.ALLOW_SPKI)
        first_rule = next((line for spec in rules if (line := values.where(spec))), None)
        if first_rule is not None and not verifying:
            self.problem(
                first_rule,
                first_rule.name,
                f'{first_rule.name} needs "verifyChain" or "verifyPeer": the allow rules '
                "only mean something for a verified certificate",
            )
        policy = values.get(opt.POLICY)
        line = values.where(opt.POLICY)
        folder = line.base_dir if line is not None else None
        if policy is not None and line is not None:
            from tlstunnel.tls.policy import PolicyError, load_policy

            try:
                load_policy(policy, folder)
            except PolicyError as exc:
                self.problem(line, line.name, str(exc))
        from tlstunnel.tls.alpn import merge

        return {
            "alpn": merge(values.every(opt.ALPN)),
            "allow_cn": values.every(opt.ALLOW_CN),
            "allow_ou": values.every(opt.ALLOW_OU),
            "allow_dns": values.every(opt.ALLOW_DNS),
            "allow_uri": values.every(opt.ALLOW_URI),
            "allow_spki": values.every(opt.ALLOW_SPKI),
            "policy": policy,
            "policy_folder": folder if policy is not None else None,
        }

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
        self._proxy_header_checks(values, protocol)
        if protocol == "smtp":
            self._smtp_checks(values, client, where)
        if protocol in ("connect", "socks"):
            self._proxy_protocol_checks(values, protocol, client, location, where)
        elif values.every(opt.SOCKS_ALLOW):
            line = values.where(opt.SOCKS_ALLOW)
            self.problem(
                line or location,
                opt.SOCKS_ALLOW.name,
                f"{where}: socksAllow only applies to protocol = socks or connect in "
                "server mode; remove the line",
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

    def _proxy_header_checks(self, values: SectionValues, protocol: str | None) -> None:
        """PROXY header options that would otherwise be silently ignored."""
        version_line = values.where(opt.PROXY_VERSION)
        if version_line is not None and protocol != "proxy":
            self.problem(
                version_line,
                opt.PROXY_VERSION.name,
                "proxyVersion only applies to protocol = proxy (the header sent to the "
                "backend); to read headers from a load balancer use acceptProxy = yes",
            )
        from_line = values.where(opt.ACCEPT_PROXY_FROM)
        if from_line is not None and not values.get_or(opt.ACCEPT_PROXY, False):
            self.problem(
                from_line,
                opt.ACCEPT_PROXY_FROM.name,
                "acceptProxyFrom needs acceptProxy = yes in the same service",
            )

    def _smtp_checks(self, values: SectionValues, client: bool, where: str) -> None:
        """``protocol = smtp`` (tlstunnel.protocols.smtp): protocolHost is the EHLO
        name; AUTH is plain or login, needs both credentials, and is client mode only
        (stunnel ignores it in server mode: so do we, with a notice)."""
        host_line = values.where(opt.PROTOCOL_HOST)
        host = values.get(opt.PROTOCOL_HOST)
        if host_line is not None and host is not None and host[1] is not None:
            self.problem(
                host_line,
                host_line.name,
                f"{where}: for protocol = smtp protocolHost is the EHLO name: no port",
            )
        auth_options = (opt.PROTOCOL_AUTHENTICATION, opt.PROTOCOL_USERNAME, opt.PROTOCOL_PASSWORD)
        if not client:
            for option in auth_options:
                line = values.where(option)
                if line is not None:
                    self.notices.append(
                        f"{line.location}: {option.name} has no effect: protocol = smtp "
                        "authenticates only in client mode"
                    )
            return
        auth_line = values.where(opt.PROTOCOL_AUTHENTICATION)
        method = values.get(opt.PROTOCOL_AUTHENTICATION) or ""
        if auth_line is not None and method not in ("plain", "login"):
            self.problem(
                auth_line,
                auth_line.name,
                f"{where}: protocol = smtp authenticates with plain or login",
            )
        user_line = values.where(opt.PROTOCOL_USERNAME)
        password_line = values.where(opt.PROTOCOL_PASSWORD)
        if (user_line is None) != (password_line is None):
            missing = opt.PROTOCOL_PASSWORD if user_line is not None else opt.PROTOCOL_USERNAME
            given = user_line or password_line
            assert given is not None
            self.problem(
                given,
                missing.name,
                f"{where}: protocolUsername and protocolPassword go together; add {missing.name}",
            )
        elif auth_line is not None and user_line is None:
            self.problem(
                auth_line,
                auth_line.name,
                f"{where}: protocolAuthentication needs protocolUsername and protocolPassword",
            )

    def _proxy_protocol_checks(
        self, values: SectionValues, protocol: str, client: bool, location: Location, where: str
    ) -> None:
        """``protocol = connect`` / ``socks``: what each mode needs and what it ignores
        (tlstunnel.protocols.connect, .socks)."""
        first_line = values.where(opt.PROTOCOL) or location
        if client:
            host = values.get(opt.PROTOCOL_HOST)
            if host is None or host[1] is None:
                what = "the proxy" if protocol == "connect" else "the SOCKS server"
                hint = (
                    "; stunnel ignores protocol = socks in client mode: for its SOCKS VPN "
                    "client remove the protocol line"
                    if protocol == "socks" and host is None
                    else ""
                )
                self.problem(
                    values.where(opt.PROTOCOL_HOST) or first_line,
                    opt.PROTOCOL_HOST.name,
                    f"{where}: protocol = {protocol} in client mode needs protocolHost = "
                    f"HOST:PORT: where {what} should connect to{hint}",
                )
            auth = values.get(opt.PROTOCOL_AUTHENTICATION)
            auth_line = values.where(opt.PROTOCOL_AUTHENTICATION)
            if auth is not None and auth_line is not None and auth != "basic":
                why = (
                    "NTLM is not supported: it needs MD4 and DES, which OpenSSL 3 disables, "
                    "and Microsoft deprecates it; use basic (over a trusted network)"
                    if auth == "ntlm"
                    else f"{auth} is an SMTP method; {protocol} knows basic"
                )
                self.problem(auth_line, auth_line.name, f"{where}: {why}")
            user = values.get(opt.PROTOCOL_USERNAME)
            password = values.get(opt.PROTOCOL_PASSWORD)
            if (user is None) != (password is None):
                missing = opt.PROTOCOL_PASSWORD if user is not None else opt.PROTOCOL_USERNAME
                given = values.where(opt.PROTOCOL_USERNAME) or values.where(opt.PROTOCOL_PASSWORD)
                self.problem(
                    given or first_line,
                    missing.name,
                    f"{where}: protocolUsername and protocolPassword go together; "
                    f"add {missing.name}",
                )
            domain_line = values.where(opt.PROTOCOL_DOMAIN)
            if domain_line is not None:
                self.problem(
                    domain_line,
                    domain_line.name,
                    f"{where}: protocolDomain is only used by NTLM authentication, "
                    "which tlstunnel does not support; remove the line",
                )
            header_line = values.where(opt.PROTOCOL_HEADER)
            if protocol == "socks" and header_line is not None:
                self.problem(
                    header_line,
                    header_line.name,
                    f"{where}: protocolHeader is for protocol = connect; remove the line",
                )
            allow_line = values.where(opt.SOCKS_ALLOW)
            if allow_line is not None:
                self.problem(
                    allow_line,
                    allow_line.name,
                    f"{where}: socksAllow limits where a server-mode {protocol} service "
                    "connects; in client mode the destination is protocolHost",
                )
            return
        connect_line = values.where(opt.CONNECT)
        if connect_line is not None and protocol == "socks":
            self.problem(
                connect_line,
                connect_line.name,
                f"{where}: a SOCKS server connects where each request says; remove connect "
                "(stunnel refuses this too)",
            )
        elif connect_line is not None:
            self.notices.append(
                f"{connect_line.location}: connect is not used by protocol = connect in "
                "server mode: each client's CONNECT request names the destination"
            )

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
        """Client mode: the one server name to send."""
        if not client:
            return None
        names = values.every(opt.SNI)
        if len(names) > 1:
            line = values.where(opt.SNI)
            self.problem(
                line or Location("", 0),
                opt.SNI.name,
                "a client sends one server name; keep one sni line",
            )
        return names[-1] if names else None

    def _virtual_service(
        self, values: SectionValues, client: bool
    ) -> tuple[str | None, tuple[str, ...]]:
        """Server mode ``sni = PRIMARY:PATTERN`` lines (all naming the same PRIMARY)."""
        if client:
            return None, ()
        primary: str | None = None
        patterns: list[str] = []
        for entry in values.entries:
            if entry.spec is not opt.SNI:
                continue
            service, colon, pattern = str(entry.value).partition(":")
            if not colon or not service or not pattern:
                self.problem(
                    entry.setting,
                    entry.setting.name,
                    "in server mode write sni = SERVICE:PATTERN (the primary service that "
                    "accepts, and the server names this section answers, e.g. *.example.com)",
                )
                continue
            if primary is not None and service != primary:
                self.problem(
                    entry.setting,
                    entry.setting.name,
                    f"this section is already a virtual service of [{primary}]; one primary "
                    "per section",
                )
                continue
            if "*" in pattern[1:]:
                self.problem(
                    entry.setting,
                    entry.setting.name,
                    f"{pattern!r}: '*' may only start the pattern (*.example.com)",
                )
                continue
            primary = service
            patterns.append(pattern.lower())
        return primary, tuple(patterns)

    def _redirect(self, values: SectionValues, client: bool, verifies: bool) -> tuple[Address, ...]:
        """``redirect``: server mode, and only meaningful when certificates are checked."""
        targets = values.every(opt.REDIRECT)
        line = values.where(opt.REDIRECT)
        if not targets or line is None:
            return ()
        if client:
            self.problem(line, line.name, "redirect works in server mode only (it judges clients)")
        elif not verifies:
            self.problem(
                line,
                line.name,
                "redirect sends clients that fail certificate authentication elsewhere; "
                "turn it on with verifyChain = yes or verifyPeer = yes",
            )
        return targets

    def check_virtual_services(self, services: Sequence[ServiceConfig]) -> None:
        """Each ``sni = PRIMARY:PATTERN`` must name a server-mode service that accepts."""
        by_name = {service.name: service for service in services}
        for service in services:
            if service.sni_primary is None:
                continue
            primary = by_name.get(service.sni_primary)
            where = f"service [{service.name}]"
            if primary is None:
                self.problem(
                    service.location,
                    opt.SNI.name,
                    f"{where}: sni names [{service.sni_primary}], which is not a service "
                    "in this file",
                )
            elif primary.client or not primary.accept:
                self.problem(
                    service.location,
                    opt.SNI.name,
                    f"{where}: the primary service [{primary.name}] must be a server-mode "
                    "service with accept",
                )
            elif primary.sni_primary is not None:
                self.problem(
                    service.location,
                    opt.SNI.name,
                    f"{where}: [{primary.name}] is itself a virtual service; name the "
                    "service that accepts",
                )


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
    builder.check_virtual_services(services)
    if problems:
        # A default written above the first [section] is checked once per service;
        # report each of its problems once.
        raise ConfigError(list(dict.fromkeys(problems)))
    config = Config(source, globals_config, tuple(services), inetd=inetd)
    return LoadResult(config, tuple(dict.fromkeys(builder.notices)))
