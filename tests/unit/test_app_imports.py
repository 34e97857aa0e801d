"""What the agent process loads: a module is resident memory for the process's whole life
(bench/README.md, "Import footprint"), so what only a disabled job or an unused option needs
stays unloaded. Each check runs in a fresh interpreter: this one has imported everything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import certifi

from agent.core.tls import client_context

# Loaded only by pg_repack windows (off by default) and by a bcrypt basic-auth check.
LAZY = ("agent.repack", "apscheduler", "tzlocal", "bcrypt")

ASSEMBLE = """
import json, sys
from agent.app import components
from agent.core.config import parse
from agent.core.context import Context
cfg = parse({{"node": {{"name": "n1", "state_dir": sys.argv[1]}}, "etcd": {{"scope": "demo"}},
             "http": {{"basic_auth_users": {{"ops": "sha256:" + "0" * 64}}}}, **json.loads(sys.argv[2])}})
names = [c.name for c in components(Context.create(cfg))]
print(json.dumps({{"components": names, "loaded": [m for m in {lazy!r} if m in sys.modules]}}))
"""


def assemble(tmp_path: Path, extra: dict[str, object]) -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, "-c", ASSEMBLE.format(lazy=LAZY), str(tmp_path), json.dumps(extra)],
                         capture_output=True, text=True, check=True, timeout=120)
    got: dict[str, list[str]] = json.loads(out.stdout)
    return got


def test_defaults_load_no_repack_scheduler_or_bcrypt(tmp_path: Path) -> None:
    got = assemble(tmp_path, {})
    assert "repack" not in got["components"]
    assert got["loaded"] == []


def test_repack_enabled_loads_its_job(tmp_path: Path) -> None:
    got = assemble(tmp_path, {"repack": {"enabled": True, "binary": "/bin/true",
                                         "windows": [{"cron": "0 2 * * 6", "duration": "2h"}]}})
    assert "repack" in got["components"]
    assert {"agent.repack", "apscheduler"} <= set(got["loaded"])


def test_one_context_for_the_system_cas() -> None:
    """Each context holds its own parsed CA bundle: peers verified against the system's CAs
    alone share one; a private CA gets a context of its own."""
    assert client_context("", "", "", "etcd") is client_context("", "", "", "patroni")
    own = client_context(certifi.where(), "", "", "etcd")
    assert own is not client_context("", "", "", "etcd")
    assert own is not client_context(certifi.where(), "", "", "etcd")  # loaded again, as before
