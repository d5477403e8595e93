"""Small helpers shared by the configuration tests: write a file, load it, get problems."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlstunnel.config import ConfigError, Problem, load_file
from tlstunnel.config.build import LoadResult
from tlstunnel.config.model import ServiceConfig

SERVER = "[web]\naccept = 8443\nconnect = 8080\ncert = cert.pem\n"
CLIENT = "[out]\nclient = yes\naccept = 127.0.0.1:8080\nconnect = example.com:443\n"


def load(folder: Path, text: str) -> LoadResult:
    """Write ``text`` as ``folder/stunnel.conf`` and load it."""
    path = folder / "stunnel.conf"
    path.write_text(text)
    return load_file(str(path))


def service(folder: Path, text: str) -> ServiceConfig:
    """The one service ``text`` defines."""
    (only,) = load(folder, text).config.services
    return only


def problems(folder: Path, text: str) -> tuple[Problem, ...]:
    """Every problem loading ``text`` reports (it must report some)."""
    with pytest.raises(ConfigError) as caught:
        load(folder, text)
    return caught.value.problems


def problem(folder: Path, text: str) -> Problem:
    """The single problem loading ``text`` reports."""
    (only,) = problems(folder, text)
    return only
