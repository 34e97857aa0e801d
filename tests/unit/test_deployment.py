"""The shipped unit and the wheel (the Dockerfile: test_container.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
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
def test_systemd_analyze_verify_accepts_the_unit(unit_copy: Path) -> None:
    r = subprocess.run(["systemd-analyze", "verify", str(unit_copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_exposure_is_at_most_2_0(unit_copy: Path) -> None:
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit_copy)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-2000:]
    assert "Overall exposure level" in r.stdout


def test_wheel_builds_installs_and_runs_help(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
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
    names = subprocess.run([sys.executable, "-c", "import zipfile,sys,json;"
                            "print(json.dumps(zipfile.ZipFile(sys.argv[1]).namelist()))", str(wheel)],
                           capture_output=True, text=True, check=True).stdout
    files = json.loads(names)
    assert "agent/cli.py" in files and "agent/lab/demo.py" in files and not any(f.startswith("tests/") for f in files)
    out = subprocess.run([str(env_dir / "bin/pg-node-agent"), "--help"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0 and "check-config" in out.stdout
