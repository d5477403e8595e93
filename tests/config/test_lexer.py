"""The lexer: lines, comments, sections, repeated keys, BOM and include folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tlstunnel.config.errors import ConfigError, Problem
from tlstunnel.config.lexer import (
    SectionStart,
    Setting,
    Token,
    lex,
    read_file_lines,
    read_numbered_lines,
    split_sections,
)
from tlstunnel.config.model import Location


def settings_of(tokens: tuple[Token, ...]) -> list[tuple[str, str, int]]:
    return [(t.name, t.value, t.location.line) for t in tokens if isinstance(t, Setting)]


def lex_file(path: Path) -> tuple[tuple[Token, ...], list[Problem]]:
    problems: list[Problem] = []
    lines = read_file_lines(str(path), problems)
    assert lines is not None
    return read_numbered_lines(lines, str(path), str(path.parent), problems), problems


def test_blank_lines_and_both_comment_styles_are_ignored() -> None:
    text = "\n   \n; a comment\n# another\n  ;indented comment\nfoo = bar\n"
    assert settings_of(lex(text, "t.conf", "/")) == [("foo", "bar", 6)]


def test_whitespace_around_name_and_value_is_trimmed_and_value_may_hold_spaces() -> None:
    tokens = lex("  Accept\t=   127.0.0.1:443  \nexecArgs = a b  c\nempty =\n", "t", "/")
    assert settings_of(tokens) == [
        ("Accept", "127.0.0.1:443", 1),
        ("execArgs", "a b  c", 2),
        ("empty", "", 3),
    ]


def test_option_names_keep_their_spelling_and_have_a_lowercase_key() -> None:
    (token,) = lex("CAFile = x", "t", "/")
    assert isinstance(token, Setting)
    assert token.name == "CAFile"
    assert token.key == "cafile"


def test_only_the_first_equals_sign_separates_name_and_value() -> None:
    (token,) = lex("socket = a:SO_LINGER=1:60", "t", "/")
    assert isinstance(token, Setting)
    assert (token.name, token.value) == ("socket", "a:SO_LINGER=1:60")


def test_repeated_keys_are_all_kept_in_order() -> None:
    tokens = lex("connect = a:1\nconnect = b:2\nCONNECT = c:3\n", "t", "/")
    assert [value for _, value, _ in settings_of(tokens)] == ["a:1", "b:2", "c:3"]


def test_sections_split_global_and_service_settings() -> None:
    text = "foreground = yes\n[ web ]\naccept = 1\n[mail]\naccept = 2\nconnect = 3\n"
    layout = split_sections(lex(text, "t", "/"))
    assert [s.name for s in layout.global_settings] == ["foreground"]
    assert [(s.name, s.location.line) for s in layout.sections] == [("web", 2), ("mail", 4)]
    assert [s.value for s in layout.sections[1].settings] == ["2", "3"]


def test_a_byte_order_mark_at_the_start_is_skipped() -> None:
    assert settings_of(lex("\ufeffforeground = yes\n", "t", "/")) == [("foreground", "yes", 1)]


def test_a_byte_order_mark_in_a_file_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bom.conf"
    path.write_bytes(b"\xef\xbb\xbf; comment\r\nforeground = yes\r\n")
    tokens, problems = lex_file(path)
    assert problems == []
    assert settings_of(tokens) == [("foreground", "yes", 2)]


def test_a_line_that_is_not_utf8_is_a_problem_and_the_rest_is_read(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"a = 1\nb = caf\xe9\nc = 3\n")
    tokens, problems = lex_file(path)
    assert [p.line for p in problems] == [2]
    assert "UTF-8" in problems[0].message
    assert settings_of(tokens) == [("a", "1", 1), ("c", "3", 3)]


def test_every_malformed_line_is_reported_with_its_line() -> None:
    with pytest.raises(ConfigError) as caught:
        lex("good = 1\njust words\n[]\n= value\n[ok]\n", "f.conf", "/")
    assert [(p.path, p.line) for p in caught.value.problems] == [
        ("f.conf", 2),
        ("f.conf", 3),
        ("f.conf", 4),
    ]
    assert "expected 'name = value'" in caught.value.problems[0].message
    assert "[name]" in caught.value.problems[1].message
    assert "no option name" in caught.value.problems[2].message


def test_crlf_line_endings_are_accepted() -> None:
    assert settings_of(lex("a = 1\r\n[s]\r\nb = 2\r\n", "t", "/")) == [("a", "1", 1), ("b", "2", 3)]


def test_settings_remember_the_folder_of_their_file() -> None:
    (token,) = lex("cert = x.pem", "t", "/etc/stunnel")
    assert isinstance(token, Setting)
    assert token.base_dir == "/etc/stunnel"
    assert token.location == Location("t", 1)


# --- include --------------------------------------------------------------------------


def test_include_reads_every_file_in_name_order_where_it_stands(tmp_path: Path) -> None:
    parts = tmp_path / "conf.d"
    parts.mkdir()
    (parts / "02-b.conf").write_text("[b]\nconnect = 2\n")
    (parts / "01-a.conf").write_text("[a]\nconnect = 1\n")
    (parts / "00-global.conf").write_text("debug = 7\n")
    (parts / "subfolder").mkdir()
    main = tmp_path / "main.conf"
    main.write_text(f"foreground = yes\ninclude = {parts}\n[last]\nconnect = 3\n")
    tokens, problems = lex_file(main)
    assert problems == []
    shape = [
        (t.name, t.location.path.rsplit("/", 1)[-1], t.location.line)
        for t in tokens
        if isinstance(t, (Setting, SectionStart))
    ]
    assert shape == [
        ("foreground", "main.conf", 1),
        ("debug", "00-global.conf", 1),
        ("a", "01-a.conf", 1),
        ("connect", "01-a.conf", 2),
        ("b", "02-b.conf", 1),
        ("connect", "02-b.conf", 2),
        ("last", "main.conf", 3),
        ("connect", "main.conf", 4),
    ]


def test_include_folder_is_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "x.conf").write_text("cert = mine.pem\n")
    main = tmp_path / "main.conf"
    main.write_text("Include = parts\n")
    tokens, problems = lex_file(main)
    assert problems == []
    (token,) = tokens
    assert isinstance(token, Setting)
    assert token.base_dir == str(tmp_path / "parts")


def test_problems_in_an_included_file_point_at_that_file(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    (parts / "bad.conf").write_text("ok = 1\n\nnot an option\n")
    main = tmp_path / "main.conf"
    main.write_text("include = parts\n")
    _, problems = lex_file(main)
    assert [(p.path, p.line) for p in problems] == [(str(parts / "bad.conf"), 3)]


def test_a_missing_include_folder_is_a_problem_on_the_include_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        lex("a = 1\ninclude = nowhere\n", "main.conf", str(tmp_path))
    (problem,) = caught.value.problems
    assert (problem.line, problem.option) == (2, "include")
    assert str(tmp_path / "nowhere") in problem.message


def test_an_empty_include_is_a_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        lex("include =\n", "main.conf", "/")
    assert "include = DIRECTORY" in caught.value.problems[0].message


def test_an_include_loop_is_reported_not_followed_forever(tmp_path: Path) -> None:
    (tmp_path / "loop.conf").write_text("a = 1\ninclude = .\n")
    with pytest.raises(ConfigError) as caught:
        lex("include = .\n", "main", str(tmp_path))
    (problem,) = caught.value.problems
    assert problem.path == str(tmp_path / "loop.conf")
    assert "includes itself" in problem.message


def test_include_with_an_unusable_folder_name_is_a_problem() -> None:
    with pytest.raises(ConfigError) as caught:
        lex("include = bad\x00name\n", "main", "/")
    assert "not a usable folder name" in caught.value.problems[0].message


def test_an_unreadable_file_is_a_problem_without_a_line(tmp_path: Path) -> None:
    problems: list[Problem] = []
    assert read_file_lines(str(tmp_path / "absent.conf"), problems) is None
    (problem,) = problems
    assert problem.line == 0
    assert "cannot read" in problem.message


@given(st.text())
def test_the_lexer_never_crashes_on_arbitrary_text(text: str) -> None:
    try:
        tokens = lex(text, "fuzz.conf", "/nonexistent-base-dir")
    except ConfigError as error:
        assert error.problems
        assert all(isinstance(p, Problem) for p in error.problems)
    else:
        assert all(isinstance(t, (Setting, SectionStart)) for t in tokens)
