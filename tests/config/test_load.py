"""Loading: sources (file, descriptor, text), addresses, files on disk, and how problems,
refusals and notices are reported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tlstunnel.config import ConfigError, load_fd, load_file, load_text
from tlstunnel.config.model import Address
from tlstunnel.config.options import OPTIONS, Scope

from .helpers import CLIENT, SERVER, load, problem, problems, service

# --- addresses ------------------------------------------------------------------------


def test_ipv6_addresses(folder: Path) -> None:
    text = "[web]\naccept = :::443\naccept = ::1:8443\nconnect = [2001:db8::5]:80\n"
    web = service(folder, text + "cert = cert.pem\n")
    assert web.accept == (Address("::", 443), Address("::1", 8443))
    assert web.connect == (Address("2001:db8::5", 80),)
    assert str(web.connect[0]) == "[2001:db8::5]:80"


def test_service_names_as_ports(folder: Path) -> None:
    assert service(folder, CLIENT + "connect = mail.test:https\n").connect[-1].port == 443


def test_port_zero_is_fine_for_accept_but_not_connect(folder: Path) -> None:
    assert service(folder, "[web]\naccept = 0\nconnect = 1\ncert = cert.pem\n").accept[0].port == 0
    found = problem(folder, "[web]\naccept = 1\nconnect = 0\ncert = cert.pem\n")
    assert (found.line, found.option) == (3, "connect")


def test_unix_socket_paths_for_accept_and_connect(folder: Path) -> None:
    web = service(
        folder, "[web]\naccept = /run/web.sock\nconnect = /run/app.sock\ncert = cert.pem\n"
    )
    assert web.accept == (Address(None, 0, "/run/web.sock"),)
    assert web.connect == (Address(None, 0, "/run/app.sock"),)


# --- files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "option"),
    [
        ("cert = missing.pem", "cert"),
        ("key = missing.key", "key"),
        ("CAfile = missing.pem", "CAfile"),
        ("CApath = missing", "CApath"),
        ("CApath = ca.pem", "CApath"),
        ("CAfile = cadir", "CAfile"),
    ],
)
def test_missing_certificate_files_are_problems(folder: Path, line: str, option: str) -> None:
    found = problem(folder, "[web]\naccept = 1\nconnect = 2\ncert = cert.pem\n" + line + "\n")
    assert (found.line, found.option) == (5, option)
    assert str(folder / line.split(" = ")[1]) in found.message


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_an_unreadable_certificate_is_a_problem(folder: Path) -> None:
    (folder / "cert.pem").chmod(0)
    assert "cannot be read" in problem(folder, SERVER).message


def test_a_missing_configuration_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_file(str(tmp_path / "absent.conf"))
    (found,) = caught.value.problems
    assert found.line == 0 and "cannot read" in found.message


def test_included_files_resolve_paths_against_their_own_folder(folder: Path) -> None:
    parts = folder / "conf.d"
    parts.mkdir()
    (parts / "certs").mkdir()  # a subfolder: not read as configuration
    (parts / "certs" / "local.pem").write_text("dummy\n")
    (parts / "00-global.conf").write_text("debug = 6\n")
    (parts / "10-web.conf").write_text("[web]\naccept = 1\nconnect = 2\ncert = certs/local.pem\n")
    (parts / "20-mail.conf").write_text("[mail]\naccept = 3\nconnect = 4\ncert = nothere.pem\n")
    with pytest.raises(ConfigError) as caught:
        load(folder, "include = conf.d\n")
    (found,) = caught.value.problems
    assert (found.path, found.line, found.option) == (str(parts / "20-mail.conf"), 4, "cert")
    (parts / "20-mail.conf").unlink()
    config = load(folder, "include = conf.d\n").config
    assert config.globals.log_level.level == 6
    assert config.services[0].cert == str(parts / "certs" / "local.pem")


def test_load_text_resolves_against_base_dir(folder: Path) -> None:
    result = load_text(SERVER, "inline", str(folder))
    assert result.config.source == "inline"
    assert result.config.services[0].cert == str(folder / "cert.pem")


def test_load_fd_reads_a_descriptor_against_the_current_folder(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder)
    read_end, write_end = os.pipe()
    os.write(write_end, (SERVER + "bogus = 1\n").encode())
    os.close(write_end)
    try:
        with pytest.raises(ConfigError) as caught:
            load_fd(read_end)
        assert str(caught.value.problems[0]).startswith(f"descriptor {read_end}:5: bogus:")
    finally:
        os.close(read_end)
    read_end, write_end = os.pipe()
    os.write(write_end, SERVER.encode())
    os.close(write_end)
    try:
        config = load_fd(read_end).config
    finally:
        os.close(read_end)
    assert config.source == f"descriptor {read_end}"
    assert config.services[0].cert == str(folder / "cert.pem")


def test_load_fd_on_a_closed_descriptor() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(ConfigError) as caught:
        load_fd(read_end)
    assert "cannot read the configuration" in caught.value.problems[0].message


# --- problems, refusals and notices ---------------------------------------------------


def test_every_problem_is_collected_with_its_line(folder: Path) -> None:
    text = (
        "foreground = sometimes\n"  # line 1: not a foreground mode
        "[web]\n"
        "accept = 1\n"
        "conect = 2\n"  # line 4: a typo
        "connect = 3\n"
        "cert = cert.pem\n"
        "client = maybe\n"  # line 7: not yes or no
    )
    found = problems(folder, text)
    assert [(p.line, p.option) for p in found] == [(1, "foreground"), (4, "conect"), (7, "client")]
    assert "yes, quiet or no" in found[0].message
    assert found[1].message == "unknown option 'conect'; did you mean 'connect'?"
    assert "yes or no" in found[2].message


def test_lexer_and_option_problems_come_together(folder: Path) -> None:
    found = problems(folder, "nonsense line\n" + SERVER + "client = 3\n")
    assert [p.line for p in found] == [1, 6]


def test_unknown_option_without_a_close_name(folder: Path) -> None:
    found = problem(folder, SERVER + "xyzzy = 1\n")
    assert found.message == "unknown option 'xyzzy'; see -help for the full list"


def test_a_bad_connect_is_not_also_reported_as_missing(folder: Path) -> None:
    found = problem(folder, "[web]\naccept = 1\nconnect = host:99999\ncert = cert.pem\n")
    assert found.option == "connect"


@pytest.mark.parametrize("name", [spec.name for spec in OPTIONS if spec.status == "refused"])
def test_every_refused_option_is_named_with_its_reason(folder: Path, name: str) -> None:
    spec = next(spec for spec in OPTIONS if spec.name == name)
    text = f"{name} = x\n{SERVER}" if spec.scope is Scope.GLOBAL else f"{SERVER}{name} = x\n"
    found = problem(folder, text)
    assert found.option == name
    assert name in found.message
    assert spec.reason in found.message
    assert "remove the line" in found.message


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("RNDfile = /dev/urandom", "RNDfile has no effect: OpenSSL seeds its own random generator"),
        ("RNDbytes = 64", "RNDbytes has no effect"),
        ("RNDoverwrite = no", "RNDoverwrite has no effect"),
    ],
)
def test_no_effect_options_give_notices(folder: Path, line: str, words: str) -> None:
    (notice,) = load(folder, line + "\n" + SERVER).notices
    assert words in notice
    assert notice.startswith(f"{folder / 'stunnel.conf'}:1: ")


def test_stack_has_no_effect(folder: Path) -> None:
    (notice,) = load(folder, SERVER + "stack = 65536\n").notices
    assert "stack has no effect" in notice


def test_no_effect_values_are_still_checked(folder: Path) -> None:
    assert "yes or no" in problem(folder, "RNDoverwrite = perhaps\n" + SERVER).message


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "[a]",
                "[b]",
                "accept = 1",
                "connect = x:2",
                "client = yes",
                "cert = c",
                "pid =",
                "verify = 2",
                "sni = a:b",
                "debug = mail.3",
                "options = -ALL",
                "sslVersion = all",
                "CAfile = /",
                "= x",
                "junk",
                "include = /nonexistent",
                "sslVersionMax = TLSv1",
            ]
        )
    )
)
def test_loading_never_fails_with_anything_but_config_error(lines: list[str]) -> None:
    try:
        load_text("\n".join(lines), "fuzz", "/nonexistent")
    except ConfigError as error:
        assert error.problems


def test_a_bad_default_is_reported_once_for_all_services(folder: Path) -> None:
    text = "verifyChain = yes\nverify = 0\n[a]\naccept = 1\nconnect = 2\ncert = cert.pem\n"
    with pytest.raises(ConfigError) as caught:
        load(folder, text + "[b]\naccept = 3\nconnect = 4\ncert = cert.pem\n")
    (found,) = caught.value.problems
    assert (found.line, found.option) == (1, "verifyChain")
