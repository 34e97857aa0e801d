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


JOBS = ("cluster", "sampler", "repack", "archive")


def _imports(path: Path) -> set[str]:
    import ast
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_no_job_imports_another_and_the_core_imports_none() -> None:
    """The layering DESIGN.md relies on: core and the etcd client sit below the jobs; a job may
    use them but never another job (repack judging the node must not depend on the watch)."""
    bad = []
    for path in sorted((ROOT / "agent").rglob("*.py")):
        rel = path.relative_to(ROOT / "agent").parts
        own = rel[0] if rel[0] in JOBS else None
        if rel[0] not in (*JOBS, "core", "etcd"):
            continue                                  # app, cli, status, lab: the top wires jobs together
        for mod in _imports(path):
            parts = mod.split(".")
            if parts[0] == "agent" and len(parts) > 1 and parts[1] in JOBS and parts[1] != own:
                bad.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not bad, bad
