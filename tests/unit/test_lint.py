"""ruff and mypy --strict are part of the suite: style and types regress like behaviour does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.skipif(not (BIN / "ruff").exists() and shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_is_clean() -> None:
    r = subprocess.run([str(BIN / "ruff"), "check", "agent", "tests", "bench"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:]


@pytest.mark.skipif(not (BIN / "mypy").exists(), reason="mypy not installed")
def test_mypy_strict_is_clean() -> None:
    r = subprocess.run([str(BIN / "mypy"), "agent"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:]
