"""The shipped unit and the wheel (the Dockerfile: test_container.py)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd/pg-node-agent.service"


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit unchanged but for ExecStart, which verify wants to exist."""
    exe = shutil.which("pg-node-agent") or str(Path(sys.executable).parent / "pg-node-agent")
    p = tmp_path / "pg-node-agent.service"
    p.write_text(UNIT.read_text().replace("/opt/pg-node-agent/bin/pg-node-agent", exe))
    return p


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def test_unit_declares_notify_watchdog_and_no_restart_on_bad_config() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"] and s["User"] == ["postgres"]
    assert s["Restart"] == ["on-failure"] and s["RestartPreventExitStatus"] == ["78"]
    assert "WatchdogSec" in s and s["ProtectSystem"] == ["strict"] and s["CapabilityBoundingSet"] == [""]


def test_unit_leaves_the_postgres_users_ipc_alone_and_raises_the_descriptor_limit() -> None:
    """RemoveIPC=yes with User=postgres deletes PostgreSQL's shared memory when the agent stops
    (under systemd: tests/integration/test_systemd_unit.py)."""
    s = unit_settings()
    assert s["User"] == ["postgres"] and s["RemoveIPC"] == ["no"]
    assert s["LimitNOFILE"] == ["65536"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_documentation_is_the_checkouts_docs_installed_under_usr_share_doc() -> None:
    """docs/installation.md step 4 copies README.md and docs/ to /usr/share/doc/pg-node-agent/ (the
    machine test checks they are there); each page the unit names must exist in the checkout."""
    (uris,) = unit_settings()["Documentation"]
    for uri in uris.split():
        rel = uri.removeprefix("file:///usr/share/doc/pg-node-agent/")
        assert rel != uri and (ROOT / rel).is_file(), uri


def test_systemd_analyze_verify_accepts_the_unit(unit_copy: Path) -> None:
    r = subprocess.run(["systemd-analyze", "verify", str(unit_copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_is_at_most_2_0(unit_copy: Path) -> None:
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit_copy)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "Overall exposure level" in r.stdout


def module_names(sources: dict[str, str]) -> dict[str, str]:
    """Dotted module name -> its path in the wheel (a package is its __init__.py)."""
    return {p.removesuffix(".py").removesuffix("/__init__").replace("/", "."): p for p in sources}


def reached_modules(sources: dict[str, str], roots: set[str]) -> set[str]:
    """The wheel's modules imported, directly or not, by `roots` (any import statement, also one
    inside a function such as the CLI's lazy `demo`), with the packages they sit in."""
    paths = module_names(sources)
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        mod = todo.pop()
        if mod in seen or mod not in paths:
            continue
        seen.add(mod)
        parts = mod.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        package = mod if paths[mod].endswith("__init__.py") else ".".join(parts[:-1])
        for node in ast.walk(ast.parse(sources[paths[mod]])):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                todo += [base, *(f"{base}.{a.name}" for a in node.names)]
    return seen


def test_wheel_builds_installs_and_runs_help(tmp_path: Path) -> None:
    # sdist, then the wheel from it: an in-tree wheel build packs whatever an earlier build left in
    # build/lib (a module moved away since would still ship)
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                        str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("pg_node_agent-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, system_site_packages=True)
    py = env_dir / "bin/python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if r.returncode != 0:  # system site-packages without pip: use ours
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                            "--prefix", str(env_dir), str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with zipfile.ZipFile(wheel) as z:
        sources = {n: z.read(n).decode() for n in z.namelist() if n.endswith(".py")}
        (entry_points,) = [z.read(n).decode() for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "agent/cli.py" in sources and "agent/lab/demo.py" in sources
    assert not any(f.startswith("tests/") for f in sources)
    # Every module must be reached from what an installed agent runs: its console scripts and
    # `python -m agent`. One nothing reaches is there only for the tests (agent/lab/nspawn.py was).
    roots = {m.group(1) for m in re.finditer(r"^\S+\s*=\s*([\w.]+):", entry_points, re.M)} | {"agent.__main__"}
    unreached = set(module_names(sources)) - reached_modules(sources, roots)
    assert not unreached, f"in the wheel but imported by nothing it runs (tests only?): {sorted(unreached)}"
    out = subprocess.run([str(env_dir / "bin/pg-node-agent"), "--help"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0 and "check-config" in out.stdout
