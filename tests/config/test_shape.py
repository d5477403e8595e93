"""The shape of a service: which endpoints it joins (accept, exec, connect, transparent
destination), inetd mode, the options that need exec, and this round's other options."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tlstunnel.config.model import Address, Transparent

from .helpers import load, problem, problems, service

CAT = "/bin/cat"
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def exec_service(extra: str = "") -> str:
    return f"[imapd]\naccept = 993\nexec = {CAT}\ncert = cert.pem\n{extra}"


# --- exec -------------------------------------------------------------------------------


def test_accept_and_exec_make_a_service_with_the_program_name_as_argv0(folder: Path) -> None:
    imapd = service(folder, exec_service())
    assert imapd.exec_path == CAT
    assert imapd.exec_args == ("cat",)
    assert imapd.connect == ()
    assert (imapd.pty, imapd.retry) == (False, False)


def test_exec_args_replace_the_default(folder: Path) -> None:
    imapd = service(folder, exec_service("execArgs = imapd  -s  /var/mail\n"))
    assert imapd.exec_args == ("imapd", "-s", "/var/mail")


def test_pty_with_exec(folder: Path) -> None:
    assert service(folder, exec_service("pty = yes\n")).pty is True


def test_exec_and_connect_need_no_accept_and_may_retry(folder: Path) -> None:
    text = f"[vpn]\nclient = yes\nexec = {CAT}\nconnect = vpn.example:2020\nretry = yes\n"
    vpn = service(folder, text)
    assert vpn.accept == ()
    assert vpn.exec_path == CAT and vpn.connect == (Address("vpn.example", 2020),)
    assert vpn.retry is True


def test_accept_exec_and_connect_are_one_endpoint_too_many(folder: Path) -> None:
    found = problem(folder, exec_service("connect = 143\n"))
    assert found.line == 1
    assert "more than two endpoints" in found.message
    assert "exec with connect runs the program once" in found.message


def test_a_service_needs_connect_or_exec(folder: Path) -> None:
    found = problem(folder, "[web]\naccept = 1\ncert = cert.pem\n")
    assert "needs connect = [HOST:]PORT" in found.message
    assert "exec = PROGRAM" in found.message


def test_exec_alone_still_needs_accept(folder: Path) -> None:
    found = problem(folder, f"[x]\nexec = {CAT}\ncert = cert.pem\n")
    assert "needs accept" in found.message


@pytest.mark.parametrize("line", ["pty = yes", "execArgs = cat -u", "retry = yes"])
def test_options_that_need_exec_point_at_their_line(folder: Path, line: str) -> None:
    found = problem(folder, "[web]\naccept = 1\nconnect = 2\ncert = cert.pem\n" + line + "\n")
    assert found.line == 5
    assert found.option == line.split(maxsplit=1)[0]
    assert "only applies to exec = PROGRAM" in found.message


def test_pty_no_without_exec_is_fine(folder: Path) -> None:
    assert service(folder, "[web]\naccept = 1\nconnect = 2\ncert = cert.pem\npty = no\n")


def test_retry_with_accept_and_exec_is_a_problem(folder: Path) -> None:
    found = problem(folder, exec_service("retry = yes\n"))
    assert (found.line, found.option) == (5, "retry")
    assert "exec + connect" in found.message


def test_a_missing_program_is_reported_on_its_line(folder: Path) -> None:
    found = problem(folder, "[x]\naccept = 1\nexec = nowhere/imapd\ncert = cert.pem\n")
    assert (found.line, found.option) == (3, "exec")
    assert found.message == f"the program {folder / 'nowhere' / 'imapd'} does not exist"


def test_a_program_that_cannot_run_is_reported(folder: Path) -> None:
    script = folder / "imapd"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o644)
    found = problem(folder, "[x]\naccept = 1\nexec = imapd\ncert = cert.pem\n")
    assert found.message == f"the program {script} is not an executable file"


# --- inetd mode --------------------------------------------------------------------------


def test_inetd_mode_with_exec(folder: Path) -> None:
    config = load(folder, f"exec = {CAT}\nexecArgs = cat -u\ncert = cert.pem\n").config
    assert config.inetd is True
    (only,) = config.services
    assert only.accept == () and only.connect == ()
    assert only.exec_args == ("cat", "-u")


def test_inetd_mode_joins_stdio_to_one_endpoint_only(folder: Path) -> None:
    found = problem(folder, f"exec = {CAT}\nconnect = 143\ncert = cert.pem\n")
    assert "inetd mode" in found.message
    assert "keep either exec or connect" in found.message


def test_inetd_mode_without_any_endpoint(folder: Path) -> None:
    found = problems(folder, "cert = cert.pem\n")
    assert len(found) == 1
    assert "inetd mode" in found[0].message and "needs connect" in found[0].message


def test_a_file_without_sections_but_with_accept_still_listens(folder: Path) -> None:
    config = load(folder, "accept = 993\nconnect = 143\ncert = cert.pem\n").config
    assert config.inetd is True
    assert config.services[0].accept == (Address(None, 993),)


def test_inetd_mode_setuid_and_max_connections_stay_global(folder: Path) -> None:
    text = f"exec = {CAT}\ncert = cert.pem\nsetuid = nobody\nmaxConnections = 1\n"
    config = load(folder, text).config
    assert config.globals.setuid == "nobody" and config.globals.max_connections == 1
    (only,) = config.services
    assert only.socket_user is None and only.max_connections is None


# --- transparent -------------------------------------------------------------------------


@linux_only
def test_transparent_destination_replaces_connect(folder: Path) -> None:
    text = "[t]\nclient = yes\naccept = 8080\ntransparent = destination\n"
    assert service(folder, text).transparent is Transparent.DESTINATION


@linux_only
def test_transparent_destination_with_connect_is_one_endpoint_too_many(folder: Path) -> None:
    text = "[t]\nclient = yes\naccept = 8080\nconnect = 1\ntransparent = both\n"
    assert "remove transparent = destination" in problem(folder, text).message


@linux_only
def test_transparent_source_keeps_connect(folder: Path) -> None:
    text = "[web]\naccept = 1\nconnect = 2\ncert = cert.pem\ntransparent = source\n"
    assert service(folder, text).transparent is Transparent.SOURCE


@pytest.mark.skipif(sys.platform.startswith("linux"), reason="the refusal is for other systems")
def test_transparent_elsewhere_is_refused(folder: Path) -> None:
    text = "[web]\naccept = 1\nconnect = 2\ncert = cert.pem\ntransparent = source\n"
    assert "only on Linux" in problem(folder, text).message


# --- the other options of this round -----------------------------------------------------


def test_defaults_of_this_round(folder: Path) -> None:
    config = load(folder, "[web]\naccept = 1\nconnect = 2\ncert = cert.pem\n").config
    (web,) = config.services
    assert web.reset is True  # stunnel's default
    assert web.local is None and web.transparent is Transparent.NONE
    assert web.max_connections is None and web.socket_user is None
    assert (config.globals.chroot, config.globals.max_connections) == (None, None)
    assert config.globals.timeout_drain == 0.0


def test_max_connections_is_not_inherited_by_services(folder: Path) -> None:
    text = (
        "maxConnections = 100\n"
        "[a]\naccept = 1\nconnect = 2\ncert = cert.pem\n"
        "[b]\naccept = 3\nconnect = 4\ncert = cert.pem\nmaxConnections = 5\n"
    )
    config = load(folder, text).config
    assert config.globals.max_connections == 100
    assert [s.max_connections for s in config.services] == [None, 5]


def test_global_setuid_is_not_a_socket_owner(folder: Path) -> None:
    text = "setuid = nobody\n[web]\naccept = /run/w.sock\nconnect = 2\ncert = cert.pem\n"
    config = load(folder, text).config
    assert config.globals.setuid == "nobody"
    assert config.services[0].socket_user is None


def test_global_only_options_of_this_round(folder: Path) -> None:
    (folder / "jail").mkdir()
    text = "chroot = jail\nTIMEOUTdrain = 30\n[web]\naccept = 1\nconnect = 2\ncert = cert.pem\n"
    config = load(folder, text).config
    assert config.globals.chroot == str(folder / "jail")
    assert config.globals.timeout_drain == 30.0
    found = problem(folder, "[web]\naccept = 1\nconnect = 2\ncert = cert.pem\nTIMEOUTdrain = 3\n")
    assert "global option" in found.message


def test_local_reset_and_defaults_above_the_first_section(folder: Path) -> None:
    text = "local = 192.0.2.1\nreset = no\n[web]\naccept = 1\nconnect = 2\ncert = cert.pem\n"
    web = service(folder, text)
    assert (web.local, web.reset) == ("192.0.2.1", False)


def test_with_chroot_the_program_is_looked_for_inside_the_jail(folder: Path) -> None:
    jail = folder / "jail"
    (jail / "bin").mkdir(parents=True)
    program = jail / "bin" / "imapd"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    text = f"chroot = {jail}\n[imapd]\naccept = 993\nexec = /bin/imapd\ncert = cert.pem\n"
    assert service(folder, text).exec_path == "/bin/imapd"  # as the program will see it
    found = problem(folder, text.replace("/bin/imapd", "/bin/missing"))
    assert found.message == f"the program {jail / 'bin' / 'missing'} does not exist"
