"""One connection's pipeline through a service.

Server mode:  accept TCP → [PROXY header, libwrap] → TLS handshake (``TIMEOUTbusy``) →
peer checks (verification, SNI virtual service, redirect, OCSP, allow* rules, policy) →
connect the backend (failover, ``TIMEOUTconnect``) → relay → log how it ended.
Client mode:  accept TCP → connect the server → TLS handshake → peer checks → relay.
With ``protocol = NAME`` a negotiator (``tlstunnel.protocols``, run by
``net/negotiate.py``) decides the order of the handshake and the connect.

Each connection is one task; everything it does is awaited inside it, and the
``except Exception`` in ``Connection.run`` is the per-connection boundary: whatever
goes wrong is logged with the connection's id and only that connection is closed.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from tlstunnel.config.model import Address
from tlstunnel.log import DEBUG, ERR, INFO, NOTICE, WARNING, ConnectionLog
from tlstunnel.net import transparent
from tlstunnel.net.accept_proxy import (
    ProxyHeaderRefused,
    read_proxy_header,
    source_allowed,
    unmapped,
)
from tlstunnel.net.endpoint import Endpoint, HandshakeFailed, PlainEndpoint, TLSEndpoint
from tlstunnel.net.exec import Launcher, one_line_name, program_environment
from tlstunnel.net.negotiate import NegotiationFailed, negotiate
from tlstunnel.net.relay import Relay
from tlstunnel.net.sockopts import apply_socket_options
from tlstunnel.net.upstream import (
    Target,
    UpstreamFailed,
    bind_local,
    connect_first,
    resolve_async,
)
from tlstunnel.protocols.base import Connect, ConnectionFacts, Negotiator
from tlstunnel.protocols.proxy_header import Command
from tlstunnel.tls import tolerant_verify

if TYPE_CHECKING:
    from tlstunnel.service import ServiceRuntime

_connection_ids = itertools.count()


class Connection:
    """One client's trip through a service."""

    def __init__(self, service: ServiceRuntime, client: Endpoint) -> None:
        self.id = next(_connection_ids)
        self.service = service
        self.client = client
        self.started = time.monotonic()
        self.relay: Relay | None = None
        self.task: asyncio.Task[None] | None = None
        self.log = ConnectionLog(service.log, str(self.id), service.config.log_level.level)
        self._peer_address: str | None = None
        self._session_target: Target | None = None
        self._facts: ConnectionFacts | None = None
        # The service whose settings apply past the handshake: a virtual service chosen
        # by SNI (sni = PRIMARY:PATTERN), else the one that accepted.
        self.route = service
        self.redirected = False  # failed certificate authentication: go to redirect

    @property
    def peer_address(self) -> str:
        """The client's address, worked out only when something logs it."""
        if self._peer_address is None:
            self._peer_address = peer_name(self.client)
        return self._peer_address

    @property
    def facts(self) -> ConnectionFacts:
        """Who is on each end, for negotiators, access control and PROXY headers (made
        on first use: a plain tunnel never needs it)."""
        if self._facts is None:
            self._facts = ConnectionFacts(
                client_address=_address_pair(self.client, "peername"),
                local_address=_address_pair(self.client, "sockname"),
            )
        return self._facts

    def describe(self) -> str:
        age = time.monotonic() - self.started
        state = "relaying" if self.relay is not None else "starting"
        return (
            f"Connection {self.id}: service [{self.service.config.name}] from "
            f"{self.peer_address}, {state}, {age:.0f} s"
        )

    def shutdown(self, reason: str) -> None:
        if self.relay is not None:
            self.relay.shutdown(reason)
        else:
            self.client.abort()
            if self.task is not None:
                self.task.cancel()

    async def run(self) -> None:
        config = self.service.config
        log = self.log
        # acceptProxy: logged once the PROXY header has named the client; libwrap: once
        # it has let the client in, as stunnel does (both in _admit).
        if log.enabled(NOTICE) and not config.accept_proxy and self.service.libwrap is None:
            log(NOTICE, f"Service [{config.name}] accepted connection from {self.peer_address}")
        tls_side: TLSEndpoint | None = None
        upstream: Endpoint | None = None
        try:
            if self.service.has_local_socket_options:
                client_socket = _socket_of(self.client)
                if client_socket is not None:
                    apply_socket_options(client_socket, config.socket_options, "l")
            if self.service.admission:
                await self._admit()
            if self.service.negotiator is not None:
                upstream, tls_side = await self._negotiate(self.service.negotiator)
            elif config.client:
                upstream, tls_side = await self._open_client_mode()
            else:
                assert isinstance(self.client, TLSEndpoint)
                tls_side = self.client
                if self.service.defer_client_tls:
                    # What followed a PROXY header is the start of the ClientHello.
                    tls_side.start_tls(tls_side.take_held())
                await self._handshake(tls_side, "SSL_accept", "TLS accepted")
                upstream, _target = await self._connect(self._make_plain)
            self.relay = Relay(
                self.client,
                upstream,
                idle_timeout=config.timeout_idle,
                close_timeout=config.timeout_close,
            )
            self.relay.start()
            outcome = await self.relay.done
            self._remember_session(tls_side)
            tls_bytes = tls_side.bytes_sent
            plain = upstream if tls_side is self.client else self.client
            if outcome.reason is not None:
                log(ERR if "TIMEOUT" not in outcome.reason else NOTICE, outcome.reason)
            if log.enabled(NOTICE):
                ending = "closed" if outcome.reason is None else "reset"
                log(
                    NOTICE,
                    f"Connection {ending}: {tls_bytes} byte(s) sent to TLS, "
                    f"{plain.bytes_sent} byte(s) sent to socket",
                )
        except (
            HandshakeFailed,
            UpstreamFailed,
            PeerRefused,
            NegotiationFailed,
            OSError,
        ) as exc:
            if isinstance(exc, OSError):
                log(ERR, f"Connection failed: {exc.strerror or exc}")
            elif isinstance(exc, NegotiationFailed):
                log(ERR, exc.reason)
            if isinstance(exc, NegotiationFailed) and exc.told_client:
                # The negotiator may just have told the client why (a 421, an -ERR, a
                # PostgreSQL FATAL): let that reach it, then close; a reset could drop it.
                if upstream is not None:
                    upstream.abort()
                self.client.close()
            else:
                self._abort(upstream)
            tls_bytes = tls_side.bytes_sent if tls_side is not None else 0
            log(
                NOTICE,
                f"Connection reset: {tls_bytes} byte(s) sent to TLS, 0 byte(s) sent to socket",
            )
        except asyncio.CancelledError:
            self._abort(upstream)
            log(NOTICE, "Connection reset: 0 byte(s) sent to TLS, 0 byte(s) sent to socket")
        except Exception as exc:  # noqa: BLE001 -- the per-connection boundary: log, close, go on
            self._abort(upstream)
            log(ERR, f"Internal error, connection closed: {type(exc).__name__}: {exc}")
        finally:
            self.service.finished(self)

    # -- steps ---------------------------------------------------------------------------

    async def _admit(self) -> None:
        """Everything that happens before any TLS or protocol work: the PROXY header
        (``acceptProxy``) and access control.  Bytes read past a PROXY header belong to
        what follows it (the ClientHello, or a protocol's first message): they are put
        back with ``client.unread``.  Raises ``PeerRefused``."""
        if self.service.config.accept_proxy:
            await self._accept_proxy_header()
        # Access control follows here: it judges self.facts.client_address, the real client.
        libwrap = self.service.libwrap
        if libwrap is not None:
            facts = self.facts
            if not await libwrap.admits(facts.client_address, facts.local_address, self.log):
                raise PeerRefused("refused by libwrap")
            if not self.service.config.accept_proxy and self.log.enabled(NOTICE):
                self.log(
                    NOTICE,
                    f"Service [{self.service.config.name}] accepted connection from "
                    f"{self.peer_address}",
                )

    async def _accept_proxy_header(self) -> None:
        """``acceptProxy``: check the sender may send one, read the PROXY header
        (net/accept_proxy.py), and from then on name the client it names."""
        config = self.service.config
        socket_peer = self.peer_address

        def refuse(level: int, why: str) -> PeerRefused:
            self.log(
                level, f"Service [{config.name}]: connection from {socket_peer} refused: {why}"
            )
            return PeerRefused(why)

        sources = self.service.proxy_sources
        if sources and not source_allowed(self.facts.client_address, sources):
            raise refuse(WARNING, "not in acceptProxyFrom, so it may not send a PROXY header")
        try:
            parsed = await read_proxy_header(self.client, config.timeout_busy)
        except ProxyHeaderRefused as exc:
            raise refuse(ERR, f"PROXY header: {exc.reason}") from None
        header = parsed.header
        client, server = header.client_address, header.server_address
        if client is None or server is None:  # LOCAL (a health check), UNKNOWN, UNSPEC, Unix
            what = "LOCAL" if header.command is Command.LOCAL else "without addresses"
            self.log(
                NOTICE,
                f"Service [{config.name}] accepted connection from {socket_peer} "
                f"(PROXY v{parsed.version} {what}: the socket's address is kept)",
            )
            return
        self.facts.client_address = unmapped(client)
        self.facts.local_address = unmapped(server)
        self._peer_address = _format_sockaddr(self.facts.client_address)
        self.log(
            NOTICE,
            f"Service [{config.name}] accepted connection from {self._peer_address} "
            f"via PROXY v{parsed.version} from {socket_peer}",
        )

    async def _negotiate(self, negotiator: type[Negotiator]) -> tuple[Endpoint, TLSEndpoint]:
        """``protocol = NAME``: let the negotiator drive the handshake and the connect."""
        config = self.service.config
        client_mode = config.client
        tls_side: list[TLSEndpoint] = []

        def make_upstream(target: Target) -> Endpoint:
            if not client_mode:
                return self._make_plain(target)
            endpoint = TLSEndpoint(
                self.service.tls.context,
                server_side=False,
                server_hostname=self.service.tls.server_hostname(self._sni_host()),
                session=self.service.sessions.get(target),
                deferred=True,
            )
            endpoint.reset_on_abort = config.reset
            return endpoint

        async def connect(step: Connect) -> Endpoint:
            if step.host is None or step.port is None:
                endpoint, target = await self._connect(make_upstream)
            else:
                targets = await resolve_async([Address(step.host, step.port)])
                if step.refuse_address is not None:
                    targets = _permitted(targets, step.refuse_address)
                endpoint, target = await self._connect(make_upstream, targets)
            if client_mode:
                self._session_target = target
            return endpoint

        async def handshake(endpoint: TLSEndpoint) -> None:
            if endpoint.sslobj.server_side:
                await self._handshake(endpoint, "SSL_accept", "TLS accepted")
            else:
                await self._handshake(endpoint, "SSL_connect", "TLS connected")
            tls_side.append(endpoint)
            self._record_tls_facts(endpoint)

        result = await negotiate(
            negotiator(self.service.protocol_settings, self.facts),
            self.client,
            connect=connect,
            handshake=handshake,
            log=self.log,
            read_timeout=config.timeout_busy,
        )
        if not tls_side:
            result.server.abort()
            raise NegotiationFailed(f"{config.protocol}: negotiation ended without TLS")
        return result.server, tls_side[0]

    def _record_tls_facts(self, endpoint: TLSEndpoint) -> None:
        sslobj = endpoint.sslobj
        tls = self.facts.tls
        tls.version = sslobj.version() or ""
        cipher = sslobj.cipher()
        tls.cipher = cipher[0] if cipher else ""
        tls.alpn = sslobj.selected_alpn_protocol()
        tls.sni = getattr(sslobj, "requested_server_name", None)
        der = sslobj.getpeercert(binary_form=True)
        tls.peer_cert_der = der
        peer = sslobj.getpeercert() if der is not None else None
        subject = peer.get("subject", ()) if peer else ()
        for rdn in cast(tuple[tuple[tuple[str, str], ...], ...], subject):
            for key, value in rdn:
                if key == "commonName":
                    tls.peer_cn = value

    async def _open_client_mode(self) -> tuple[Endpoint, TLSEndpoint]:
        service = self.service

        def make_tls(target: Target) -> Endpoint:
            endpoint = TLSEndpoint(
                service.tls.context,
                server_side=False,
                server_hostname=service.tls.server_hostname(self._sni_host()),
                session=service.sessions.get(target),
            )
            endpoint.reset_on_abort = service.config.reset
            return endpoint

        upstream, target = await self._connect(make_tls)
        assert isinstance(upstream, TLSEndpoint)
        try:
            await self._handshake(upstream, "SSL_connect", "TLS connected")
        except BaseException:
            upstream.abort()
            raise
        self._session_target = target
        return upstream, upstream

    def _sni_host(self) -> str | None:
        config = self.service.config
        if config.protocol in ("connect", "socks") and config.protocol_host:
            # Through a proxy the TLS server is protocolHost, not the proxy (stunnel too).
            return config.protocol_host
        connect = config.connect
        return connect[0].host if connect else None

    async def _handshake(self, endpoint: TLSEndpoint, step: str, done_text: str) -> None:
        config = self.service.config
        log = self.log
        try:
            async with asyncio.timeout(config.timeout_busy):
                await endpoint.handshake
        except TimeoutError:
            endpoint.abort()
            if self.service.redirect_targets is not None:
                tolerant_verify.forget(endpoint.sslobj)
            log(
                ERR,
                f"{step}: TIMEOUTbusy exceeded: the TLS handshake took longer than "
                f"{config.timeout_busy:g} s",
            )
            raise HandshakeFailed("TIMEOUTbusy exceeded") from None
        except HandshakeFailed as exc:
            if self.service.redirect_targets is not None:
                tolerant_verify.forget(endpoint.sslobj)
            log(ERR, f"{step}: {exc.reason}")
            raise
        sslobj = endpoint.sslobj
        if endpoint.sslobj.server_side and self.service.virtual_routes:
            self._follow_server_name(sslobj)
        if self.route.redirect_targets is not None and sslobj.server_side:
            self._judge_for_redirect(sslobj)
            if self.redirected:  # nothing more to check: it goes to the redirect target
                self._log_session(sslobj, done_text)
                return
        reason = self.route.tls.check_peer(sslobj)
        if reason is not None:
            log(WARNING, f"Rejected peer certificate: {reason}")
            endpoint.abort()
            raise PeerRefused(reason)
        # OCSP (tls/ocsp.py): asked before any byte is relayed; CRLs were checked by OpenSSL.
        revoked = (
            await self.route.tls.check_revocation(sslobj, log)
            if self.route.tls.checks_revocation
            else None
        )
        if revoked is not None:
            peer = peer_name(endpoint)
            log(WARNING, f"Service [{config.name}]: peer {peer} refused: {revoked}")
            endpoint.abort()
            raise PeerRefused(revoked)
        # allow* rules and the policy hook (tls/peer_acl.py, tls/policy.py).
        # The hook is told the real client (as a PROXY header named it, with acceptProxy).
        source = self.facts.client_address if self.route.config.policy else None
        refusal = self.route.tls.check_access(sslobj, source)
        if refusal is not None:
            peer = _peer_label(sslobj, endpoint)
            log(WARNING, f"Service [{self.route.config.name}]: peer {peer} refused: {refusal}")
            endpoint.abort()
            raise PeerRefused(refusal)
        if log.enabled(NOTICE):
            self._log_peer(sslobj)
        self._log_session(sslobj, done_text)

    def _log_session(self, sslobj: ssl.SSLObject, done_text: str) -> None:
        log = self.log
        if log.enabled(INFO):
            session = (
                "previous session reused" if sslobj.session_reused else "new session negotiated"
            )
            log(INFO, f"{done_text}: {session}")
            cipher = sslobj.cipher()
            if cipher is not None:
                name, version, bits = cipher
                log(INFO, f"{sslobj.version()} ciphersuite: {name} ({bits}-bit encryption)")
                log(DEBUG, f"Cipher protocol version: {version}")

    def _judge_for_redirect(self, sslobj: ssl.SSLObject) -> None:
        """``redirect``: the handshake completed whatever the client's certificate;
        decide here, as stunnel's verify callback does, and send failures elsewhere."""
        log = self.log
        failure = tolerant_verify.take_failure(sslobj)
        if failure is not None:
            log(WARNING, f"CERT: Pre-verification error: {failure.error}")
            log(WARNING, f"Rejected by CERT at depth={failure.depth}: {failure.subject}")
            reason: str | None = failure.describe()
        elif sslobj.getpeercert(binary_form=True) is None:
            reason = "no certificate" if self.route.config.require_cert else None
            if reason is not None:
                log(WARNING, "The client did not present a certificate")
        else:
            reason = self.route.tls.check_peer(sslobj)
            if reason is not None:
                log(WARNING, f"Rejected peer certificate: {reason}")
        if reason is not None:
            log(NOTICE, "Redirecting connection")
            self.redirected = True

    def _follow_server_name(self, sslobj: ssl.SSLObject) -> None:
        """After a handshake on a primary: which virtual service the client's SNI chose."""
        log = self.log
        name = getattr(sslobj, "requested_server_name", None)
        if name is None:
            return
        log(INFO, f"SNI: requested servername: {name}")
        route: ServiceRuntime | None = getattr(sslobj, "virtual_service", None)
        if route is not None:
            log(DEBUG, f"SNI: matched pattern: {getattr(sslobj, 'sni_pattern', '')}")
            log(NOTICE, f"SNI: switched to service [{route.config.name}]")
            self.route = route
        else:
            log(ERR, f"SNI: no pattern matched servername: {name}")

    def _log_peer(self, sslobj: ssl.SSLObject) -> None:
        if self.route.config.alpn and self.log.enabled(INFO):
            self.log(INFO, f"ALPN: {sslobj.selected_alpn_protocol() or 'none'}")
        peer = sslobj.getpeercert()
        if not peer:
            if sslobj.getpeercert(binary_form=True) is None:
                self.log(INFO, "No peer certificate received")
            return
        subject = one_line_name(peer.get("subject", ()))
        self.log(NOTICE, f"Certificate accepted at depth=0: {subject}")

    def _make_plain(self, _target: Target) -> Endpoint:
        endpoint = PlainEndpoint()
        endpoint.reset_on_abort = self.service.config.reset
        return endpoint

    async def _connect(
        self,
        make_endpoint: Callable[[Target], Endpoint],
        destination: list[Target] | None = None,
    ) -> tuple[Endpoint, Target]:
        """Connect the upstream leg: to ``destination`` when a negotiator named one
        (SOCKS, CONNECT), else to the service's targets with failover."""
        service = self.route
        config = service.config
        if service.launcher is not None:
            return await self._start_program(service.launcher, make_endpoint)
        client_socket = _socket_of(self.client) if config.transparent.value != "none" else None
        if destination is not None:
            targets = destination
        elif self.redirected and service.redirect_targets is not None:
            targets = service.redirect_targets
        elif client_socket is not None and transparent.uses_destination(config.transparent):
            # Where the client meant to go, as the firewall diverted it to us.
            host, port = transparent.original_destination(client_socket)
            targets = [Target(client_socket.family, (host, port))]
        elif config.delay:
            targets = await resolve_async(config.connect)
        else:
            targets = service.targets
        prepare_socket: Callable[[socket.socket, Target], None] | None = None
        if client_socket is not None and transparent.uses_source(config.transparent):
            client_ip = str(client_socket.getpeername()[0])

            def bind_as_client(sock: socket.socket, _target: Target) -> None:
                transparent.bind_as_client(sock, client_ip)

            prepare_socket = bind_as_client
        elif service.local_addresses is not None:
            prepare_socket = bind_local(service.local_addresses)
        endpoint, target = await connect_first(
            targets,
            service.next_start_index(),
            make_endpoint,
            timeout=config.timeout_connect,
            socket_options=config.socket_options,
            prepare_socket=prepare_socket,
            log=self.log,
        )
        if self.log.enabled(NOTICE):
            local = _local_name(endpoint)
            self.log(NOTICE, f"Service [{config.name}] connected remote server from {local}")
        return endpoint, target

    async def _start_program(
        self, launcher: Launcher, make_endpoint: Callable[[Target], Endpoint]
    ) -> tuple[Endpoint, Target]:
        """exec: start the program with the client's address (and certificate) in its
        environment; it stands where the connect target would."""
        tls = self.client.sslobj if isinstance(self.client, TLSEndpoint) else None
        target = Target(0, launcher.program)  # names the program in the session cache
        endpoint = make_endpoint(target)
        environment = program_environment(self.client, tls)
        client = self.facts.client_address if self.service.config.accept_proxy else None
        if client is not None:  # the client a PROXY header named
            environment["REMOTE_HOST"], environment["REMOTE_PORT"] = client[0], str(client[1])
        await launcher.start(endpoint, self.log, environment)
        return endpoint, target

    def _remember_session(self, tls_side: TLSEndpoint) -> None:
        target = self._session_target
        if target is None or tls_side.sslobj.server_side:
            return
        if not self.service.config.session_resume:
            return  # sessionResume = no: keep nothing, so nothing is ever offered
        session = tls_side.sslobj.session
        if session is not None:
            self.service.sessions[target] = session

    def _abort(self, upstream: Endpoint | None) -> None:
        self.client.abort()
        if upstream is not None:
            upstream.abort()


class PeerRefused(Exception):
    """The peer's certificate did not pass checkHost/checkIP/checkEmail/verifyPeer."""


class DestinationRefused(Exception):
    """Every address a negotiator's destination resolved to is off limits."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _permitted(targets: list[Target], refuse: Callable[[str], str | None]) -> list[Target]:
    allowed: list[Target] = []
    reasons: list[str] = []
    for target in targets:
        reason = refuse(str(target.sockaddr[0])) if isinstance(target.sockaddr, tuple) else None
        if reason is None:
            allowed.append(target)
        else:
            reasons.append(reason)
    if not allowed:
        raise DestinationRefused("; ".join(dict.fromkeys(reasons)) or "no address to connect to")
    return allowed


def _address_pair(endpoint: Endpoint, which: str) -> tuple[str, int] | None:
    """The endpoint's peer or own address as (host, port), IPv4-mapped IPv6 unmapped;
    None for Unix sockets."""
    transport = endpoint.transport
    name = transport.get_extra_info(which) if transport is not None else None
    if not (isinstance(name, tuple) and len(name) >= 2):
        return None
    host = str(name[0])
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return host, int(name[1])


def _socket_of(endpoint: Endpoint) -> socket.socket | None:
    transport = endpoint.transport
    return transport.get_extra_info("socket") if transport is not None else None


def peer_name(endpoint: Endpoint) -> str:
    transport = endpoint.transport
    name = transport.get_extra_info("peername") if transport is not None else None
    return _format_sockaddr(name)


def _peer_label(sslobj: ssl.SSLObject, endpoint: Endpoint) -> str:
    """A refused TLS peer as a log line names it: its verified subject and address."""
    cert = sslobj.getpeercert()
    subject = one_line_name(cert.get("subject", ())) if cert else "(no verified certificate)"
    return f"{subject} at {peer_name(endpoint)}"


def _local_name(endpoint: Endpoint) -> str:
    transport = endpoint.transport
    name = transport.get_extra_info("sockname") if transport is not None else None
    return _format_sockaddr(name)


def _format_sockaddr(name: object) -> str:
    if isinstance(name, tuple) and len(name) >= 2:
        host = str(name[0])
        if host.startswith("::ffff:") and "." in host:
            host = host[len("::ffff:") :]  # an IPv4 client on a dual-stack socket
        return f"[{host}]:{name[1]}" if ":" in host else f"{host}:{name[1]}"
    return str(name) if name else "unknown"
