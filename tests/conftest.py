from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client import CollectorRegistry

from agent.lab.rundir import temp_root


def pytest_configure(config: pytest.Config) -> None:
    # tmp_path (PostgreSQL data dirs, WAL) on disk like the lab's run dirs, not in a RAM /tmp;
    # an explicit TMPDIR or --basetemp wins. Passing tests' tmp_path is removed (pyproject).
    if not os.environ.get("TMPDIR"):
        tempfile.tempdir = str(temp_root())


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def logs() -> Iterator[list[dict[str, object]]]:
    with structlog.testing.capture_logs() as captured:
        yield captured
