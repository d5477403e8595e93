"""Configuration errors: every problem carries its file, line and option.

Loading never stops at the first problem; it collects them all and raises one
``ConfigError`` holding the list, so a user fixes a file in one pass.  Only the CLI
decides what exit code that becomes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration.

    ``line`` is 0 when the problem is not tied to a line (a file that cannot be read).
    ``option`` is the option name as the user wrote it, or "" for section-level problems.
    """

    path: str
    line: int
    option: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        if self.option:
            return f"{where}: {self.option}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` lists every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in problems))
