"""The lexer: stunnel configuration text in, located tokens out.

This module owns the *shape* of a configuration file and nothing about what options
mean.  The format, as stunnel reads it:

* every line is trimmed of surrounding whitespace; blank lines and lines starting
  with ``;`` or ``#`` are ignored;
* ``[name]`` starts a service section; everything before the first one is the
  global section;
* ``name = value`` sets an option; whitespace around the name and the value is
  dropped, the value may be empty, and a key may repeat (each line is kept, in order);
* a UTF-8 byte order mark at the very start of a file is skipped;
* ``include = DIR`` is replaced, where it stands, by the lines of every regular file
  in ``DIR`` taken in ascending order of their names.  An included file may hold
  sections of its own, and tokens from it carry that file's path and line numbers.

Anything else on a line is a ``Problem``.  ``read_tokens`` collects problems into a
list the caller owns (so ``build`` can report them together with its own), while
``lex`` is the stand-alone form that raises ``ConfigError``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass

from tlstunnel.config.errors import ConfigError, Problem
from tlstunnel.config.model import Location

INCLUDE_OPTION = "include"
COMMENT_STARTERS = (";", "#")
BYTE_ORDER_MARK = "\ufeff"
# Deep enough for any sane layout, shallow enough to stop an include loop that the
# cycle check cannot see (the same folder reached through different symlinks).
MAX_INCLUDE_DEPTH = 16


@dataclass(frozen=True, slots=True)
class Setting:
    """One ``name = value`` line.

    ``name`` keeps the user's spelling (for messages); ``key`` is its lower-case form
    for lookups.  ``base_dir`` is the folder of the file the line came from: relative
    paths in the value are resolved against it.
    """

    name: str
    value: str
    location: Location
    base_dir: str

    @property
    def key(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class SectionStart:
    """A ``[name]`` line."""

    name: str
    location: Location


Token = Setting | SectionStart


@dataclass(frozen=True, slots=True)
class Section:
    """A ``[name]`` header and the settings written under it."""

    name: str
    location: Location
    settings: tuple[Setting, ...]


@dataclass(frozen=True, slots=True)
class Layout:
    """A token stream split into the global section and the service sections."""

    global_settings: tuple[Setting, ...]
    sections: tuple[Section, ...]


def lex(text: str, source: str, base_dir: str) -> tuple[Token, ...]:
    """Tokenize ``text`` (named ``source`` in messages); raise ``ConfigError`` on problems."""
    problems: list[Problem] = []
    tokens = read_tokens(text, source, base_dir, problems)
    if problems:
        raise ConfigError(problems)
    return tokens


def read_tokens(
    text: str, source: str, base_dir: str, problems: list[Problem]
) -> tuple[Token, ...]:
    """Tokenize ``text``, following includes; append every problem found to ``problems``."""
    return read_numbered_lines(_split_lines(text), source, base_dir, problems)


def read_numbered_lines(
    lines: Iterable[tuple[int, str]], source: str, base_dir: str, problems: list[Problem]
) -> tuple[Token, ...]:
    """Tokenize lines already numbered (as ``read_file_lines`` returns them)."""
    reader = _Reader(problems)
    reader.read_lines(lines, source, base_dir, ())
    return tuple(reader.tokens)


def split_sections(tokens: tuple[Token, ...]) -> Layout:
    """Group tokens: settings before the first ``[name]`` are global, the rest per section."""
    global_settings: list[Setting] = []
    sections: list[Section] = []
    current: SectionStart | None = None
    current_settings: list[Setting] = []
    for token in tokens:
        if isinstance(token, SectionStart):
            if current is not None:
                sections.append(Section(current.name, current.location, tuple(current_settings)))
            current = token
            current_settings = []
        elif current is None:
            global_settings.append(token)
        else:
            current_settings.append(token)
    if current is not None:
        sections.append(Section(current.name, current.location, tuple(current_settings)))
    return Layout(tuple(global_settings), tuple(sections))


def _split_lines(text: str) -> list[tuple[int, str]]:
    """Number the lines of ``text`` from 1, dropping a leading byte order mark.

    Only ``\\n`` (with an optional ``\\r`` before it) ends a line, so line numbers
    agree with what an editor shows even when a value holds other control characters.
    """
    text = text.removeprefix(BYTE_ORDER_MARK)
    return [(number, line.rstrip("\r")) for number, line in enumerate(text.split("\n"), 1)]


def decode_lines(data: bytes, path: str, problems: list[Problem]) -> list[tuple[int, str]]:
    """Split raw file bytes into numbered text lines; a line that is not UTF-8 is a problem."""
    data = data.removeprefix(BYTE_ORDER_MARK.encode())
    numbered: list[tuple[int, str]] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            numbered.append((number, raw.decode("utf-8").rstrip("\r")))
        except UnicodeDecodeError:
            problems.append(
                Problem(path, number, "", "this line is not valid UTF-8; save the file as UTF-8")
            )
    return numbered


def read_file_lines(path: str, problems: list[Problem]) -> list[tuple[int, str]] | None:
    """Read and number the lines of the file at ``path``, or report why it cannot be read."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        reason = error.strerror or str(error)
        problems.append(Problem(path, 0, "", f"cannot read this file: {reason}"))
        return None
    return decode_lines(data, path, problems)


class _Reader:
    """Accumulates tokens across the main text and every included file."""

    def __init__(self, problems: list[Problem]) -> None:
        self.tokens: list[Token] = []
        self.problems = problems

    def read_lines(
        self,
        lines: Iterable[tuple[int, str]],
        source: str,
        base_dir: str,
        including: tuple[str, ...],
    ) -> None:
        for number, raw in lines:
            self._read_line(raw, Location(source, number), base_dir, including)

    def _read_line(
        self, raw: str, location: Location, base_dir: str, including: tuple[str, ...]
    ) -> None:
        line = raw.strip()
        if not line or line.startswith(COMMENT_STARTERS):
            return
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip()
            if not name:
                self._problem(location, "", "a section needs a name between the brackets: [name]")
                return
            self.tokens.append(SectionStart(name, location))
            return
        name, equals, value = line.partition("=")
        name, value = name.strip(), value.strip()
        if not equals:
            self._problem(
                location,
                "",
                f"cannot read {line!r}: expected 'name = value', '[section]' or a comment "
                "starting with ';' or '#'",
            )
            return
        if not name:
            self._problem(location, "", f"{line!r} has no option name before '='")
            return
        if name.lower() == INCLUDE_OPTION:
            self._include(name, value, location, base_dir, including)
            return
        self.tokens.append(Setting(name, value, location, base_dir))

    def _include(
        self,
        name: str,
        value: str,
        location: Location,
        base_dir: str,
        including: tuple[str, ...],
    ) -> None:
        if not value:
            self._problem(location, name, "needs a folder: include = DIRECTORY")
            return
        folder = os.path.normpath(os.path.join(base_dir, value))
        if folder in including or len(including) >= MAX_INCLUDE_DEPTH:
            self._problem(
                location,
                name,
                f"the folder {folder} includes itself (directly or through other folders); "
                "remove the include line that closes the loop",
            )
            return
        try:
            entries = sorted(os.listdir(folder))
        except OSError as error:
            reason = error.strerror or str(error)
            self._problem(location, name, f"cannot read the folder {folder}: {reason}")
            return
        except ValueError:  # a NUL byte, or text the file system cannot encode
            self._problem(location, name, f"{value!r} is not a usable folder name")
            return
        for entry in entries:
            path = os.path.join(folder, entry)
            try:
                is_file = stat.S_ISREG(os.stat(path).st_mode)
            except OSError:
                is_file = False  # a dangling symlink, or gone since listdir
            if not is_file:
                continue
            lines = read_file_lines(path, self.problems)
            if lines is not None:
                self.read_lines(lines, path, folder, (*including, folder))

    def _problem(self, location: Location, option: str, message: str) -> None:
        self.problems.append(Problem(location.path, location.line, option, message))
