"""The printed views of the option table stay true to it."""

from __future__ import annotations

from pathlib import Path

from tlstunnel.config.options import OPTIONS
from tlstunnel.config.reference import describe_options, readme_table, splice_readme

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_option_table_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    assert splice_readme(text) == text, "run: python -m tlstunnel.config.reference README.md"


def test_every_option_has_a_row_and_a_help_line() -> None:
    table = readme_table()
    help_text = "\n".join(describe_options())
    for spec in OPTIONS:
        assert f"| `{spec.name}` |" in table
        assert spec.name in help_text
        if spec.status != "supported":
            assert spec.reason, f"{spec.name} is {spec.status} without a reason"
