"""Printable views of the option table: ``-help``, ``-version`` defaults, README table.

All three are generated from ``options.OPTIONS`` so that what the program accepts, what
it prints and what the documentation says cannot drift apart.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from tlstunnel.config.options import OPTIONS, OptionSpec, Scope


def _in_scope(spec: OptionSpec[object], scope: Scope) -> bool:
    return spec.scope is scope or spec.scope is Scope.BOTH


def _by_scope(line: Callable[[OptionSpec[object]], str | None]) -> list[str]:
    """Global options, then service-level ones, as stunnel prints them: a title per
    part, ``line(spec)`` for each option of that part (None leaves it out)."""
    lines: list[str] = []
    for title, scope in (
        ("Global options:", Scope.GLOBAL),
        ("Service-level options:", Scope.SERVICE),
    ):
        lines.append(title)
        lines.extend(text for spec in OPTIONS if _in_scope(spec, scope) and (text := line(spec)))
        lines.append(" ")
    return lines[:-1]


def describe_options() -> list[str]:
    """``-help``: every option with its value shape and a line of help, like stunnel."""

    def line(spec: OptionSpec[object]) -> str:
        note = "" if spec.status == "supported" else f" [{spec.status}: {spec.reason}]"
        return f"{spec.name:<22} = {spec.syntax} {spec.help}{note}".rstrip()

    return _by_scope(line)


def describe_defaults() -> list[str]:
    """``-version``: the defaults of the supported options that have one."""

    def line(spec: OptionSpec[object]) -> str | None:
        if spec.status == "supported" and spec.default_text:
            return f"{spec.name:<22} = {spec.default_text}"
        return None

    return _by_scope(line)


def readme_table() -> str:
    """The README's option table (Markdown), one row per option stunnel knows."""
    rows = [
        "| option | where | status | default | what it does / why not |",
        "|---|---|---|---|---|",
    ]
    for spec in OPTIONS:
        what = spec.help if spec.status == "supported" else f"{spec.help} — {spec.reason}"
        default = _cell(spec.default_text) or "—"
        rows.append(
            f"| `{spec.name}` | {spec.scope.value} | {spec.status} | {default} | {_cell(what)} |"
        )
    return "\n".join(rows)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


README_BEGIN = "<!-- options:begin -->"
README_END = "<!-- options:end -->"


def splice_readme(text: str) -> str:
    """``text`` with the table between the README's option markers regenerated."""
    head, _, rest = text.partition(README_BEGIN)
    _, _, tail = rest.partition(README_END)
    return f"{head}{README_BEGIN}\n{readme_table()}\n{README_END}{tail}"


if __name__ == "__main__":
    # python -m tlstunnel.config.reference [README.md]: print the table, or rewrite the file.
    if len(sys.argv) > 1:
        with open(sys.argv[1], encoding="utf-8") as handle:
            updated = splice_readme(handle.read())
        with open(sys.argv[1], "w", encoding="utf-8") as handle:
            handle.write(updated)
    else:
        print(readme_table())
