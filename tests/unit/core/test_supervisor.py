from __future__ import annotations

import anyio
import anyio.abc
import pytest

from agent.core.config import Config, parse
from agent.core.context import Context
from agent.core.sdnotify import Notifier
from agent.core.supervisor import Component, Supervisor, keys_needing_restart

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_ctx() -> Context:
    cfg = parse({"node": {"name": "n1"}, "etcd": {"scope": "s"}, "http": {"listen": "127.0.0.1:0"}})
    return Context.create(cfg)


async def test_component_that_raises_is_restarted_and_counted(logs: list[dict[str, object]]) -> None:
    runs = 0
    healthy = anyio.Event()

    async def flaky(ctx: Context, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        if runs < 3:
            raise RuntimeError(f"boom {runs}")
        healthy.set()
        await anyio.sleep_forever()

    ctx = make_ctx()
    sup = Supervisor(ctx, [Component("flaky", flaky)], Notifier(""), backoff_max=0.05)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.run)
            await healthy.wait()
            assert ctx.registry.get_sample_value("pgnode_component_restarts_total", {"component": "flaky"}) == 2
            assert sup.health["flaky"].up
            assert "boom 2" in sup.health["flaky"].last_error
            tg.cancel_scope.cancel()
    failures = [e for e in logs if e["event"] == "component_failed"]
    assert len(failures) == 2 and failures[0]["component"] == "flaky"


async def test_wedged_component_makes_health_503_and_names_it() -> None:
    ctx = make_ctx()

    async def wedged(ctx: Context, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await anyio.sleep_forever()  # never beats

    sup = Supervisor(ctx, [Component("wedged", wedged, heartbeat_timeout=0.2)], Notifier(""))
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.run)
            while not sup.ready:
                await anyio.sleep(0.01)
            ok, _ = sup.health_view()
            assert ok
            await anyio.sleep(0.3)  # let the heartbeat age past its 0.2 s timeout
            ok, body = sup.health_view()
            assert not ok and body["stale_components"] == ["wedged"]
            tg.cancel_scope.cancel()


async def test_ready_is_sent_even_when_a_component_never_starts() -> None:
    ctx = make_ctx()

    async def never(ctx: Context, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        await anyio.sleep_forever()

    sup = Supervisor(ctx, [Component("never", never)], Notifier(""), start_timeout=0.2)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.run)
            while not sup.ready:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()


async def test_a_stopped_component_is_down_in_health_and_its_facts_become_unknown() -> None:
    from agent.core.events import DcsAvailability, LeaderChanged

    ctx = make_ctx()
    crash = anyio.Event()

    async def watch(ctx: Context, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        ctx.publish(DcsAvailability(up=True, endpoint="e"))
        ctx.publish(LeaderChanged(leader="n1", previous=None, revision=5))
        task_status.started()
        await crash.wait()
        raise RuntimeError("boom")

    comp = Component("cluster_watch", watch, heartbeat_timeout=0.2,
                     on_stop=(DcsAvailability(up=False, endpoint="", reason="cluster_watch not running"),))
    sup = Supervisor(ctx, [comp], Notifier(""), backoff_max=60)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.run)
            while not sup.ready:
                await anyio.sleep(0.01)
            assert sup.health_view()[0] and ctx.state.current.dcs_up
            crash.set()
            while sup.health["cluster_watch"].up:
                await anyio.sleep(0.01)
            ok, body = sup.health_view()
            assert not ok and body["down_components"] == ["cluster_watch"] and body["status"] == "down"
            assert not ctx.state.current.dcs_up and ctx.state.current.leader_view.value == "unknown"
            await anyio.sleep(0.3)  # backing off past its heartbeat timeout: the watchdog sees it too
            assert ctx.liveness.stale() == ["cluster_watch"] and ctx.liveness.down() == ["cluster_watch"]
            tg.cancel_scope.cancel()


def _cfg(**sections: object) -> Config:
    return parse({"node": {"name": "n1"}, "etcd": {"scope": "s"}, **sections})


def test_reload_names_every_changed_key_read_only_at_start() -> None:
    old = _cfg()
    new = _cfg(sampler={"enabled": False, "interval": "30s"}, watchdog={"heartbeat_timeout": "60s"},
               archive={"enabled": False}, repack={"binary": "/usr/bin/pg_repack"})
    assert keys_needing_restart(old, new, {"sampler", "archive"}) == [
        "watchdog", "sampler.enabled", "sampler.interval", "archive.enabled", "repack.binary"]


def test_repack_disabled_by_reload_takes_effect_but_enabling_a_component_never_built_needs_restart() -> None:
    on, off = _cfg(repack={"enabled": True}), _cfg(repack={"enabled": False})
    assert keys_needing_restart(on, off, {"repack"}) == []
    assert keys_needing_restart(off, on, {"repack"}) == []
    assert keys_needing_restart(off, on, set()) == ["repack.enabled"]


def test_windows_and_guard_thresholds_take_effect_without_restart() -> None:
    old = _cfg(repack={"enabled": True})
    new = _cfg(repack={"enabled": True, "max_lock_waiters": 3, "lag_excluded_standbys": ["n3"]},
               hooks=[{"command": ["/bin/true"]}], logging={"level": "debug"})
    assert keys_needing_restart(old, new, {"repack"}) == []
