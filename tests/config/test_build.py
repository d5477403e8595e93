"""Building the model: defaults, global inheritance, inetd mode and cross-option rules."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from tlstunnel.config import load_file
from tlstunnel.config.model import (
    Address,
    Failover,
    Foreground,
    LogLevel,
    LogMode,
    SocketOption,
)

from .helpers import CLIENT, SERVER, load, problem, problems, service

# --- a plain service and its defaults -------------------------------------------------


def test_a_server_service_with_defaults(folder: Path) -> None:
    result = load(folder, SERVER)
    config = result.config
    assert result.notices == ()
    assert config.source == str(folder / "stunnel.conf")
    assert config.inetd is False
    (web,) = config.services
    assert web.name == "web"
    assert web.location.line == 1
    assert web.client is False
    assert web.accept == (Address(None, 8443),)
    assert web.connect == (Address(None, 8080),)
    assert web.cert == str(folder / "cert.pem")
    assert web.key == web.cert
    assert web.min_version is ssl.TLSVersion.TLSv1_2
    assert web.max_version is None
    assert (web.verify_chain, web.verify_peer, web.require_cert) == (False, False, False)
    assert (web.timeout_busy, web.timeout_close, web.timeout_connect, web.timeout_idle) == (
        300.0,
        60.0,
        10.0,
        43200.0,
    )
    assert web.failover is Failover.PRIO
    assert web.log_level == LogLevel(5, "daemon")
    assert config.globals.foreground is Foreground.NO
    assert config.globals.service_name == "stunnel"
    assert config.globals.syslog is True


def test_a_client_service_needs_no_certificate(folder: Path) -> None:
    out = service(folder, CLIENT)
    assert out.client is True
    assert out.cert is None and out.key is None
    assert out.connect == (Address("example.com", 443),)


def test_a_server_without_cert_is_refused_as_stunnel_words_it(folder: Path) -> None:
    found = problem(folder, "[web]\naccept = 1\nconnect = 2\n")
    assert found.line == 1
    assert "TLS server needs a certificate" in found.message
    assert "cert = FILE" in found.message


def test_accept_and_connect_are_required(folder: Path) -> None:
    found = problems(folder, "[web]\ncert = cert.pem\n")
    assert [p.line for p in found] == [1, 1]
    assert "needs accept" in found[0].message
    assert "needs connect" in found[1].message


def test_several_accept_and_connect_lines_keep_their_order(folder: Path) -> None:
    text = SERVER + "accept = [::1]:8443\nconnect = b:2\nfailover = rr\n"
    web = service(folder, text)
    assert web.accept == (Address(None, 8443), Address("::1", 8443))
    assert web.connect == (Address(None, 8080), Address("b", 2))
    assert web.failover is Failover.RR


def test_key_and_trust_paths(folder: Path) -> None:
    text = SERVER + "key = key.pem\nCAfile = ca.pem\nCApath = cadir\n"
    web = service(folder, text)
    assert web.key == str(folder / "key.pem")
    assert web.ca_file == str(folder / "ca.pem")
    assert web.ca_path == str(folder / "cadir")


def test_a_later_line_of_a_single_valued_option_wins(folder: Path) -> None:
    web = service(folder, SERVER + "TIMEOUTidle = 5\nTIMEOUTidle = 7\n")
    assert web.timeout_idle == 7.0


def test_option_names_ignore_case(folder: Path) -> None:
    web = service(folder, "[web]\nACCEPT = 1\nConnect = 2\nCERT = cert.pem\nciphers = HIGH\n")
    assert web.accept == (Address(None, 1),)
    assert web.ciphers == "HIGH"


def test_comments_and_byte_order_mark(folder: Path) -> None:
    (folder / "stunnel.conf").write_bytes(b"\xef\xbb\xbf; comment\n# comment\n\n" + SERVER.encode())
    config = load_file(str(folder / "stunnel.conf")).config
    assert config.services[0].location.line == 4


# --- global options and defaults ------------------------------------------------------


def test_global_options(folder: Path) -> None:
    text = (
        "foreground = quiet\npid = run/tls.pid\noutput = tls.log\nlog = overwrite\n"
        "syslog = no\nsetuid = nobody\nsetgid = nogroup\nservice = tunnel\ndebug = local1.info\n"
        "fips = no\n" + SERVER
    )
    config = load(folder, text).config
    globals_ = config.globals
    assert globals_.foreground is Foreground.QUIET
    assert globals_.pid_file == str(folder / "run" / "tls.pid")
    assert globals_.output == str(folder / "tls.log")
    assert globals_.log_mode is LogMode.OVERWRITE
    assert globals_.syslog is False
    assert (globals_.setuid, globals_.setgid) == ("nobody", "nogroup")
    assert globals_.service_name == "tunnel"
    assert globals_.log_level == LogLevel(6, "local1")
    assert config.services[0].log_level == LogLevel(6, "local1")


def test_an_empty_pid_means_no_pid_file(folder: Path) -> None:
    assert load(folder, "pid =\n" + SERVER).config.globals.pid_file is None


def test_service_options_above_the_first_section_are_defaults(folder: Path) -> None:
    text = (
        "cert = cert.pem\nTIMEOUTidle = 60\nconnect = a:1\nconnect = b:2\ncheckHost = x.test\n"
        "[one]\naccept = 1\n"
        "[two]\naccept = 2\nTIMEOUTidle = 5\nconnect = c:3\n"
    )
    one, two = load(folder, text).config.services
    assert one.cert == two.cert == str(folder / "cert.pem")
    assert one.timeout_idle == 60.0
    assert one.connect == (Address("a", 1), Address("b", 2))
    assert two.timeout_idle == 5.0
    assert two.connect == (Address("c", 3),)  # its own lines replace the whole global list
    assert one.check_host == two.check_host == ("x.test",)


def test_global_options_list_replaced_per_service(folder: Path) -> None:
    text = "options = NO_TICKET\nsocket = l:TCP_NODELAY=yes\n" + SERVER + "options = -NO_TICKET\n"
    web = service(folder, text)
    assert web.options_set == ()
    assert web.options_clear == ("NO_TICKET",)
    assert web.socket_options == (SocketOption("l", "TCP_NODELAY", 1),)


def test_service_debug_level_keeps_the_global_facility(folder: Path) -> None:
    web = service(folder, "debug = mail.err\n" + SERVER + "debug = debug\n")
    assert web.log_level == LogLevel(7, "mail")


def test_a_facility_in_a_service_is_a_problem(folder: Path) -> None:
    found = problem(folder, SERVER + "debug = daemon.info\n")
    assert (found.line, found.option) == (5, "debug")
    assert "above the first [section]" in found.message
    assert "debug = 6" in found.message


def test_a_global_option_in_a_service_names_both(folder: Path) -> None:
    found = problem(folder, SERVER + "pid = /run/x.pid\n")
    assert (found.line, found.option) == (5, "pid")
    assert found.message == "pid is a global option; move it above the first [section]"


def test_setuid_in_a_service_owns_its_unix_socket(folder: Path) -> None:
    text = "[web]\naccept = /run/web.sock\nconnect = 1\ncert = cert.pem\n"
    result = load(folder, text + "setuid = www\nsetgid = www-data\n")
    (web,) = result.config.services
    assert (web.socket_user, web.socket_group) == ("www", "www-data")
    assert result.config.globals.setuid is None  # not a privilege drop
    assert result.notices == ()


def test_setuid_in_a_service_without_a_unix_socket_explains_itself(folder: Path) -> None:
    (notice,) = load(folder, SERVER + "setuid = nobody\n").notices
    assert "has no effect here" in notice
    assert "Unix accept socket" in notice
    assert "move it above the first [section]" in notice


def test_service_option_inside_a_section_has_no_effect(folder: Path) -> None:
    result = load(folder, SERVER + "service = other\n")
    assert result.config.globals.service_name == "stunnel"
    (notice,) = result.notices
    assert "service has no effect in a service section" in notice


def test_duplicate_service_names_are_a_problem(folder: Path) -> None:
    found = problem(folder, SERVER + "\n" + SERVER)
    assert found.line == 6
    assert "[web] is already defined at" in found.message
    assert f"{folder / 'stunnel.conf'}:1" in found.message


# --- inetd mode -----------------------------------------------------------------------


def test_a_file_without_sections_is_inetd_mode(folder: Path) -> None:
    config = load(folder, "cert = cert.pem\nconnect = 143\n").config
    assert config.inetd is True
    (only,) = config.services
    assert only.name == "stunnel"
    assert only.accept == ()
    assert only.connect == (Address(None, 143),)


def test_inetd_service_is_named_by_the_service_option(folder: Path) -> None:
    config = load(folder, "service = imaps\naccept = 993\nconnect = 143\ncert = cert.pem\n").config
    assert config.inetd is True
    assert config.services[0].name == "imaps"
    assert config.services[0].accept == (Address(None, 993),)


def test_inetd_mode_still_needs_connect_and_a_certificate(folder: Path) -> None:
    found = problems(folder, "foreground = yes\n")
    assert len(found) == 2
    assert "inetd mode" in found[0].message and "needs connect" in found[0].message
    assert "TLS server needs a certificate" in found[1].message


# --- verification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ("0", (False, False, False)),
        ("1", (True, False, False)),
        ("2", (True, False, True)),
        ("3", (True, True, True)),
        ("4", (False, True, True)),
    ],
)
def test_legacy_verify_levels(folder: Path, level: str, expected: tuple[bool, ...]) -> None:
    web = service(folder, SERVER + f"CAfile = ca.pem\nverify = {level}\n")
    assert (web.verify_chain, web.verify_peer, web.require_cert) == expected


def test_verify_zero_in_server_mode_explains_itself(folder: Path) -> None:
    (notice,) = load(folder, SERVER + "verify = 0\n").notices
    assert "verify = 0" in notice and "cannot request one and then ignore it" in notice


def test_verify_chain_implies_require_cert(folder: Path) -> None:
    web = service(folder, SERVER + "CAfile = ca.pem\nverifyChain = yes\n")
    assert (web.verify_chain, web.verify_peer, web.require_cert) == (True, False, True)


def test_explicit_require_cert_no_wins(folder: Path) -> None:
    web = service(folder, SERVER + "CApath = cadir\nrequireCert = no\nverifyPeer = yes\n")
    assert (web.verify_chain, web.verify_peer, web.require_cert) == (False, True, False)


def test_client_mode_verification_always_requires_the_server_certificate(folder: Path) -> None:
    out = service(folder, CLIENT + "CAfile = ca.pem\nverify = 1\ncheckHost = example.com\n")
    assert (out.verify_chain, out.require_cert) == (True, True)
    assert out.check_host == ("example.com",)


@pytest.mark.parametrize("line", ["verifyChain = yes", "verifyPeer = yes", "verify = 2"])
def test_verification_needs_trusted_certificates(folder: Path, line: str) -> None:
    found = problem(folder, SERVER + line + "\n")
    assert found.line == 5
    assert found.option == line.split(maxsplit=1)[0]
    assert "needs CAfile = FILE or CApath = DIRECTORY" in found.message


def test_a_missing_ca_file_is_reported_once(folder: Path) -> None:
    found = problem(folder, SERVER + "CAfile = absent.pem\nverifyChain = yes\n")
    assert found.option == "CAfile"
    assert str(folder / "absent.pem") in found.message


def test_check_ip_and_email(folder: Path) -> None:
    web = service(folder, SERVER + "checkIP = 192.0.2.1\ncheckIP = ::1\ncheckEmail = a@b.test\n")
    assert web.check_ip == ("192.0.2.1", "::1")
    assert web.check_email == ("a@b.test",)


# --- TLS versions, algorithms and options ---------------------------------------------


def test_ssl_version_sets_both_bounds(folder: Path) -> None:
    web = service(folder, SERVER + "sslVersion = TLSv1.3\n")
    assert (web.min_version, web.max_version) == (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_3)


def test_ssl_version_all_means_no_bound(folder: Path) -> None:
    web = service(folder, SERVER + "sslVersion = all\n")
    assert (web.min_version, web.max_version) == (None, None)


def test_min_and_max_versions(folder: Path) -> None:
    web = service(folder, SERVER + "sslVersionMin = TLSv1.1\nsslVersionMax = TLSv1.2\n")
    assert (web.min_version, web.max_version) == (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2)


def test_versions_apply_in_written_order(folder: Path) -> None:
    web = service(folder, SERVER + "sslVersion = TLSv1.2\nsslVersionMax = TLSv1.3\n")
    assert (web.min_version, web.max_version) == (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)


def test_min_above_max_is_a_problem(folder: Path) -> None:
    found = problem(folder, SERVER + "sslVersionMin = TLSv1.3\nsslVersionMax = TLSv1.2\n")
    assert (found.line, found.option) == (6, "sslVersionMax")
    assert "above the highest" in found.message


def test_max_below_the_default_minimum_says_how_to_allow_it(folder: Path) -> None:
    found = problem(folder, SERVER + "sslVersionMax = TLSv1.1\n")
    assert "default minimum TLSv1.2" in found.message
    assert "sslVersionMin = TLSv1.1" in found.message


def test_sslv3_is_refused(folder: Path) -> None:
    assert "not available" in problem(folder, SERVER + "sslVersion = SSLv3\n").message


def test_algorithms_pass_through(folder: Path) -> None:
    text = SERVER + "ciphers = HIGH:!aNULL\nciphersuites = TLS_AES_128_GCM_SHA256\n"
    web = service(folder, text + "curves = X25519:P-256\nsecurityLevel = 3\n")
    assert (web.ciphers, web.ciphersuites, web.curves) == (
        "HIGH:!aNULL",
        "TLS_AES_128_GCM_SHA256",
        "X25519:P-256",
    )
    assert web.security_level == 3


def test_tls_options_later_lines_win(folder: Path) -> None:
    text = SERVER + "options = NO_TICKET\noptions = -NO_COMPRESSION\noptions = -NO_TICKET\n"
    web = service(folder, text + "options = CIPHER_SERVER_PREFERENCE\n")
    assert web.options_set == ("CIPHER_SERVER_PREFERENCE",)
    assert web.options_clear == ("NO_COMPRESSION", "NO_TICKET")


@pytest.mark.parametrize(
    ("value", "set_", "clear"),
    [("no", ("NO_RENEGOTIATION",), ()), ("yes", (), ("NO_RENEGOTIATION",))],
)
def test_renegotiation(
    folder: Path, value: str, set_: tuple[str, ...], clear: tuple[str, ...]
) -> None:
    web = service(folder, SERVER + f"options = NO_RENEGOTIATION\nrenegotiation = {value}\n")
    assert (web.options_set, web.options_clear) == (set_, clear)


# --- SNI, sockets, timeouts and other service values ----------------------------------


def test_client_sni(folder: Path) -> None:
    assert service(folder, CLIENT).sni is None
    assert service(folder, CLIENT + "sni = name.test\n").sni == "name.test"
    assert service(folder, CLIENT + "sni =\n").sni == ""


VIRTUAL = "[shop]\nsni = web:shop.example.com\nsni = web:*.shop.example\nconnect = 9000\n"


def test_server_mode_sni_makes_a_virtual_service_of_the_primary(folder: Path) -> None:
    result = load(folder, SERVER + VIRTUAL + "cert = cert.pem\n")
    web, shop = result.config.services
    assert (web.sni_primary, web.sni_patterns) == (None, ())
    assert shop.sni_primary == "web"
    assert shop.sni_patterns == ("shop.example.com", "*.shop.example")
    assert shop.accept == ()  # a virtual service needs no accept of its own
    assert shop.sni is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[shop]\nsni = nothere:a.example\nconnect = 9\ncert = cert.pem\n", "not a service"),
        ("[shop]\nsni = a.example\nconnect = 9\ncert = cert.pem\n", "SERVICE:PATTERN"),
        ("[shop]\nsni = web:a.*.example\nconnect = 9\ncert = cert.pem\n", "only start"),
        ("[shop]\nsni = web:a\nsni = other:b\nconnect = 9\ncert = cert.pem\n", "one primary"),
    ],
)
def test_virtual_service_mistakes(folder: Path, text: str, words: str) -> None:
    found = problem(folder, SERVER + text)
    assert found.option == "sni"
    assert words in found.message


def test_a_client_sends_one_server_name(folder: Path) -> None:
    found = problem(folder, CLIENT + "sni = a.test\nsni = b.test\n")
    assert "one sni line" in found.message


def test_sockets_timeouts_delay(folder: Path) -> None:
    text = SERVER + "socket = a:SO_REUSEADDR=no\nsocket = r:SO_LINGER=1:5\nTIMEOUTclose = 0\n"
    web = service(folder, text + "TIMEOUTconnect = 3\nTIMEOUTbusy = 30\ndelay = yes\n")
    assert web.socket_options == (
        SocketOption("a", "SO_REUSEADDR", 0),
        SocketOption("r", "SO_LINGER", (1, 5)),
    )
    assert (web.timeout_close, web.timeout_connect, web.timeout_busy) == (0.0, 3.0, 30.0)
    assert web.delay is True


def test_log_id_sequential_is_accepted(folder: Path) -> None:
    assert service(folder, SERVER + "logId = sequential\n").name == "web"
    assert "not supported yet" in problem(folder, SERVER + "logId = unique\n").message


def test_fips_yes_is_refused(folder: Path) -> None:
    found = problem(folder, "fips = yes\n" + SERVER)
    assert (found.line, found.option) == (1, "fips")
    assert "FIPS mode is not supported" in found.message
