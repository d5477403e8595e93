"""The load tests hold thousands of sockets: lift this process's descriptor limit.

They read /proc and use FIFOs and ``resource``: Linux only.
"""

from __future__ import annotations

import sys

import pytest

if not sys.platform.startswith("linux"):
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(autouse=True, scope="session")
def _many_descriptors() -> None:
    from tests.load.helpers import raise_nofile_limit

    raise_nofile_limit()
