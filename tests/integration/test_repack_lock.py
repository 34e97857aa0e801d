"""The scope-wide repack lock against a real etcd with RBAC (the production case)."""

from __future__ import annotations

import secrets
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
from prometheus_client import CollectorRegistry

from agent.core import config as config_mod
from agent.core.context import Context
from agent.lab.etcd import Etcd
from agent.repack.candidates import TableFacts
from agent.repack.component import RepackJob, components
from agent.repack.lock import RepackLock
from agent.repack.windows import Slot

pytestmark = pytest.mark.integration


def etcdctl(etcd: Etcd, *args: str) -> str:
    return subprocess.run(["etcdctl", f"--endpoints={etcd.url}", *args], check=True, capture_output=True,
                          text=True, timeout=30, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}).stdout


def enable_rbac(etcd: Etcd, tmp_path: Path) -> tuple[str, Path]:
    """Root's password, and a file holding it, on an etcd with auth enabled."""
    pw = secrets.token_urlsafe(12)
    etcdctl(etcd, "user", "add", f"root:{pw}")
    etcdctl(etcd, "auth", "enable")
    f = tmp_path / "etcd-pw"
    f.write_text(pw + "\n")
    f.chmod(0o600)
    return pw, f


async def test_lock_is_exclusive_and_released_with_etcd_rbac(fresh_etcd: Etcd, tmp_path: Path) -> None:
    pw, f = enable_rbac(fresh_etcd, tmp_path)
    cfg = config_mod.parse({"node": {"name": "n1"}, "etcd": {
        "scope": "s", "endpoints": [fresh_etcd.url], "username": "root", "password_file": str(f)}}).etcd
    a, b = RepackLock(cfg, "n1"), RepackLock(cfg, "n2")
    assert await a.acquire() == (True, "n1")
    try:
        assert await b.acquire() == (False, "n1")
        assert await a.refresh()
        assert etcdctl(fresh_etcd, "--user", f"root:{pw}", "get", "--print-value-only", a.key).strip() == "n1"
    finally:
        await a.release()
    assert await b.acquire() == (True, "n2")
    await b.release()


async def test_the_repack_job_keeps_one_etcd_client_for_its_lifetime(fresh_etcd: Etcd, tmp_path: Path) -> None:
    """Each run takes the lock through the component's one client: with RBAC, one login for
    all runs (a login is a bcrypt check and a raft proposal on etcd), not one per run. The runs
    here take the lock, and a guard (this node is no confirmed primary) stops them before pg_repack."""
    _, f = enable_rbac(fresh_etcd, tmp_path)
    cfg = config_mod.parse({"node": {"name": "n1", "state_dir": str(tmp_path / "state")}, "etcd": {
        "scope": "s", "endpoints": [fresh_etcd.url], "username": "root", "password_file": str(f)},
        "repack": {"enabled": True}})
    ctx = Context.create(cfg, CollectorRegistry())
    (comp,) = components(ctx)
    job = comp.run.__self__  # type: ignore[attr-defined]
    assert isinstance(job, RepackJob)
    t = TableFacts(database="db", oid=1, schema="public", table="t", heap_bytes=1, total_bytes=1, reltuples=1,
                   row_width=1, dead_tuples=1, live_tuples=1)
    now = datetime.now(UTC)
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):
            await job._run_locked(ctx, t, Slot(0, now, now + timedelta(hours=1)))
    events = [e["event"] for e in logs]
    assert events.count("repack_lock_acquired") == 2, events
    assert events.count("repack_lock_released") == 2, events
    assert events.count("etcd_authenticated") == 1, events
