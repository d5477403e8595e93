"""Fixtures shared by the end-to-end tests: certificates, backends, tunnel processes."""

from __future__ import annotations

import os
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (TLSTUNNEL_REQUIRE_INTEROP=1) a skipped interop test is a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if (
        report.skipped
        and not hasattr(report, "wasxfail")  # an expected failure is reported as skipped
        and os.environ.get("TLSTUNNEL_REQUIRE_INTEROP") == "1"
        and item.get_closest_marker("interop") is not None
    ):
        report.outcome = "failed"
        report.longrepr = f"interop test skipped in CI: {report.longrepr}"
