"""A section's checked lines, and the collector of problems and notices.

``build`` fills a ``SectionValues`` per section (pass 1), merges the defaults written
above the first section into each (pass 2) and reads the model from it (pass 3).
``Reporter`` is what every rule reports to: it never stops at the first problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from tlstunnel.config.errors import Problem
from tlstunnel.config.lexer import Setting
from tlstunnel.config.model import Location
from tlstunnel.config.options import OptionSpec, Scope

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    """A checked line: its table row, its parsed value and the line it came from."""

    spec: OptionSpec[Any]
    value: Any
    setting: Setting


@dataclass(slots=True)
class SectionValues:
    """The checked lines that apply to one section, in the order they were written.

    ``failed`` names the options that had a rejected line here, so later rules can
    stay quiet about them instead of reporting a consequence of the same mistake.
    """

    entries: list[Entry] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)

    def get(self, spec: OptionSpec[T]) -> T | None:
        """The last value written for ``spec``, or None."""
        for entry in reversed(self.entries):
            if entry.spec is spec:
                return cast(T, entry.value)
        return None

    def get_or(self, spec: OptionSpec[T], default: T) -> T:
        value = self.get(spec)
        return default if value is None else value

    def every(self, spec: OptionSpec[T]) -> tuple[T, ...]:
        """Every value written for ``spec``, in order."""
        return tuple(cast(T, entry.value) for entry in self.entries if entry.spec is spec)

    def where(self, spec: OptionSpec[Any]) -> Setting | None:
        """The last line that set ``spec``, or None."""
        for entry in reversed(self.entries):
            if entry.spec is spec:
                return entry.setting
        return None

    def with_defaults(self, defaults: SectionValues) -> SectionValues:
        """These values, plus every default for an option this section does not set.

        Only service options are defaults: a global or a both-scope option written above
        the first section means something for the process, not for each service."""
        own = {entry.spec.name for entry in self.entries} | self.failed
        inherited = [
            entry
            for entry in defaults.entries
            if entry.spec.name not in own and entry.spec.scope is Scope.SERVICE
        ]
        return SectionValues(inherited + self.entries, self.failed | (defaults.failed - own))


class Reporter:
    """Collects problems and notices while one configuration is built."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        self.notices: list[str] = []

    def problem(self, where: Setting | Location, option: str, message: str) -> None:
        location = where.location if isinstance(where, Setting) else where
        self.problems.append(Problem(location.path, location.line, option, message))
