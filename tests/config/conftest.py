"""Fixtures for the configuration tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with dummy certificate files (their content is not read at load time)."""
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text(f"dummy {name}\n")
    (tmp_path / "cadir").mkdir()
    return tmp_path
