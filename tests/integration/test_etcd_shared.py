"""The one etcd client and key layout shared by the jobs, against real etcd: the repack lock
survives ordinary etcd events, and `repack plan` reads Patroni's keys as the watch does."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from agent.core.config import EtcdConfig, parse
from agent.core.events import FailoverPending, LeaderChanged
from agent.lab.etcd import Etcd, EtcdCluster
from agent.repack.lock import TTL, RepackLock
from agent.repack.plan import _etcd_events

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def scope() -> str:
    return f"s{uuid.uuid4().hex[:8]}"


def etcd_cfg(endpoints: list[str], scope: str, **kw: str) -> EtcdConfig:
    return parse({"node": {"name": "n1"}, "etcd": {"endpoints": endpoints, "scope": scope, **kw}}).etcd


@pytest.fixture
def etcd3(run_dir: Path) -> Iterator[EtcdCluster]:
    e = EtcdCluster(run_dir)
    try:
        e.start()
        yield e
    finally:
        e.stop()


async def test_repack_lock_survives_the_restart_of_its_etcd_member(etcd3: EtcdCluster, scope: str) -> None:
    cfg = etcd_cfg(etcd3.endpoints, scope)
    lock = RepackLock(cfg, "n1")
    assert await lock.acquire() == (True, "n1")
    first = etcd3.members[0]
    first.stop()  # a rolling restart of the member the lock was taken on
    try:
        for _ in range(3):  # a TTL's worth of refreshes while it is down
            assert await lock.refresh()
            await anyio.sleep(TTL / 3)
        assert etcd3.any().get(lock.key) == "n1"
    finally:
        first.start()
    assert await lock.refresh()
    other = RepackLock(cfg, "n2")
    assert await other.acquire() == (False, "n1")
    await lock.release()
    assert etcd3.any().get(lock.key) is None


async def test_repack_lock_outlives_its_rbac_token(run_dir: Path, scope: str) -> None:
    e = Etcd(run_dir, auth_token_ttl=2)
    e.start()
    try:
        key = f"/service/{scope}/pg-node-agent/repack-lock"
        e.enable_rbac("rootpw", {"agent": ("agentpw", [("read", f"/service/{scope}/", True),
                                                       ("readwrite", key, False)])})
        pw = run_dir / "etcd-pw"
        pw.write_text("agentpw\n")
        pw.chmod(0o600)
        lock = RepackLock(etcd_cfg([e.url], scope, username="agent", password_file=str(pw)), "n1")
        assert await lock.acquire() == (True, "n1")
        await anyio.sleep(3)  # the token expires (2 s idle)
        assert await lock.refresh()  # (etcd 3.4.23 takes a keepalive without a valid token)
        assert e.get(key) == "n1"
        await anyio.sleep(3)
        await lock.release()  # revoking needs a valid token: one more login
        assert e.get(key) is None  # released now, not left to expire
        assert lock.etcd.logins == 2
    finally:
        e.stop()


async def test_repack_lock_tolerates_failed_refreshes_only_while_its_lease_holds(
        run_dir: Path, scope: str) -> None:
    e = Etcd(run_dir)
    e.start()
    try:
        lock = RepackLock(etcd_cfg([e.url], scope, timeout="1s"), "n1")
        assert await lock.acquire() == (True, "n1")
        e.pause()  # etcd frozen: every call times out
        try:
            t0 = time.monotonic()
            assert await lock.refresh()  # within the TTL: still ours
            while time.monotonic() - t0 < TTL:
                ok = await lock.refresh()
                if not ok:
                    break
            assert not ok  # past the TTL with no confirmed keepalive: the lock is given up
        finally:
            e.resume()
    finally:
        e.stop()


async def test_repack_plan_reads_patronis_keys_as_the_watch_does(etcd: Etcd, scope: str) -> None:
    etcd.put(f"/service/{scope}/leader", "n2")
    etcd.put(f"/service/{scope}/failover", "{}")  # how Patroni 4 leaves it after a switchover
    cfg = parse({"node": {"name": "n1"}, "etcd": {"endpoints": [etcd.url], "scope": scope,
                                                  "namespace": "service"}})  # no leading slash
    events = await _etcd_events(cfg)
    assert LeaderChanged in {type(ev) for ev in events}
    assert next(ev for ev in events if isinstance(ev, LeaderChanged)).leader == "n2"
    assert next(ev for ev in events if isinstance(ev, FailoverPending)).pending is False
    etcd.put(f"/service/{scope}/failover", '{"leader":"n2","member":"n3"}')
    events = await _etcd_events(cfg)
    f = next(ev for ev in events if isinstance(ev, FailoverPending))
    assert (f.pending, f.candidate) == (True, "n3")
    assert RepackLock(cfg.etcd, "n1").key == f"/service/{scope}/pg-node-agent/repack-lock"
