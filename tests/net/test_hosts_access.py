"""The hosts_access(5) language without libwrap: parsing, matching, deciding.

Pure tests of ``tlstunnel.net.hosts_access``, then two property tests: the parser
never fails on any text, and on random rule sets and clients our verdict is the one
the real libwrap (Debian's libwrap.so.0, loaded with ctypes, its table paths pointed
at temporary files) gives.  The differential test carries the ``interop`` mark: the
library comes with stunnel4, which scripts/test installs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlstunnel.net.hosts_access import (
    Decision,
    Host,
    NeedName,
    PatternFile,
    Request,
    Table,
    decide,
    normalise_address,
    parse_pattern_file,
    parse_table,
)

EMPTY = Table("/empty")


def _request(
    address: str | None,
    name: str | None = None,
    daemon: str = "svc",
    server: str | None = None,
    server_name: str | None = None,
) -> Request:
    request = Request(daemon, Host.at(address), Host.at(server))
    if name is not None:
        request = request.named("client", name)
    if server_name is not None:
        request = request.named("server", server_name)
    return request


def _allowed_by(
    rules: str, request: Request, files: dict[str, PatternFile] | None = None
) -> Decision:
    """Decide with ``rules`` as hosts.deny behind an empty hosts.allow."""
    return decide(EMPTY, parse_table(rules, "/deny"), request, files)


def _denies(rules: str, request: Request) -> bool:
    return not _allowed_by(rules, request).allowed


# --- reading files ------------------------------------------------------------------------


def test_comments_blank_lines_and_continuations() -> None:
    table = parse_table(
        "# a comment\n\n   \nsvc, other : \\\n 10.0.0.1 \\\n 10.0.0.2\nALL: 192.0.2.9\n",
        "/etc/hosts.deny",
    )
    assert [rule.line for rule in table.rules] == [4, 7]
    assert table.warnings == ()
    assert _denies(table_text := "svc: 10.0.0.1 \\\n 10.0.0.2\n", _request("10.0.0.2"))
    assert not _denies(table_text, _request("10.0.0.3"))


def test_a_comment_must_start_in_the_first_column() -> None:
    # libwrap: " # x: y" is a rule for daemons "#" and "x"; without a colon it is skipped.
    table = parse_table("  # no colon here\n", "/h")
    assert table.rules == ()
    assert table.warnings == ('/h:1: missing ":" separator; the line is skipped',)


def test_a_last_line_without_newline_counts() -> None:
    assert _denies("ALL: ALL", _request("192.0.2.1"))
    assert _denies("ALL: ALL\\\n", _request("192.0.2.1"))


def test_ipv6_brackets_do_not_split_fields() -> None:
    table = parse_table("svc: [2001:db8::1] [2001:db8:1::]/48 : deny\n", "/h")
    assert len(table.rules) == 1
    assert table.rules[0].verdict is False
    assert _denies("svc: [2001:db8::1] [2001:db8:1::]/48\n", _request("2001:db8:1::7"))


def test_only_a_newline_ends_a_line() -> None:
    # A form feed or a lone CR is not a line break for libwrap's fgets.
    table = parse_table("svc: 10.0.0.1\r\nsvc: 10.0.0.2\x0cALL\n", "/h")
    assert [rule.line for rule in table.rules] == [1, 2]


# --- patterns -----------------------------------------------------------------------------

ADDRESS_CASES = [
    ("ALL", "192.0.2.1", True),
    ("192.0.2.1", "192.0.2.1", True),
    ("192.0.2.1", "192.0.2.10", False),
    ("192.0.2.", "192.0.2.10", True),  # prefix
    ("192.0.2.", "192.0.20.1", False),
    ("192.0.2.0/255.255.255.0", "192.0.2.77", True),
    ("192.0.2.0/255.255.255.0", "192.0.3.77", False),
    ("192.0.2.0/24", "192.0.2.77", True),
    ("192.0.2.0/24", "192.0.3.1", False),
    ("192.0.2.1/24", "192.0.2.1", False),  # libwrap: the net is compared unmasked
    ("192.0.2.1/32", "192.0.2.1", True),
    ("192.0.2.1/255.255.255.255", "192.0.2.1", False),  # not a valid mask in libwrap
    ("0.0.0.0/0.0.0.0", "203.0.113.9", True),
    ("0.0.0.0/0", "203.0.113.9", False),  # /0 is not a valid length for IPv4
    ("192.0.2.0/33", "192.0.2.1", False),
    ("192.0.2.1?", "192.0.2.15", True),  # wildcards
    ("192.0.*.1", "192.0.77.1", True),
    ("[::1]", "::1", True),
    ("[0:0::1]", "::1", True),  # compared as numbers
    ("[::1]", "::2", False),
    ("[2001:db8::]/32", "2001:db8:ff::1", True),
    ("[2001:db8::]/32", "2001:db9::1", False),
    ("[2001:db8::5]/64", "2001:db8::9", True),  # IPv6: both sides masked
    ("[::]/0", "2001:db8::9", True),
    ("[::]/0", "192.0.2.1", False),  # an IPv6 pattern never matches an IPv4 client
    ("192.0.2.0/24", "2001:db8::1", False),
    ("192.0.2.7", "::ffff:192.0.2.7", True),  # IPv4-mapped clients are IPv4
    ("192.0.2.0/24", "::ffff:192.0.2.7", True),
    ("[::ffff:192.0.2.7]", "::ffff:192.0.2.7", False),  # ...so this never matches
    ("@netgroup", "192.0.2.1", False),
    ("/nonexistent", "192.0.2.1", False),
]


@pytest.mark.parametrize(("pattern", "address", "matches"), ADDRESS_CASES)
def test_address_patterns_need_no_name(pattern: str, address: str, matches: bool) -> None:
    # No name in the request: a NeedName here would mean a pointless DNS query.
    assert _denies(f"svc: {pattern}\n", _request(address)) is matches


NAME_CASES = [
    ("LOCAL", "box", True),
    ("LOCAL", "box.example.com", False),
    ("LOCAL", "unknown", False),
    ("LOCAL", "paranoid", False),
    ("KNOWN", "box.example.com", True),
    ("KNOWN", "unknown", False),
    ("KNOWN", "paranoid", False),
    ("UNKNOWN", "unknown", True),
    ("UNKNOWN", "box", False),
    ("PARANOID", "paranoid", True),
    ("PARANOID", "box", False),
    (".example.com", "box.example.com", True),
    (".example.com", "example.com", False),
    (".EXAMPLE.com", "Box.Example.COM", True),  # case does not matter
    ("box.example.com", "BOX.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("b?x", "box", True),
    ("box.", "box.example.com", True),  # a prefix matches names too
]


@pytest.mark.parametrize(("pattern", "name", "matches"), NAME_CASES)
def test_name_patterns(pattern: str, name: str, matches: bool) -> None:
    rules = f"svc: {pattern}\n"
    with pytest.raises(NeedName) as need:
        _allowed_by(rules, _request("192.0.2.1"))
    assert need.value.side == "client"
    assert _denies(rules, _request("192.0.2.1", name)) is matches


def test_a_name_is_only_needed_when_the_daemon_list_matches() -> None:
    assert not _denies("other: .example.com\n", _request("192.0.2.1"))


def test_an_address_match_needs_no_name() -> None:
    assert _denies("svc: 192.0.2.1 .example.com\n", _request("192.0.2.1"))


def test_bracketed_patterns_never_ask_for_a_name() -> None:
    assert not _denies("svc: [2001:db8::1]\n", _request("192.0.2.1"))


def test_unix_socket_clients_have_an_unknown_address() -> None:
    assert _denies("svc: UNKNOWN\n", _request(None))
    assert not _denies("svc: KNOWN\n", _request(None))  # no lookup: the address is unknown


def test_except_nests_to_the_right() -> None:
    rules = "svc: 10.0.0.0/8 EXCEPT 10.1.0.0/16 EXCEPT 10.1.2.3\n"
    assert _denies(rules, _request("10.9.9.9"))
    assert not _denies(rules, _request("10.1.9.9"))
    assert _denies(rules, _request("10.1.2.3"))  # 10/8 except (10.1/16 except 10.1.2.3)
    assert not _denies("svc: EXCEPT 10.0.0.1\n", _request("10.0.0.1"))
    assert _denies("svc: ALL EXCEPT\n", _request("10.0.0.1"))


def test_daemon_lists() -> None:
    client = "192.0.2.1"
    assert _denies("ALL: ALL\n", _request(client))
    assert _denies("SVC: ALL\n", _request(client))  # any case
    assert not _denies("other: ALL\n", _request(client))
    assert _denies("other, svc: ALL\n", _request(client))
    assert not _denies("ALL EXCEPT svc: ALL\n", _request(client))
    assert _denies("ALL EXCEPT other: ALL\n", _request(client))
    assert _denies("s*: ALL\n", _request(client))


def test_daemon_at_host_compares_where_the_client_connected() -> None:
    rules = "svc@192.0.2.80: ALL\n"
    assert _denies(rules, _request("10.0.0.1", server="192.0.2.80"))
    assert not _denies(rules, _request("10.0.0.1", server="192.0.2.81"))
    with pytest.raises(NeedName) as need:
        _allowed_by("svc@.example.com: ALL\n", _request("10.0.0.1", server="192.0.2.80"))
    assert need.value.side == "server"
    request = _request("10.0.0.1", server="192.0.2.80", server_name="www.example.com")
    assert _denies("svc@.example.com: ALL\n", request)


def test_user_patterns_see_an_unknown_user() -> None:
    assert _denies("svc: ALL@ALL\n", _request("10.0.0.1"))
    assert _denies("svc: UNKNOWN@10.0.0.1\n", _request("10.0.0.1"))
    assert not _denies("svc: KNOWN@10.0.0.1\n", _request("10.0.0.1"))
    assert not _denies("svc: root@10.0.0.1\n", _request("10.0.0.1"))


def test_pattern_files() -> None:
    files = {
        "/etc/trusted": parse_pattern_file("# ours\n10.0.0.1, 10.0.0.2\n/etc/more\n"),
        "/etc/more": parse_pattern_file("192.0.2.0/24\n/etc/trusted\n"),  # a loop
    }
    table = parse_table("svc: /etc/trusted\n", "/deny")
    assert table.pattern_files == frozenset({"/etc/trusted"})
    for address, denied in (("10.0.0.2", True), ("192.0.2.5", True), ("10.0.0.3", False)):
        assert decide(EMPTY, table, _request(address), files).allowed is not denied


# --- options and verdicts ---------------------------------------------------------------


def test_first_match_wins_allow_then_deny_then_admit() -> None:
    allow = parse_table("svc: 10.0.0.1\n", "/allow")
    deny = parse_table("svc: 10.0.0.0/8\nALL: ALL\n", "/deny")
    first = decide(allow, deny, _request("10.0.0.1"))
    assert first.allowed
    assert first.reason == "matched /allow:1"
    second = decide(allow, deny, _request("10.0.0.2"))
    assert not second.allowed
    assert second.reason == "matched /deny:1"
    third = decide(allow, EMPTY, _request("10.0.0.2"))
    assert third.allowed
    assert third.rule is None


def test_allow_and_deny_options_in_one_file() -> None:
    allow = parse_table("svc: 10.0.0.1 : ALLOW\nALL: ALL : deny\n", "/allow")
    assert decide(allow, EMPTY, _request("10.0.0.1")).allowed
    assert not decide(allow, EMPTY, _request("10.0.0.2")).allowed
    deny = parse_table("ALL: 10.0.0.1 : allow\n", "/deny")
    assert decide(EMPTY, deny, _request("10.0.0.1")).allowed


def test_severity_sets_the_level_of_the_verdict() -> None:
    table = parse_table("svc: ALL : severity mail.info : deny\n", "/allow")
    decision = decide(table, EMPTY, _request("10.0.0.1"))
    assert not decision.allowed
    assert decision.severity == 6
    assert parse_table("svc: ALL : severity = NOTICE\n", "/h").rules[0].severity == 5


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ("spawn (/bin/echo %a) &", 'option "spawn" is not supported by tlstunnel'),
        ("twist /bin/echo no", 'option "twist" is not supported by tlstunnel'),
        ("keepalive", 'option "keepalive" is not supported by tlstunnel'),
        ("allow : deny", 'option "allow" must be the last one'),
        ("allow = yes", 'option "allow" takes no value'),
        ("severity loud", '"severity loud" is not [facility.]level'),
        ("frobnicate", 'unknown option "frobnicate"'),
        ("", "an empty option"),
    ],
)
def test_a_rule_we_cannot_carry_out_refuses_and_is_reported(options: str, problem: str) -> None:
    table = parse_table(f"svc: 10.0.0.1 : {options}\n", "/etc/hosts.allow")
    assert table.warnings == (
        f"/etc/hosts.allow:1: {problem}: a client this rule matches is refused",
    )
    decision = decide(table, EMPTY, _request("10.0.0.1"))
    assert not decision.allowed
    assert decision.reason == f"/etc/hosts.allow:1: {problem}"
    assert decide(table, EMPTY, _request("10.0.0.2")).allowed  # not matched: no effect


def test_escaped_colons_stay_inside_an_option() -> None:
    table = parse_table("svc: ALL : severity info\\: deny\n", "/h")
    assert table.rules[0].problem == '"severity info: deny" is not [facility.]level'


def test_netgroups_are_reported() -> None:
    table = parse_table("svc: @trusted\n", "/h")
    assert table.warnings == (
        "/h:1: @trusted: NIS netgroups are not supported; the pattern never matches",
    )


def test_unreadable_tables_follow_libwrap() -> None:
    broken_allow = Table("/allow", unreadable="Permission denied")
    broken_deny = Table("/deny", unreadable="Permission denied")
    assert decide(broken_allow, EMPTY, _request("10.0.0.1")).allowed
    refusal = decide(EMPTY, broken_deny, _request("10.0.0.1"))
    assert not refusal.allowed
    assert refusal.reason == "/deny cannot be read: Permission denied"


def test_normalise_address() -> None:
    assert normalise_address("::ffff:192.0.2.7") == ("192.0.2.7", bytes([192, 0, 2, 7]))
    assert normalise_address("fe80::1%eth0")[0] == "fe80::1"
    assert normalise_address("2001:DB8:0:0::1")[0] == "2001:db8::1"
    assert normalise_address("not an address") == ("not an address", None)


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab :,\\\n\t#[]/@.*?EXCPTALW=10\r\x00é")), max_size=80)
)
def test_the_parser_takes_any_text(text: str) -> None:
    table = parse_table(text, "/fuzz")
    assert len(table.rules) <= text.count("\n") + 1
    for address in ("10.0.0.1", "::1", None):
        request = _request(address, name="a.b").named("server", "unknown")
        decide(table, table, request, {"/fuzz": parse_pattern_file(text)})


# The differential test against libwrap.so.0.

DAEMONS = ["svc", "other", "svc.x"]
DAEMON_TOKENS = ["ALL", "svc", "SVC", "other", "s*", ".x", "svc.", "KNOWN", "svc@ALL", "EXCEPT"]
CLIENT_TOKENS = [
    "ALL", "LOCAL", "KNOWN", "UNKNOWN", "PARANOID", "EXCEPT", "EXCEPT", "@grp",
    "127.0.0.1", "10.", "10.1.2.0/255.255.255.0", "10.0.0.0/8", "10.1.2.3/8",
    "192.168.1.20/32", "0.0.0.0/0.0.0.0", "192.168.1.20/255.255.255.255", "10.1.?.3",
    "[::1]", "[2001:db8::]/32", "[::]/0", "[2001:db8::5]", "[::ffff:10.1.2.3]",
    ".example.com", "example.com", "host.example.com", "*.example.com", "box", "localhost",
    "unknown@ALL", "ALL@ALL", "KNOWN@ALL", "root@10.1.2.3", "LOCALHOST",
]  # fmt: skip
OPTIONS = ["", "", ": allow", ": deny", ": severity notice : deny", ": severity mail.info: allow"]
ADDRESSES = [
    "127.0.0.1", "10.1.2.3", "192.168.1.20", "::1", "2001:db8::5", "2001:db8:0:0::5",
    "::ffff:10.1.2.3", "fe80::1",
]  # fmt: skip
NAMES = ["", "localhost", "host.example.com", "paranoid", "Mixed.Example.COM", "box", "unknown"]

tokens = st.lists(st.sampled_from(CLIENT_TOKENS), min_size=1, max_size=4)
rule = st.builds(
    lambda daemons, clients, options: f"{', '.join(daemons)} : {' '.join(clients)} {options}",
    st.lists(st.sampled_from(DAEMON_TOKENS), min_size=1, max_size=3),
    tokens,
    st.sampled_from(OPTIONS),
)
table = st.lists(rule, max_size=4).map(lambda rules: "".join(f"{r}\n" for r in rules))


class Libwrap:
    """libwrap.so.0's hosts_ctl with its table paths pointed at two files of ours."""

    def __init__(self, directory: Path) -> None:
        found = ctypes.util.find_library("wrap") or "libwrap.so.0"
        try:
            self.lib = ctypes.CDLL(found)
        except OSError as exc:
            pytest.skip(f"libwrap.so.0 is not installed ({exc}); apt-get install libwrap0")
        self.allow = directory / "hosts.allow"
        self.deny = directory / "hosts.deny"
        # Kept referenced: libwrap's table pointers point into these buffers.
        self._paths = [
            ctypes.create_string_buffer(str(p).encode()) for p in (self.allow, self.deny)
        ]
        self._saved = [
            ctypes.c_void_p.in_dll(self.lib, name).value
            for name in ("hosts_allow_table", "hosts_deny_table")
        ]
        for name, buffer in zip(
            ("hosts_allow_table", "hosts_deny_table"), self._paths, strict=True
        ):
            ctypes.c_void_p.in_dll(self.lib, name).value = ctypes.addressof(buffer)
        self.lib.hosts_ctl.argtypes = [ctypes.c_char_p] * 4
        self.lib.hosts_ctl.restype = ctypes.c_int

    def allows(self, allow: str, deny: str, daemon: str, name: str, address: str) -> bool:
        self.allow.write_text(allow)
        self.deny.write_text(deny)
        args = (daemon.encode(), name.encode(), address.encode(), b"unknown")
        return bool(self.lib.hosts_ctl(*args))

    def close(self) -> None:
        for name, saved in zip(("hosts_allow_table", "hosts_deny_table"), self._saved, strict=True):
            ctypes.c_void_p.in_dll(self.lib, name).value = saved


@pytest.fixture(scope="module")
def libwrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libwrap]:
    oracle = Libwrap(tmp_path_factory.mktemp("libwrap"))
    yield oracle
    oracle.close()


@pytest.mark.interop
@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tables=st.tuples(table, table),
    client=st.tuples(st.sampled_from(DAEMONS), st.sampled_from(ADDRESSES), st.sampled_from(NAMES)),
)
def test_verdicts_agree_with_libwrap(
    libwrap: Libwrap, tables: tuple[str, str], client: tuple[str, str, str]
) -> None:
    allow, deny = tables
    daemon, address, name = client
    expected = libwrap.allows(allow, deny, daemon, name, address)
    # hosts_ctl knows nothing of the server end: its address and name are unknown.
    request = Request(daemon, Host.at(address), Host()).named("client", name or "unknown")
    decision = decide(
        parse_table(allow, "/allow"), parse_table(deny, "/deny"), request.named("server", "")
    )
    assert decision.allowed is expected, decision.reason
