"""The option table and its value parsers."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest

from tlstunnel.config import options as opt
from tlstunnel.config.model import (
    Address,
    Failover,
    Foreground,
    LogMode,
    SocketOption,
    Transparent,
)
from tlstunnel.config.options import OPTIONS, BadValue, OptionSpec, Scope, lookup, suggest


def words(text: str) -> list[str]:
    return text.split()


# Every option ``stunnel4 -help`` (5.68) lists, plus the ones only its man page names.
STUNNEL_HELP_NAMES = words("""
chroot compression EGD engine engineCtrl engineDefault foreground log output pid RNDbytes
RNDfile RNDoverwrite syslog accept CAengine CApath CAfile cert checkEmail checkHost checkIP
ciphers ciphersuites client config connect CRLpath CRLfile curves debug delay engineId
engineNum exec execArgs failover ident include key libwrap local logId OCSP OCSPaia OCSPflag
OCSPnonce options protocol protocolAuthentication protocolDomain protocolHeader protocolHost
protocolPassword protocolUsername PSKidentity PSKsecrets pty redirect renegotiation
requireCert reset retry securityLevel service setgid setuid sessionCacheSize
sessionCacheTimeout sessionResume sessiond sni socket sslVersion sslVersionMax sslVersionMin
stack ticketKeySecret ticketMacSecret TIMEOUTbusy TIMEOUTclose TIMEOUTconnect TIMEOUTidle
transparent verify verifyChain verifyPeer
""")
MAN_PAGE_ONLY_NAMES = ["fips", "iconActive", "iconError", "iconIdle", "taskbar"]
# Rows still refused for want of an implementation; each must say so plainly.
NOT_YET = [spec.name for spec in OPTIONS if spec.reason == "not supported yet"]
NO_ENGINE = words("engine engineCtrl engineDefault engineId engineNum CAengine")
NO_EFFECT = ["RNDbytes", "RNDfile", "RNDoverwrite", "stack"]


def parse(spec: OptionSpec[Any], value: str, base_dir: str = "/") -> Any:
    return spec.parse(value, base_dir)


def bad(spec: OptionSpec[Any], value: str) -> str:
    with pytest.raises(BadValue) as caught:
        spec.parse(value, "/")
    return str(caught.value)


# --- the table ------------------------------------------------------------------------


@pytest.mark.parametrize("name", STUNNEL_HELP_NAMES + MAN_PAGE_ONLY_NAMES)
def test_every_stunnel_option_is_in_the_table_under_its_own_spelling(name: str) -> None:
    spec = lookup(name)
    assert spec is not None
    assert spec.name == name


def test_names_are_unique_regardless_of_case() -> None:
    names = [spec.name.lower() for spec in OPTIONS]
    assert len(names) == len(set(names))


def test_every_row_has_help_and_a_consistent_status() -> None:
    for spec in OPTIONS:
        assert spec.help, spec.name
        assert spec.status in ("supported", "no effect", "refused")
        if spec.status == "supported":
            assert spec.parser is not None and not spec.reason, spec.name
        else:
            assert spec.reason, spec.name
        if spec.status == "refused":
            assert spec.parser is None, spec.name


def test_no_option_is_left_unimplemented_without_a_reason() -> None:
    """Every refused row says why tlstunnel refuses it, never just "not supported yet"."""
    assert NOT_YET == []


@pytest.mark.parametrize("name", NO_ENGINE)
def test_engine_options_are_refused_for_lack_of_engine_support(name: str) -> None:
    spec = lookup(name)
    assert spec is not None and spec.status == "refused"
    assert "ENGINE" in spec.reason


@pytest.mark.parametrize("name", ["iconActive", "iconError", "iconIdle", "taskbar"])
def test_windows_gui_options_are_refused(name: str) -> None:
    spec = lookup(name)
    assert spec is not None and spec.status == "refused"
    assert "Windows" in spec.reason


def test_compression_is_refused_as_insecure() -> None:
    spec = lookup("compression")
    assert spec is not None and spec.status == "refused"
    assert "insecure" in spec.reason


@pytest.mark.parametrize("name", NO_EFFECT)
def test_no_effect_options(name: str) -> None:
    spec = lookup(name)
    assert spec is not None and spec.status == "no effect"


def test_scopes() -> None:
    assert opt.PID.scope is Scope.GLOBAL
    assert opt.SETUID.scope is Scope.BOTH  # privileges globally, socket owner in a section
    assert opt.MAX_CONNECTIONS.scope is Scope.BOTH
    assert opt.CHROOT.scope is Scope.GLOBAL and opt.TIMEOUT_DRAIN.scope is Scope.GLOBAL
    assert opt.EXEC.scope is Scope.SERVICE
    assert opt.DEBUG.scope is Scope.BOTH
    assert opt.CONNECT.scope is Scope.SERVICE
    assert opt.CONNECT.repeatable and opt.SOCKET.repeatable and opt.TLS_OPTIONS.repeatable
    assert not opt.CERT.repeatable


def test_lookup_ignores_case_and_unknown_names_give_none() -> None:
    assert lookup("capath") is opt.CA_PATH
    assert lookup("TIMEOUTIDLE") is opt.TIMEOUT_IDLE
    assert lookup("nonsense") is None


def test_suggest_finds_typos_but_not_nonsense() -> None:
    assert suggest("conect") == "connect"
    assert suggest("verifychian") == "verifyChain"
    assert suggest("zzzzzz") is None


def test_the_help_text_mentions_the_secure_minimum_version() -> None:
    assert opt.SSL_VERSION_MIN.default_text == "TLSv1.2"
    assert "secure" in opt.SSL_VERSION_MIN.help


# --- addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("443", Address(None, 443)),
        ("127.0.0.1:8443", Address("127.0.0.1", 8443)),
        ("example.com:443", Address("example.com", 443)),
        ("[::1]:443", Address("::1", 443)),
        ("[fe80::1%eth0]:80", Address("fe80::1%eth0", 80)),
        (":::443", Address("::", 443)),
        ("::1:443", Address("::1", 443)),
        ("localhost:https", Address("localhost", 443)),
        ("https", Address(None, 443)),
        ("0", Address(None, 0)),
        ("65535", Address(None, 65535)),
    ],
)
def test_accept_addresses(text: str, address: Address) -> None:
    assert parse(opt.ACCEPT, text) == address


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "[HOST:]PORT"),
        ("65536", "out of range"),
        ("host:", "needs a port"),
        ("/" + "x" * 200, "at most 107"),
        ("[::1]", "[IPv6-ADDRESS]:PORT"),
        ("[::1]443", "[IPv6-ADDRESS]:PORT"),
        ("[localhost]:443", "[IPv6-ADDRESS]:PORT"),
        ("1::2::3:443", "not a valid IPv6 address"),
        ("fe80::1", "has no port; write [fe80::1]:PORT"),
        ("300.1.1.1:443", "not a valid IPv4 address"),
        ("bad host:443", "not a valid host name"),
        ("host:nosuchservice", "known service name"),
        ("host:44 3", "not a port"),
    ],
)
def test_bad_addresses_say_what_is_wrong(text: str, words: str) -> None:
    assert words in bad(opt.ACCEPT, text)


@pytest.mark.parametrize("spec", [opt.ACCEPT, opt.CONNECT])
def test_a_path_is_a_unix_socket(spec: OptionSpec[Address]) -> None:
    address = parse(spec, "/run/stunnel//web.sock")
    assert address == Address(None, 0, "/run/stunnel/web.sock")
    assert str(address) == "/run/stunnel/web.sock"


def test_port_zero_is_for_accept_only() -> None:
    assert "1 to 65535" in bad(opt.CONNECT, "host:0")


# --- simple values --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("yes", True), ("NO", False), ("Yes", True)])
def test_yes_no_ignores_case(text: str, value: bool) -> None:
    assert parse(opt.CLIENT, text) is value


@pytest.mark.parametrize("text", ["", "true", "1", "on"])
def test_yes_no_rejects_anything_else_naming_the_choices(text: str) -> None:
    assert "yes or no" in bad(opt.CLIENT, text)


def test_timeouts_are_whole_non_negative_seconds() -> None:
    assert parse(opt.TIMEOUT_IDLE, "0") == 0.0
    assert parse(opt.TIMEOUT_CONNECT, "15") == 15.0
    for text in ("-1", "1.5", "ten", ""):
        assert "whole number" in bad(opt.TIMEOUT_BUSY, text)


def test_security_level_range() -> None:
    assert parse(opt.SECURITY_LEVEL, "5") == 5
    assert "out of range" in bad(opt.SECURITY_LEVEL, "6")


def test_choices() -> None:
    assert parse(opt.FAILOVER, "RR") is Failover.RR
    assert parse(opt.FOREGROUND, "quiet") is Foreground.QUIET
    assert parse(opt.LOG, "overwrite") is LogMode.OVERWRITE
    assert "rr or prio" in bad(opt.FAILOVER, "random")
    assert "yes, quiet or no" in bad(opt.FOREGROUND, "maybe")


def test_verify_levels_are_zero_to_four() -> None:
    assert [parse(opt.VERIFY, str(level)) for level in range(5)] == [0, 1, 2, 3, 4]
    assert "0, 1, 2, 3 or 4" in bad(opt.VERIFY, "5")
    assert "0, 1, 2, 3 or 4" in bad(opt.VERIFY, "none")


def test_check_ip_must_be_an_address() -> None:
    assert parse(opt.CHECK_IP, "2001:db8::1") == "2001:db8::1"
    assert "not an IPv4 or IPv6 address" in bad(opt.CHECK_IP, "host.example")


def test_fips_only_accepts_no() -> None:
    assert parse(opt.FIPS, "no") is False
    assert "not supported" in bad(opt.FIPS, "yes")
    assert "yes or no" in bad(opt.FIPS, "maybe")


def test_log_id_only_sequential() -> None:
    assert parse(opt.LOG_ID, "Sequential") == "sequential"
    assert "not supported yet" in bad(opt.LOG_ID, "unique")
    assert "write sequential" in bad(opt.LOG_ID, "random")


def test_pid_may_be_empty_for_none() -> None:
    assert parse(opt.PID, "") is None
    assert parse(opt.PID, "run/x.pid", "/srv") == "/srv/run/x.pid"


# --- TLS versions and options ---------------------------------------------------------


def test_tls_versions() -> None:
    assert parse(opt.SSL_VERSION, "all") is None
    assert parse(opt.SSL_VERSION_MIN, "TLSv1.3") is ssl.TLSVersion.TLSv1_3
    assert parse(opt.SSL_VERSION_MAX, "tlsv1.1") is ssl.TLSVersion.TLSv1_1
    assert parse(opt.SSL_VERSION, "TLSv1") is ssl.TLSVersion.TLSv1
    assert "not available" in bad(opt.SSL_VERSION, "SSLv3")
    assert "not available" in bad(opt.SSL_VERSION_MIN, "SSLv2")
    assert "TLSv1.2" in bad(opt.SSL_VERSION_MAX, "TLSv2")


def test_tls_options_set_and_clear() -> None:
    assert parse(opt.TLS_OPTIONS, "NO_TICKET") == opt.TlsOptionChange("NO_TICKET", True)
    assert parse(opt.TLS_OPTIONS, "-no_tlsv1_3") == opt.TlsOptionChange("NO_TLSv1_3", False)


def test_tls_option_names_are_checked() -> None:
    assert "without the SSL_OP_ prefix: NO_TICKET" in bad(opt.TLS_OPTIONS, "SSL_OP_NO_TICKET")
    assert "did you mean 'NO_TICKET'?" in bad(opt.TLS_OPTIONS, "NO_TICKETS")
    assert "not a known OpenSSL option" in bad(opt.TLS_OPTIONS, "FLY")


# --- debug and socket -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "level", "facility"),
    [
        ("7", 7, None),
        ("notice", 5, None),
        ("Info", 6, None),
        ("daemon.err", 3, "daemon"),
        ("LOCAL0.debug", 7, "local0"),
        ("auth.0", 0, "auth"),
    ],
)
def test_debug_levels(text: str, level: int, facility: str | None) -> None:
    assert parse(opt.DEBUG, text) == opt.DebugLevel(level, facility)


@pytest.mark.parametrize(
    ("text", "words"), [("8", "not a log level"), ("loud", "emerg"), ("nope.info", "facility")]
)
def test_bad_debug_levels(text: str, words: str) -> None:
    assert words in bad(opt.DEBUG, text)


@pytest.mark.parametrize(
    ("text", "option"),
    [
        ("l:SO_LINGER=1:60", SocketOption("l", "SO_LINGER", (1, 60))),
        ("a:SO_LINGER=1", SocketOption("a", "SO_LINGER", (1, 0))),
        ("r:SO_RCVTIMEO=5:250", SocketOption("r", "SO_RCVTIMEO", (5, 250))),
        ("r:SO_OOBINLINE=yes", SocketOption("r", "SO_OOBINLINE", 1)),
        ("a:SO_REUSEADDR=no", SocketOption("a", "SO_REUSEADDR", 0)),
        ("a:SO_BINDTODEVICE=lo", SocketOption("a", "SO_BINDTODEVICE", "lo")),
        ("l:TCP_NODELAY=1", SocketOption("l", "TCP_NODELAY", 1)),
        ("r:so_rcvbuf=65536", SocketOption("r", "SO_RCVBUF", 65536)),
    ],
)
def test_socket_options(text: str, option: SocketOption) -> None:
    assert parse(opt.SOCKET, text) == option


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("x:SO_KEEPALIVE=yes", "a|l|r:OPTION=VALUE"),
        ("SO_KEEPALIVE=yes", "a|l|r:OPTION=VALUE"),
        ("a:SO_KEEPALIVE", "a|l|r:OPTION=VALUE"),
        ("a:SO_KEEPALIFE=yes", "did you mean 'SO_KEEPALIVE'?"),
        ("a:SO_RCVBUF=yes", "whole number"),
        ("a:SO_LINGER=1:x", "whole number"),
        ("a:SO_BINDTODEVICE=", "needs a value"),
    ],
)
def test_bad_socket_options(text: str, words: str) -> None:
    assert words in bad(opt.SOCKET, text)


# --- exec and the options of this round -----------------------------------------------


def test_exec_args_split_on_any_whitespace_without_quoting() -> None:
    assert parse(opt.EXEC_ARGS, "pppd  local\t'a b'") == ("pppd", "local", "'a", "b'")
    assert "$0" in bad(opt.EXEC_ARGS, "")


def test_exec_is_resolved_against_the_file_folder() -> None:
    assert parse(opt.EXEC, "bin/imapd", "/etc/stunnel") == "/etc/stunnel/bin/imapd"
    assert parse(opt.EXEC, "/usr/sbin/imapd", "/etc/stunnel") == "/usr/sbin/imapd"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("none", Transparent.NONE),
        ("Source", Transparent.SOURCE),
        ("destination", Transparent.DESTINATION),
        ("both", Transparent.BOTH),
        ("yes", Transparent.SOURCE),  # stunnel's legacy spellings
        ("no", Transparent.NONE),
    ],
)
def test_transparent_modes(text: str, value: Transparent) -> None:
    assert parse(opt.TRANSPARENT, text) is value


def test_local_takes_an_address_or_a_name() -> None:
    assert parse(opt.LOCAL, "192.0.2.7") == "192.0.2.7"
    assert parse(opt.LOCAL, "[2001:db8::7]") == "2001:db8::7"
    assert parse(opt.LOCAL, "gateway.example") == "gateway.example"
    assert "not a valid IPv4 address" in bad(opt.LOCAL, "300.1.1.1")
    assert "not a valid host name" in bad(opt.LOCAL, "bad host")


def test_max_connections_is_a_positive_number() -> None:
    assert parse(opt.MAX_CONNECTIONS, "500") == 500
    assert "at least 1" in bad(opt.MAX_CONNECTIONS, "0")
    assert "whole number" in bad(opt.MAX_CONNECTIONS, "-3")


def test_chroot_must_be_an_existing_folder(tmp_path: Path) -> None:
    assert parse(opt.CHROOT, str(tmp_path)) == str(tmp_path)
    assert "chroot folder" in bad(opt.CHROOT, str(tmp_path / "missing"))


def test_defaults_of_this_round() -> None:
    assert (opt.RESET.default_text, opt.TIMEOUT_DRAIN.default_text) == ("yes", "0")
    assert opt.PTY.default_text == opt.RETRY.default_text == "no"
