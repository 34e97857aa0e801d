"""The scope-wide repack lock against a real etcd with RBAC (the production case)."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from agent.core import config as config_mod
from agent.lab.etcd import Etcd
from agent.repack.lock import RepackLock

pytestmark = pytest.mark.integration


async def test_lock_is_exclusive_and_released_with_etcd_rbac(fresh_etcd: Etcd, tmp_path: Path) -> None:
    pw = secrets.token_urlsafe(12)

    def etcdctl(*args: str) -> str:
        return subprocess.run(["etcdctl", f"--endpoints={fresh_etcd.url}", *args], check=True, capture_output=True,
                              text=True, timeout=30, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}).stdout

    etcdctl("user", "add", f"root:{pw}")
    etcdctl("auth", "enable")
    f = tmp_path / "etcd-pw"
    f.write_text(pw + "\n")
    f.chmod(0o600)
    cfg = config_mod.parse({"node": {"name": "n1"}, "etcd": {
        "scope": "s", "endpoints": [fresh_etcd.url], "username": "root", "password_file": str(f)}}).etcd
    a, b = RepackLock(cfg, "n1"), RepackLock(cfg, "n2")
    assert await a.acquire() == (True, "n1")
    try:
        assert await b.acquire() == (False, "n1")
        assert await a.refresh()
        assert etcdctl("--user", f"root:{pw}", "get", "--print-value-only", a.key).strip() == "n1"
    finally:
        await a.release()
    assert await b.acquire() == (True, "n2")
    await b.release()
