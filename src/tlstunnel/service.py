"""One service as it runs: its settings, TLS objects, resolved targets, callbacks and
live connections; the protocol factory its listeners call for each accepted socket.

What happens to one accepted connection is ``tlstunnel.connection``.
"""

from __future__ import annotations

import asyncio
import ssl

from tlstunnel.config.model import ServiceConfig
from tlstunnel.connection import Connection, peer_name
from tlstunnel.log import WARNING, Log
from tlstunnel.net.accept_proxy import (
    parse_networks,
)
from tlstunnel.net.endpoint import Endpoint, PlainEndpoint, TLSEndpoint
from tlstunnel.net.exec import Launcher
from tlstunnel.net.libwrap import Libwrap
from tlstunnel.net.upstream import (
    Target,
    resolve,
    resolve_local,
)
from tlstunnel.protocols import negotiator_class
from tlstunnel.protocols.base import Negotiator, ProtocolSettings
from tlstunnel.tls import sni, stapling, tolerant_verify
from tlstunnel.tls.context import ServiceTLS


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
        # redirect: where clients failing certificate authentication go (None: no redirect).
        self.redirect_targets = resolve(config.redirect) if config.redirect else None
        # sni = PRIMARY:PATTERN sections naming this one: (pattern, their runtime).
        self.virtual_routes: list[tuple[str, ServiceRuntime]] = []
        # Work before any TLS or protocol byte: a PROXY header, the TCP-wrappers check.
        self.admission = config.accept_proxy or config.libwrap
        # Server mode: the accepted connection starts in plaintext when something must be
        # read or said before the TLS handshake (a protocol, a PROXY header, libwrap).
        self.defer_client_tls = not config.client and (
            self.negotiator is not None or self.admission
        )
        # libwrap = yes: hosts.allow / hosts.deny, judged in Connection._admit.
        self.libwrap: Libwrap | None = None
        if config.libwrap:
            self.libwrap = Libwrap(
                config.name, config.hosts_allow, config.hosts_deny, config.timeout_busy
            )
            self.libwrap.preload(log)
        # acceptProxy: who may send the header (net/accept_proxy.py); anyone, if unset.
        self.proxy_sources = parse_networks(config.accept_proxy_from)
        if config.accept_proxy and not config.accept_proxy_from:
            log(
                WARNING,
                f"Service [{config.name}]: acceptProxy without acceptProxyFrom: any client "
                "that reaches this port can claim any address in a PROXY header; list "
                "your proxies' networks with acceptProxyFrom",
            )

    def install_tls_callbacks(self) -> None:
        """Server mode: the callbacks a fresh context needs (at start and after certificates
        are reloaded): route handshakes to virtual services by SNI, or just remember the
        name when something downstream wants it (a PROXY header, a policy); with
        ``redirect``, verification that records failures instead of failing.  Both modes:
        OCSP stapling (tls/stapling.py)."""
        context = self.tls.context
        stapling.install(context, self.config, self.log)
        if self.config.client:
            return
        if self.redirect_targets is not None:
            tolerant_verify.install(context)
        if self.virtual_routes:
            context.sni_callback = sni.virtual_service_callback(lambda: self.virtual_routes)
        elif self.config.protocol is not None or self.config.policy is not None:
            context.sni_callback = sni.record_server_name

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
            f"Service [{self.config.name}]: connection from {peer_name(endpoint)} refused: {why}",
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
