"""Fixtures shared by the end-to-end tests: certificates, backends, tunnel processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.backends import EchoServer
from tests.support.pki import PKIFiles, make_pki
from tests.support.tunnel import TunnelProcess, start_tunnel


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


TunnelFactory = Callable[..., TunnelProcess]


@pytest.fixture
def tunnel(tmp_path: Path) -> Iterator[TunnelFactory]:
    """``tunnel(config_text, program="tlstunnel"|"stunnel4", name=...)``; all stopped after."""
    started: list[TunnelProcess] = []

    def start(config_text: str, **kwargs: object) -> TunnelProcess:
        process = start_tunnel(tmp_path, config_text, **kwargs)  # type: ignore[arg-type]
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
