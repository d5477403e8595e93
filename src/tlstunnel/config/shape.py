"""The shape of a service: which endpoints it joins, and the options that need exec.

stunnel's rule, kept here: a service joins two endpoints out of ``accept``, ``exec``,
``connect`` and ``transparent = destination``.  ``accept`` + ``connect`` is a tunnel,
``accept`` + ``exec`` runs a program per connection, ``exec`` + ``connect`` runs the
program once at start (again after it ends with ``retry = yes``) and connects out for
it.  A file without sections and without ``accept`` is inetd mode: standard input and
output are the one connection, joined to exactly one of ``exec`` or ``connect``.
Platform limits (``pty``, ``chroot``: Unix; ``transparent``: Linux) are problems here,
so a file never starts half-working.
"""

from __future__ import annotations

import os
import sys
from typing import TypeVar

from tlstunnel.config import options as opt
from tlstunnel.config.model import Location, Transparent
from tlstunnel.config.options import OptionSpec
from tlstunnel.config.sections import Reporter, SectionValues

T = TypeVar("T")


class ServiceShape(Reporter):
    """The rules about a service's endpoints, exec and platform-only options."""

    def unix_only(self, values: SectionValues, spec: OptionSpec[T]) -> T | None:
        value = values.get(spec)
        line = values.where(spec)
        if value and line is not None and sys.platform == "win32":
            self.problem(line, line.name, f"{spec.name} needs a Unix system; remove the line")
            return None
        return value

    def endpoints(
        self,
        values: SectionValues,
        location: Location,
        where: str,
        inetd: bool,
        transparent: Transparent,
    ) -> None:
        """stunnel's rule: a service joins two endpoints out of accept, exec, connect and
        ``transparent = destination``; inetd mode (no accept) joins standard input and
        output to one of them.  exec + connect needs no accept: the program is started
        at once and the tunnel connects out for it."""
        failed = values.failed
        accept = bool(values.every(opt.ACCEPT)) or opt.ACCEPT.name in failed
        has_exec = values.get(opt.EXEC) is not None or opt.EXEC.name in failed
        connect = bool(values.every(opt.CONNECT)) or opt.CONNECT.name in failed
        destination = transparent in (Transparent.DESTINATION, Transparent.BOTH)
        targets = has_exec + connect + destination
        on_stdio = inetd and not accept
        if on_stdio and targets > 1:
            self.problem(
                location,
                "",
                f"{where} joins standard input and output to one endpoint; "
                "keep either exec or connect",
            )
            return
        # Server-mode sni lines make a virtual service: its primary accepts for it.
        secondary = values.get(opt.SNI) is not None and values.get(opt.CLIENT) is not True
        if not accept and not on_stdio and not (has_exec and connect) and not secondary:
            self.problem(location, "", f"{where} needs accept = [HOST:]PORT: where to listen")
        # protocol = socks / connect in server mode: each request names the destination.
        protocol = values.get(opt.PROTOCOL) or ""
        requested = protocol in ("socks", "connect") and not values.get(opt.CLIENT)
        if targets == 0 and not requested:
            self.problem(
                location,
                "",
                f"{where} needs connect = [HOST:]PORT: where to forward "
                "(or exec = PROGRAM: a program to run per connection)",
            )
        elif accept and targets > 1:
            extra = "transparent = destination" if destination else "accept"
            self.problem(
                location,
                "",
                f"{where} has more than two endpoints: accept, exec, connect and "
                "transparent = destination join two at a time (exec with connect runs "
                f"the program once and connects out for it, without accept); remove {extra} "
                "or one of the others",
            )

    def exec_arguments(
        self, values: SectionValues, location: Location, chroot: str | None
    ) -> tuple[str, ...]:
        """Check ``exec`` and the options that only mean something with it; return argv.
        With ``chroot`` the program is looked for inside the jail, where it will run."""
        program = values.get(opt.EXEC)
        if program is None:
            needing_exec = {opt.EXEC_ARGS.name, opt.PTY.name, opt.RETRY.name}
            written = {e.spec.name: e for e in values.entries if e.spec.name in needing_exec}
            for entry in written.values():  # the last line of each
                if entry.value:  # execArgs, or pty/retry = yes
                    self.problem(
                        entry.setting,
                        entry.setting.name,
                        f"{entry.spec.name} only applies to exec = PROGRAM, which this "
                        "service does not have",
                    )
            return ()
        retry_line = values.where(opt.RETRY)
        if values.get(opt.RETRY) and retry_line is not None and not values.every(opt.CONNECT):
            self.problem(
                retry_line,
                retry_line.name,
                "retry restarts an exec + connect tunnel after it ends; with accept the "
                "program already starts once per connection: remove the line",
            )
        line = values.where(opt.EXEC)
        if sys.platform == "win32":
            self.problem(line or location, "exec", "exec needs a Unix system here")
            return ()
        path = os.path.join(chroot, program.lstrip("/")) if chroot else program
        if not os.path.isfile(path) or not os.access(path, os.X_OK):
            what = "is not an executable file" if os.path.exists(path) else "does not exist"
            self.problem(line or location, "exec", f"the program {path} {what}")
        return values.get(opt.EXEC_ARGS) or (os.path.basename(program),)

    def transparent(self, values: SectionValues) -> Transparent:
        mode = values.get_or(opt.TRANSPARENT, Transparent.NONE)
        line = values.where(opt.TRANSPARENT)
        if (
            mode is not Transparent.NONE
            and line is not None
            and not sys.platform.startswith("linux")
        ):
            self.problem(
                line,
                line.name,
                f"transparent = {mode.value} works only on Linux; write transparent = none",
            )
            return Transparent.NONE
        return mode

    def socket_owner(self, values: SectionValues, spec: OptionSpec[str]) -> str | None:
        owner = values.get(spec)
        line = values.where(spec)
        if owner is not None and line is not None:
            if sys.platform == "win32":
                self.problem(line, line.name, f"{spec.name} needs a Unix system")
                return None
            if not any(address.path for address in values.every(opt.ACCEPT)):
                self.notices.append(
                    f"{line.location}: {line.name} has no effect here: in a service section "
                    "it sets the owner of a Unix accept socket (accept = /PATH), and this "
                    "service has none; to drop privileges, move it above the first [section]"
                )
        return owner
