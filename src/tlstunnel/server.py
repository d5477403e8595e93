"""The running server: services, listeners, signals, reload and shutdown.

Lifecycle
---------
``prepare`` turns a ``Config`` into ``ServiceRuntime``s (TLS contexts built, connect
names resolved) or fails with every reason; nothing is bound yet, so a broken file
starts nothing.  ``Server.bind`` binds what is new; ``Server.serve`` runs until stopped.

Signals (POSIX; Windows gets Ctrl-C only):

* ``SIGTERM``/``SIGINT``/``SIGQUIT``: stop accepting, close every connection, remove
  the pid file, log ``Terminated``.
* ``SIGHUP``: read the configuration again.  A file that fails to load, a certificate
  that does not work or an address that cannot be bound is reported and the running
  configuration stays.  Otherwise listeners whose address is unchanged keep their
  socket and simply start handing new clients to the new settings; live connections
  keep the settings they started with and are never cut by a reload.
* ``SIGUSR1``: reopen the log file.  ``SIGUSR2``: log the active connections.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import gc
import os
import signal
import socket
import sys
from collections.abc import Callable

from tlstunnel import systemd
from tlstunnel.config.errors import ConfigError
from tlstunnel.config.model import Address, Config, Foreground, ServiceConfig
from tlstunnel.log import EMERG, ERR, INFO, NOTICE, WARNING, Log
from tlstunnel.net.listener import LISTEN_BACKLOG, Listener, bind_socket, listen_host
from tlstunnel.net.sockopts import apply_socket_options
from tlstunnel.net.transparent import check_available as check_transparent
from tlstunnel.net.transparent import make_listening_transparent, uses_destination
from tlstunnel.net.unix import bind_unix_socket, remove_socket_file
from tlstunnel.service import ConnectionBudget, ServiceRuntime
from tlstunnel.tls import libssl, reload, sni, stapling
from tlstunnel.tls.context import TLSSetupError, build_service_tls


class StartupError(Exception):
    """The configuration loaded but cannot run; ``messages`` says why, one per line."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


def prepare(
    config: Config, log: Log, budget: ConnectionBudget | None = None
) -> dict[str, ServiceRuntime]:
    """Build every service's TLS objects and resolve its targets, collecting all errors.

    ``budget`` is the process-wide connection cap the services share (it outlives
    reloads, so connections opened under the old configuration still count)."""
    runtimes: dict[str, ServiceRuntime] = {}
    problems: list[str] = []
    for service in config.services:
        log(INFO, f"Initializing service [{service.name}]")
        try:
            check_transparent(service.transparent, config.globals.setuid)
        except OSError as exc:
            problems.append(f"Service [{service.name}]: {exc}")
            continue
        try:
            tls = build_service_tls(service)
            runtime = ServiceRuntime(service, tls, log, budget)
        except TLSSetupError as exc:
            problems.append(f"Service [{service.name}]: {exc}")
            continue
        except OSError as exc:
            problems.append(f"Service [{service.name}]: connect/local: {exc}")
            continue
        for line in tls.describe_settings():
            log(7, line)
        runtimes[service.name] = runtime
    for runtime in runtimes.values():
        primary = runtimes.get(runtime.config.sni_primary or "")
        if primary is None:
            continue
        conflict = sni.check_compatible(primary.tls.context, runtime.tls.context)
        if conflict is not None:
            problems.append(f"Service [{runtime.config.name}]: {conflict}")
        primary.virtual_routes.extend((p, runtime) for p in runtime.config.sni_patterns)
    for runtime in runtimes.values():
        try:
            runtime.install_tls_callbacks()
        except libssl.LibSSLUnavailable as exc:
            problems.append(f"Service [{runtime.config.name}]: redirect cannot work here: {exc}")
    if problems:
        raise StartupError(problems)
    return runtimes


# Listeners are matched across reloads by address.  Port 0 ("any free port") cannot be
# compared by address, so such a listener belongs to its service and position instead.
ListenerKey = tuple[str, str, int]


def _bind(address: Address, service: ServiceConfig) -> socket.socket:
    if address.path is not None:
        return bind_unix_socket(
            address.path,
            service.socket_options,
            LISTEN_BACKLOG,
            user=service.socket_user,
            group=service.socket_group,
        )
    sock = bind_socket(address, service.socket_options)
    if uses_destination(service.transparent):
        make_listening_transparent(sock)  # accept what TPROXY diverts to this port
    return sock


def _os_reason(exc: OSError | KeyError) -> str:
    if isinstance(exc, KeyError):
        return f"no such user or group: {exc.args[0]}"
    return f"{exc.strerror} ({exc.errno})" if exc.strerror else str(exc)


def close_listener(listener: Listener) -> None:
    """Stop accepting; a Unix socket's file goes too."""
    listener.close()
    if listener.address.path is not None:
        remove_socket_file(listener.address.path)


def listener_key(service: str, index: int, address: Address) -> ListenerKey:
    if address.path is not None:
        return ("unix", address.path, 0)
    if address.port == 0:
        return (f"{service}#{index}", listen_host(address), 0)
    return ("", listen_host(address), address.port)


class Server:
    """Owns the listeners and runtimes; ``loader`` re-reads the configuration on SIGHUP."""

    def __init__(
        self,
        config: Config,
        runtimes: dict[str, ServiceRuntime],
        log: Log,
        loader: Callable[[], Config] | None,
        budget: ConnectionBudget | None = None,
    ) -> None:
        self.budget = budget or ConnectionBudget(None)
        self.config = config
        self.runtimes = runtimes
        self.log = log
        self._loader = loader
        self.listeners: dict[ListenerKey, Listener] = {}
        self._retired: list[ServiceRuntime] = []
        self._stopping: asyncio.Event | None = None
        self._force_stop = asyncio.Event()
        self._reloading = False
        self._background: set[asyncio.Task[None]] = set()
        # systemd: notifications (inert without NOTIFY_SOCKET) and the listening
        # sockets it passed us (socket activation), adopted by address in _bind_for.
        self.notifier = systemd.Notifier.from_environment()
        self._inherited = systemd.InheritedSockets([])
        self._adopted: set[socket.socket] = set()

    # -- binding ---------------------------------------------------------------------------

    def bind(self) -> None:
        """Bind every ``accept`` address (at start).  Raises StartupError, binding nothing.

        Listening sockets passed by systemd (socket activation) are adopted by the
        service whose address they are bound to; the others are closed."""
        self._inherited = systemd.InheritedSockets.from_environment()
        try:
            self.listeners = self._bind_for(self.config, self.runtimes, {})
        finally:
            for warning in self._inherited.close_unclaimed():
                self.log(WARNING, warning)

    def _adopt(self, address: Address, service: ServiceConfig) -> socket.socket | None:
        """The listening socket systemd passed us for this TCP ``address``, if any."""
        if address.path is not None:
            return None
        inherited = self._inherited.take(listen_host(address), address.port)
        if inherited is None or inherited.sock is None:
            return None
        for option in service.socket_options:
            try:
                apply_socket_options(inherited.sock, [option], "a")
            except OSError as exc:
                self.log(
                    WARNING,
                    f"Service [{service.name}]: socket = a:{option.name} not set on "
                    f"{inherited.describe()} from systemd ({exc}); set it in the .socket unit",
                )
        self._adopted.add(inherited.sock)
        return inherited.sock

    def _bind_for(
        self,
        config: Config,
        runtimes: dict[str, ServiceRuntime],
        existing: dict[ListenerKey, Listener],
    ) -> dict[ListenerKey, Listener]:
        wanted: dict[ListenerKey, Listener] = {}
        fresh: list[Listener] = []
        problems: list[str] = []
        for service in config.services:
            for index, address in enumerate(service.accept):
                key = listener_key(service.name, index, address)
                if key in wanted:
                    problems.append(
                        f"Service [{service.name}]: {address} is already used by another "
                        "service in this configuration"
                    )
                    continue
                listener = existing.get(key)
                if listener is None:
                    try:
                        sock = self._adopt(address, service) or _bind(address, service)
                    except (OSError, KeyError) as exc:
                        why = _os_reason(exc)
                        problems.append(
                            f"Error binding service [{service.name}] to {address}: {why}"
                        )
                        continue
                    listener = Listener(address, sock)
                    if address.path is not None:
                        listener.display = address.path
                    fresh.append(listener)
                wanted[key] = listener
        if problems:
            for listener in fresh:
                close_listener(listener)
            raise StartupError(problems)
        for service in config.services:
            for index, address in enumerate(service.accept):
                listener = wanted[listener_key(service.name, index, address)]
                listener.on_accept = runtimes[service.name].accept
                self.log(
                    INFO,
                    f"Service [{service.name}] (FD={listener.sock.fileno()}) bound to "
                    f"{listener.display}"
                    + (" (from systemd)" if listener.sock in self._adopted else ""),
                )
        return wanted

    # -- running ---------------------------------------------------------------------------

    async def serve(self) -> None:
        self._stopping = asyncio.Event()
        for listener in self.listeners.values():
            await listener.start()
        self._install_signals()
        # Everything built so far lives as long as the process: keep the collector from
        # walking it again and again while connections come and go.
        gc.freeze()
        # Its first look at the files happens now, before any client can see them change.
        watcher = asyncio.get_running_loop().create_task(self._watch_certificates())
        # OCSP stapling: our certificates' answers are fetched here, never in a handshake.
        stapler = asyncio.get_running_loop().create_task(stapling.keep_fresh(self.log))
        await asyncio.sleep(0)
        self.log(INFO, "Accepting new connections")
        if self.config.globals.foreground is Foreground.NO and systemd.under_notify_supervision():
            self.log(
                WARNING,
                "foreground = no is ignored under systemd (NOTIFY_SOCKET is set): staying "
                "in the foreground, where the service manager can follow this process",
            )
        self.notifier.ready(f"Accepting connections on {self._listening()}")
        watchdog = systemd.Watchdog.from_environment(self.notifier)
        if watchdog is not None:
            watchdog.start()  # pings from this loop: a stalled loop stops them
        try:
            await self._stopping.wait()
            watcher.cancel()
            stapler.cancel()
            self.notifier.stopping("Stopping: closing listeners and connections")
            await self._shutdown()
        finally:
            if watchdog is not None:
                watchdog.stop()

    async def _watch_certificates(self) -> None:
        """``reload = watch|SECONDS``: rebuild a service's TLS objects when its files
        change (tls/reload.py); the interval follows the current configuration."""
        watches: dict[str, tuple[ServiceRuntime, reload.FileWatch]] = {}
        while True:
            interval = self.config.globals.reload_interval
            if interval is None:
                watches.clear()
            for name, runtime in self.runtimes.items() if interval is not None else ():
                known = watches.get(name)
                if known is None or known[0] is not runtime:  # new, or replaced by SIGHUP
                    watches[name] = (runtime, reload.FileWatch(reload.tls_files(runtime.config)))
                elif known[1].changed():
                    try:
                        self.reload_certificates(runtime)
                    except Exception as exc:  # noqa: BLE001 -- the watcher must outlive it
                        self.log(ERR, f"Service [{name}]: certificate reload failed: {exc!r}")
            await asyncio.sleep(interval if interval is not None else reload.WATCH_INTERVAL)

    def reload_certificates(self, runtime: ServiceRuntime) -> bool:
        """Build ``runtime``'s TLS objects anew from its files; keep the old on failure."""
        name = runtime.config.name
        try:
            tls = build_service_tls(runtime.config)
        except TLSSetupError as exc:
            self.log(
                ERR, f"Service [{name}]: certificates not reloaded, keeping the previous: {exc}"
            )
            return False
        previous = runtime.tls
        runtime.tls = tls
        try:
            runtime.install_tls_callbacks()
        except libssl.LibSSLUnavailable as exc:  # pragma: no cover - it worked at start
            runtime.tls = previous
            self.log(ERR, f"Service [{name}]: certificates not reloaded: {exc}")
            return False
        self.log(NOTICE, f"Service [{name}]: certificates reloaded")
        return True

    def _listening(self) -> str:
        return f"{len(self.listeners)} listener(s)"

    def stop(self) -> None:
        """First call: stop gracefully (drain); a second one: close everything now."""
        if self._stopping is None:
            return
        if self._stopping.is_set():
            self._force_stop.set()
        self._stopping.set()

    async def _shutdown(self) -> None:
        for listener in self.listeners.values():
            close_listener(listener)
        await self._drain(self.config.globals.timeout_drain)
        tasks: list[asyncio.Task[None]] = []
        for runtime in self._all_runtimes():
            tasks.extend(c.task for c in runtime.connections if c.task is not None)
            runtime.shutdown("Server is terminating")
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self.log(NOTICE, "Terminated")

    async def _drain(self, seconds: float) -> None:
        """``TIMEOUTdrain``: let live connections finish on their own for a while; a
        second SIGTERM/SIGINT cuts the wait short."""
        tasks = [c.task for r in self._all_runtimes() for c in r.connections if c.task is not None]
        if seconds <= 0 or not tasks:
            return
        self.log(NOTICE, f"Waiting up to {seconds:g} s for {len(tasks)} connection(s) to finish")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        forced: asyncio.Future[object] = asyncio.ensure_future(self._force_stop.wait())
        pending: set[asyncio.Future[object]] = {*tasks}  # type: ignore[arg-type]
        while pending and not forced.done() and loop.time() < deadline:
            _done, pending = await asyncio.wait(
                pending | {forced},
                timeout=deadline - loop.time(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            pending.discard(forced)
        forced.cancel()
        left = sum(1 for task in tasks if not task.done())
        if left:
            self.log(NOTICE, f"Closing {left} connection(s) still open after the drain")

    def _all_runtimes(self) -> list[ServiceRuntime]:
        self._retired = [r for r in self._retired if r.connections]
        return [*self.runtimes.values(), *self._retired]

    # -- signals ---------------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        handlers: dict[str, Callable[[], None]] = {
            "SIGTERM": self.stop,
            "SIGINT": self.stop,
            "SIGQUIT": self.stop,
            "SIGHUP": self._schedule_reload,
            "SIGUSR1": self.reopen_log,
            "SIGUSR2": self.list_connections,
        }
        for name, handler in handlers.items():
            signum = getattr(signal, name, None)
            if signum is None:
                continue
            try:
                loop.add_signal_handler(signum, handler)
            except (NotImplementedError, RuntimeError):
                # Windows: no loop signal handlers; Ctrl-C arrives as SIGINT in the
                # main thread and is passed to the loop thread-safely.
                if name == "SIGINT":
                    signal.signal(signum, lambda *_: loop.call_soon_threadsafe(self.stop))

    def _schedule_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def reopen_log(self) -> None:
        self.log.reopen()
        self.log(NOTICE, "Log file reopened")

    def list_connections(self) -> None:
        self.log(EMERG, "Active connections:")
        count = 0
        for runtime in self._all_runtimes():
            for connection in sorted(runtime.connections, key=lambda c: c.id):
                self.log(EMERG, connection.describe())
                count += 1
        self.log(EMERG, f"Listed {count} active connection(s)")

    async def reload(self) -> None:
        """Re-read the configuration; on any problem keep running the old one."""
        if self._reloading:
            return
        self._reloading = True
        self.notifier.reloading("Reloading the configuration")
        outcome = "Reload failed, still running the previous configuration"
        try:  # systemd waits for READY=1 after RELOADING=1, whatever happens
            try:
                if self._reload():
                    outcome = "Configuration reloaded"
            finally:
                self._reloading = False
            for listener in list(self.listeners.values()):
                await listener.start()  # the ones a reload bound anew
        finally:
            self.notifier.ready(f"{outcome}; accepting connections on {self._listening()}")

    def _reload(self) -> bool:
        """True when the new configuration took over."""
        log = self.log
        if self._loader is None:
            log(ERR, "Cannot reload: the configuration was read from a descriptor")
            return False
        log(NOTICE, "Reloading configuration")
        try:
            config = self._loader()
            runtimes = prepare(config, log, self.budget)
            listeners = self._bind_for(config, runtimes, self.listeners)
        except ConfigError as exc:
            for problem in exc.problems:
                log(ERR, str(problem))
            log(ERR, "Configuration failed; still running the previous configuration")
            return False
        except StartupError as exc:
            for message in exc.messages:
                log(ERR, message)
            log(ERR, "Configuration failed; still running the previous configuration")
            return False
        for key, listener in self.listeners.items():
            if listeners.get(key) is not listener:
                close_listener(listener)
        self._retired.extend(r for r in self.runtimes.values() if r.connections)
        self.listeners = listeners
        self.runtimes = runtimes
        self.config = config
        self.budget.limit = connection_limit(config.globals.max_connections)
        try:
            log.configure(config.globals)
        except OSError as exc:
            log(ERR, f"Cannot open log file {config.globals.output}: {exc.strerror}")
        log(NOTICE, "Configuration successful")
        return True


# -- process-level helpers (POSIX parts guarded) ---------------------------------------


def hold_signals_until_serving() -> None:
    """Until the loop installs its handlers, a reload or log signal must not kill us (their
    default action is to terminate); ignore them for that short while."""
    for name in ("SIGHUP", "SIGUSR1", "SIGUSR2"):
        signum = getattr(signal, name, None)
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)


def connection_limit(configured: int | None) -> int:
    """The process-wide cap: global ``maxConnections`` if set, else what the descriptor
    limit allows (two per connection, some kept for listeners, logs and the resolver)."""
    if configured is not None:
        return configured
    try:
        import resource
    except ImportError:  # Windows: no descriptor limit to derive from
        return 1 << 20
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(1, (soft - 64) // 2)


def raise_file_limit() -> None:
    """Each connection needs two descriptors: lift the soft limit to the hard one."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def write_pid_file(path: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(f"{os.getpid()}\n")


def remove_pid_file(path: str) -> None:
    try:
        with open(path, encoding="ascii") as handle:
            if handle.read().strip() != str(os.getpid()):
                return  # another instance owns it now
        os.unlink(path)
    except OSError:
        pass


def daemonize() -> None:
    """Detach from the terminal (``foreground = no``): fork, new session, fork again.

    Not under systemd's ``Type=notify``: it follows the process it started (MAINPID,
    NotifyAccess=main), so a daemon's fork would look like the service exiting."""
    if sys.platform == "win32" or not hasattr(os, "fork"):
        return
    if systemd.under_notify_supervision():
        return  # Server.serve says so in the log
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


def enter_chroot(directory: str | None) -> None:
    """``chroot``: confine the process once its sockets are bound and its certificates
    read.  From here on the pid file, the log file and a reloaded configuration are
    looked up inside the jail, as with stunnel."""
    if directory is None:
        return
    if sys.platform == "win32" or not hasattr(os, "chroot"):
        raise OSError("chroot is not available on this platform")
    os.chroot(directory)
    os.chdir("/")


def resolve_ids(user: str | None, group: str | None) -> tuple[int | None, int | None]:
    """The numeric ids for ``setuid``/``setgid``, looked up while /etc is still visible
    (before ``chroot``).  Raises KeyError for an unknown name."""
    if user is None and group is None:
        return None, None
    if sys.platform == "win32":
        raise OSError("setuid/setgid are not available on Windows")
    import grp
    import pwd

    gid = None if group is None else int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    uid = None if user is None else int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    return uid, gid


def drop_privileges(uid: int | None, gid: int | None) -> None:
    """``setgid``/``setuid`` after binding (and chroot).  Raises OSError with the reason."""
    if gid is not None:
        os.setgroups([gid])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)


def preload_modules() -> None:
    """Import now what is otherwise loaded on first use, before a chroot hides the files
    it would be loaded from: uvloop, and the codecs behind pid files and SNI (idna)."""
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401
    for codec in ("ascii", "idna", "latin-1", "utf-8"):
        codecs.lookup(codec)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where installed (the measured fast path), else the standard loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
