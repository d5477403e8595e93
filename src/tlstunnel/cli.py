"""The command line, stunnel's and ours; the only place that picks exit codes.

stunnel's forms are kept exactly: ``tlstunnel [FILE] | -fd N | -help | -version |
-sockets | -options``; like stunnel, the informational ones write to stderr and exit 0,
and a configuration that does not load exits 1 with nothing started.  Long options add
what stunnel lacks: ``--check FILE`` (validate and report every problem, start
nothing), ``--demo`` (a working tunnel with a generated certificate), ``--help`` and
``--version``.
"""

from __future__ import annotations

import asyncio
import os
import platform
import ssl
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tlstunnel import __version__
from tlstunnel.config import ConfigError, load_fd, load_file
from tlstunnel.config.model import Config, Foreground
from tlstunnel.log import ERR, INFO, NOTICE, WARNING, log

if TYPE_CHECKING:
    from tlstunnel.service import ServiceRuntime

DEFAULT_CONFIG = "/etc/stunnel/stunnel.conf"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


@dataclass(frozen=True, slots=True)
class Invocation:
    """What the user asked for."""

    action: str  # run, check, help, version, sockets, options, demo
    path: str | None = None
    fd: int | None = None


class UsageError(Exception):
    pass


def parse_arguments(argv: Sequence[str]) -> Invocation:
    """stunnel's single-dash forms plus our long options."""
    args = list(argv)
    if not args:
        return Invocation("run", path=DEFAULT_CONFIG)
    first = args[0]
    simple = {
        "-help": "help", "--help": "help", "-h": "help",
        "-version": "version", "--version": "version",
        "-sockets": "sockets", "--sockets": "sockets",
        "-options": "options", "--options": "options",
    }  # fmt: skip
    if first in simple:
        _expect_count(args, 1)
        return Invocation(simple[first])
    if first in ("-fd", "--fd"):
        _expect_count(args, 2)
        if not args[1].isdigit():
            raise UsageError(f"-fd needs a descriptor number, not {args[1]!r}")
        return Invocation("run", fd=int(args[1]))
    if first == "--check":
        _expect_count(args, 2)
        return Invocation("check", path=args[1])
    if first == "--demo":
        _expect_count(args, 1)
        return Invocation("demo")
    if first.startswith("-") and first != "-":
        raise UsageError(f"unknown option {first!r} (try -help)")
    _expect_count(args, 1)
    return Invocation("run", path=first)


def _expect_count(args: list[str], count: int) -> None:
    if len(args) != count:
        extra = " ".join(args[count:]) if len(args) > count else "an argument"
        raise UsageError(
            f"{args[0]}: unexpected {extra}" if len(args) > count else f"{args[0]} needs {extra}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    finally:
        # Whatever ended before logging was configured (a usage error, a configuration
        # that failed, --check) shows its lines now, in stunnel's [!] [.] [ ] form.
        log.flush_early()


def _main(argv: Sequence[str] | None) -> int:
    try:
        invocation = parse_arguments(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        log(ERR, f"Command line: {exc}")
        log(
            ERR,
            "Usage: tlstunnel [FILE] | -fd N | -help | -version | -sockets | -options "
            "| --check FILE | --demo",
        )
        return EXIT_USAGE
    informational: dict[str, Callable[[], None]] = {
        "help": print_help,
        "version": print_version,
        "sockets": print_sockets,
        "options": print_options,
    }
    if invocation.action in informational:
        informational[invocation.action]()
        return EXIT_OK
    if invocation.action == "demo":
        from tlstunnel.demo import run_demo

        return run_demo()
    return run(invocation)


# -- informational outputs (stderr, like stunnel) ----------------------------------------


def _err(line: str = "") -> None:
    sys.stderr.write(line + "\n")


def banner_lines() -> list[str]:
    try:
        import uvloop

        loop_name = f"uvloop {getattr(uvloop, '__version__', '')}".rstrip()
    except ImportError:
        loop_name = "asyncio"
    return [
        f"tlstunnel {__version__} on {platform.machine()}-{sys.platform} platform",
        f"Running  with {ssl.OPENSSL_VERSION}",
        f"Python {platform.python_version()}, event loop: {loop_name}",
    ]


def print_version() -> None:
    for line in banner_lines():
        _err(line)
    _err(" ")
    from tlstunnel.config.reference import describe_defaults

    for line in describe_defaults():
        _err(line)


def print_help() -> None:
    for line in banner_lines():
        _err(line)
    _err(" ")
    _err("Usage: tlstunnel [FILE] | -fd N | -help | -version | -sockets | -options")
    _err("       tlstunnel --check FILE   validate a configuration, start nothing")
    _err("       tlstunnel --demo         run a demo tunnel with a generated certificate")
    _err(" ")
    from tlstunnel.config.reference import describe_options

    for line in describe_options():
        _err(line)


def print_sockets() -> None:
    for line in banner_lines():
        _err(line)
    _err(" ")
    _err("Socket option defaults:")
    from tlstunnel.net.sockopts import describe_defaults

    for line in describe_defaults():
        _err(line)


def print_options() -> None:
    for line in banner_lines():
        _err(line)
    _err(" ")
    _err("Supported TLS options:")
    from tlstunnel.tls.context import supported_option_names

    for name in supported_option_names():
        _err(f"options = {name}")


# -- running -------------------------------------------------------------------------------


def load(invocation: Invocation) -> tuple[Config, tuple[str, ...]]:
    if invocation.fd is not None:
        log(NOTICE, f"Reading configuration from descriptor {invocation.fd}")
        result = load_fd(invocation.fd)
    else:
        assert invocation.path is not None
        log(NOTICE, f"Reading configuration from file {os.path.abspath(invocation.path)}")
        result = load_file(invocation.path)
    return result.config, result.notices


def run(invocation: Invocation) -> int:
    from tlstunnel.net.exec import Launcher
    from tlstunnel.net.inetd import serve_with_program_tunnels
    from tlstunnel.server import (
        Server,
        StartupError,
        connection_limit,
        daemonize,
        drop_privileges,
        enter_chroot,
        hold_signals_until_serving,
        new_event_loop,
        preload_modules,
        prepare,
        raise_file_limit,
        remove_pid_file,
        resolve_ids,
        write_pid_file,
    )
    from tlstunnel.service import ConnectionBudget

    for line in banner_lines():
        log(NOTICE, line)
    try:
        config, notices = load(invocation)
    except ConfigError as exc:
        for problem in exc.problems:
            log(ERR, str(problem))
        log(ERR, "Configuration failed")
        return EXIT_FAILURE
    for notice in notices:
        log(INFO, notice)
    try:
        budget = ConnectionBudget(None)
        runtimes = prepare(config, log, budget)
    except StartupError as exc:
        for message in exc.messages:
            log(ERR, message)
        log(ERR, "Configuration failed")
        return EXIT_FAILURE
    warn_about_unverified_clients(config)
    for runtime in runtimes.values():  # e.g. verifyChain without checkHost (stunnel's words)
        for warning in runtime.tls.warnings:
            log(WARNING, warning)
    if invocation.action == "check":
        log(NOTICE, f"Configuration {config.source} is valid: {len(config.services)} service(s)")
        return EXIT_OK

    log(NOTICE, "Configuration successful")
    if config.inetd and not config.services[0].accept:
        return _run_inetd(config, runtimes[config.services[0].name])
    raise_file_limit()
    budget.limit = connection_limit(config.globals.max_connections)
    log(7, f"Clients allowed={budget.limit}")
    hold_signals_until_serving()
    loader = None if invocation.fd is not None else _file_loader(invocation.path)
    server = Server(config, runtimes, log, loader, budget)
    try:
        server.bind()
        uid, gid = resolve_ids(config.globals.setuid, config.globals.setgid)
        preload_modules()
        enter_chroot(config.globals.chroot)
        drop_privileges(uid, gid)
    except StartupError as exc:
        for message in exc.messages:
            log(ERR, message)
        return EXIT_FAILURE
    except (OSError, KeyError) as exc:
        log(ERR, f"Cannot chroot or drop privileges: {exc}")
        return EXIT_FAILURE
    # stunnel's order: bind and drop privileges while failures still reach the
    # terminal, then open the log file as the final user (so that SIGUSR1 can reopen
    # it), and only then daemonize.
    try:
        log.configure(config.globals)
    except OSError as exc:
        log(ERR, f"Cannot open log file {config.globals.output}: {exc.strerror}")
        return EXIT_FAILURE
    Launcher.stderr_to_terminal = config.globals.foreground is Foreground.YES
    if config.globals.foreground is Foreground.NO:
        daemonize()
    pid_file = config.globals.pid_file
    if pid_file:
        try:
            write_pid_file(pid_file)
        except OSError as exc:
            log(ERR, f"Cannot create pid file {pid_file}: {exc.strerror}")
            return EXIT_FAILURE
        log(7, f"Created pid file {pid_file}")
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve_with_program_tunnels(server))
    except KeyboardInterrupt:
        log(NOTICE, "Terminated")
    finally:
        if pid_file:
            remove_pid_file(pid_file)
        log.close()
    return EXIT_OK


def _run_inetd(config: Config, runtime: ServiceRuntime) -> int:
    """inetd mode: serve the one connection on stdin/stdout, then exit.  No listener,
    no daemon, no pid file (as stunnel); chroot and privileges still apply."""
    from tlstunnel.net.exec import Launcher
    from tlstunnel.net.inetd import serve_stdio
    from tlstunnel.server import (
        drop_privileges,
        enter_chroot,
        new_event_loop,
        preload_modules,
        resolve_ids,
    )

    try:
        uid, gid = resolve_ids(config.globals.setuid, config.globals.setgid)
        preload_modules()
        enter_chroot(config.globals.chroot)
        drop_privileges(uid, gid)
        log.configure(config.globals)
    except (OSError, KeyError) as exc:
        log(ERR, f"Cannot start inetd mode: {exc}")
        return EXIT_FAILURE
    Launcher.stderr_to_terminal = config.globals.foreground is Foreground.YES
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve_stdio(runtime))
    except KeyboardInterrupt:
        log(NOTICE, "Terminated")
    finally:
        log.close()
    return EXIT_OK


def _file_loader(path: str | None) -> Callable[[], Config]:
    assert path is not None

    def reload_file() -> Config:
        log(NOTICE, f"Reading configuration from file {os.path.abspath(path)}")
        return load_file(path).config

    return reload_file


def warn_about_unverified_clients(config: Config) -> None:
    for service in config.services:
        if service.client and not (service.verify_chain or service.verify_peer):
            log(
                WARNING,
                f"Service [{service.name}]: client mode without verifyChain or "
                "verifyPeer: the server's certificate is not checked, so anyone in the "
                "path can impersonate it",
            )
