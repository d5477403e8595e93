"""One service as it runs, and one connection's pipeline through it.

Server mode:  accept TCP → TLS handshake (``TIMEOUTbusy``) → peer checks → connect the
backend (failover, ``TIMEOUTconnect``) → relay → log how it ended.
Client mode:  accept TCP → connect the server → TLS handshake → peer checks → relay.

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
from typing import cast

from tlstunnel.config.model import Address, ServiceConfig
from tlstunnel.log import DEBUG, ERR, INFO, NOTICE, WARNING, ConnectionLog, Log
from tlstunnel.net import transparent
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
    resolve,
    resolve_async,
    resolve_local,
)
from tlstunnel.protocols import negotiator_class
from tlstunnel.protocols.base import Connect, ConnectionFacts, Negotiator, ProtocolSettings
from tlstunnel.tls.context import ServiceTLS

_connection_ids = itertools.count()


class ConnectionBudget:
    """The cap on open connections for the whole process (global ``maxConnections``, or
    what RLIMIT_NOFILE allows: each connection holds two descriptors)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.open = 0

    def full(self) -> bool:
        return self.limit is not None and self.open >= self.limit


class ServiceRuntime:
    """A service's settings, TLS objects, resolved targets and live connections."""

    def __init__(
        self,
        config: ServiceConfig,
        tls: ServiceTLS,
        log: Log,
        budget: ConnectionBudget | None = None,
    ) -> None:
        self.config = config
        self.tls = tls
        self.log = log
        self.budget = budget or ConnectionBudget(None)
        self.targets: list[Target] = [] if config.delay else resolve(config.connect)
        self.local_addresses = resolve_local(config.local) if config.local else None
        self._next_target = 0
        self.sessions: dict[Target, ssl.SSLSession] = {}  # client mode resumption
        self.connections: set[Connection] = set()
        self.has_local_socket_options = any(o.side == "l" for o in config.socket_options)
        # exec without connect: a program per connection takes the place of connect.
        self.launcher = Launcher(config) if config.exec_path and not config.connect else None
        # protocol = NAME: a negotiator runs around the handshake (tlstunnel.protocols).
        self.negotiator: type[Negotiator] | None = (
            negotiator_class(config.protocol, config.client) if config.protocol else None
        )
        self.protocol_settings = _protocol_settings(config)
        # Server mode: the accepted connection starts in plaintext when something must be
        # read or said before the TLS handshake (a protocol, a PROXY header).
        self.defer_client_tls = not config.client and (
            self.negotiator is not None or config.accept_proxy
        )

    def accept(self) -> asyncio.BaseProtocol:
        """Protocol factory for the listener: the client-facing endpoint."""
        endpoint: Endpoint
        if self.config.client:
            endpoint = PlainEndpoint()
        else:
            endpoint = TLSEndpoint(
                self.tls.context, server_side=True, deferred=self.defer_client_tls
            )
        endpoint.reset_on_abort = self.config.reset
        endpoint.when_connected(self._start_connection)
        return endpoint

    def _start_connection(self, endpoint: Endpoint) -> None:
        limit = self.config.max_connections
        if limit is not None and len(self.connections) >= limit:
            self._refuse(endpoint, f"maxConnections = {limit} for this service reached")
            return
        if self.budget.full():
            self._refuse(endpoint, f"the process-wide limit of {self.budget.limit} reached")
            return
        connection = Connection(self, endpoint)
        self.connections.add(connection)
        self.budget.open += 1
        connection.task = asyncio.get_running_loop().create_task(connection.run())

    def _refuse(self, endpoint: Endpoint, why: str) -> None:
        """Full: close at once (a FIN, before any TLS work) and say so in one line."""
        self.log(
            WARNING,
            f"Service [{self.config.name}]: connection from {_peer_name(endpoint)} refused: {why}",
        )
        if isinstance(endpoint, TLSEndpoint):
            endpoint.handshake.cancel()  # nobody will wait for it
        endpoint.close()

    def finished(self, connection: Connection) -> None:
        if connection in self.connections:
            self.connections.discard(connection)
            self.budget.open -= 1

    def next_start_index(self) -> int:
        """Where failover starts: always the first target for prio, rotating for rr."""
        if self.config.failover.value != "rr":
            return 0
        index = self._next_target
        self._next_target += 1
        return index

    def shutdown(self, reason: str) -> None:
        for connection in list(self.connections):
            connection.shutdown(reason)


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

    @property
    def peer_address(self) -> str:
        """The client's address, worked out only when something logs it."""
        if self._peer_address is None:
            self._peer_address = _peer_name(self.client)
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
        if log.enabled(NOTICE):
            log(NOTICE, f"Service [{config.name}] accepted connection from {self.peer_address}")
        tls_side: TLSEndpoint | None = None
        upstream: Endpoint | None = None
        try:
            if self.service.has_local_socket_options:
                client_socket = _socket_of(self.client)
                if client_socket is not None:
                    apply_socket_options(client_socket, config.socket_options, "l")
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
        connect = self.service.config.connect
        return connect[0].host if connect else None

    async def _handshake(self, endpoint: TLSEndpoint, step: str, done_text: str) -> None:
        config = self.service.config
        log = self.log
        try:
            async with asyncio.timeout(config.timeout_busy):
                await endpoint.handshake
        except TimeoutError:
            endpoint.abort()
            log(
                ERR,
                f"{step}: TIMEOUTbusy exceeded: the TLS handshake took longer than "
                f"{config.timeout_busy:g} s",
            )
            raise HandshakeFailed("TIMEOUTbusy exceeded") from None
        except HandshakeFailed as exc:
            log(ERR, f"{step}: {exc.reason}")
            raise
        sslobj = endpoint.sslobj
        reason = self.service.tls.check_peer(sslobj)
        if reason is not None:
            log(WARNING, f"Rejected peer certificate: {reason}")
            endpoint.abort()
            raise PeerRefused(reason)
        if log.enabled(NOTICE):
            self._log_peer(sslobj)
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

    def _log_peer(self, sslobj: ssl.SSLObject) -> None:
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
        service = self.service
        config = service.config
        if service.launcher is not None:
            return await self._start_program(service.launcher, make_endpoint)
        client_socket = _socket_of(self.client) if config.transparent.value != "none" else None
        if destination is not None:
            targets = destination
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
        await launcher.start(endpoint, self.log, program_environment(self.client, tls))
        return endpoint, target

    def _remember_session(self, tls_side: TLSEndpoint) -> None:
        target = self._session_target
        if target is None or tls_side.sslobj.server_side:
            return
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


def _protocol_settings(config: ServiceConfig) -> ProtocolSettings:
    return ProtocolSettings(
        name=config.protocol or "",
        client_mode=config.client,
        host=config.protocol_host,
        port=config.protocol_port,
        username=config.protocol_username,
        password=config.protocol_password,
        authentication=config.protocol_authentication,
        domain=config.protocol_domain,
        headers=config.protocol_headers,
        proxy_version=config.proxy_version,
        socks_allow=config.socks_allow,
    )


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


def _peer_name(endpoint: Endpoint) -> str:
    transport = endpoint.transport
    name = transport.get_extra_info("peername") if transport is not None else None
    return _format_sockaddr(name)


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
