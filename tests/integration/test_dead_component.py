"""A dead component is not a live one: the real cluster components of an agent on the lab's
primary, with the leader watch made to crash on every start, turn /health 503 naming the watch,
pgnode_confirmed_primary 0 and the repack guards shut, while the other components run on."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from agent.cluster import component as cluster_component
from agent.core import config as config_mod
from agent.core.context import Context
from agent.core.sdnotify import Notifier
from agent.core.supervisor import Supervisor
from agent.lab import http as lab_http
from agent.lab.agents import Agent
from agent.lab.cluster import Cluster
from agent.lab.etcd import Etcd
from agent.repack import guards
from agent.repack.guards import Guard

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gauge(body: str, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", body, re.M)
    return float(m.group(1)) if m else None


async def get(url: str) -> tuple[int, Any]:
    return await anyio.to_thread.run_sync(lab_http.get, url)


async def wait_for(what: str, check: Any, timeout: float = 45.0) -> Any:
    with anyio.fail_after(timeout):
        while True:
            got = await check()
            if got:
                return got
            await anyio.sleep(0.2)


async def test_a_crash_looping_watch_makes_health_503_and_confirmed_primary_0(
        run_dir: Path, cluster: Cluster, etcd: Etcd) -> None:
    leader = cluster.leader()
    rendered = Agent(run_dir, leader, [etcd.url], scope=cluster.scope, namespace=cluster.namespace)
    ctx = Context.create(config_mod.load(rendered.config_path))
    broken = anyio.Event()

    def crashing(run: Any) -> Any:
        async def wrapped(ctx: Context, *, task_status: anyio.abc.TaskStatus[None]) -> None:
            if broken.is_set():
                raise RuntimeError("forced crash of the leader watch")
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: run(ctx, task_status=task_status))
                await broken.wait()
                raise RuntimeError("forced crash of the leader watch")
        return wrapped

    comps = [dataclasses.replace(c, run=crashing(c.run)) if c.name == "cluster_watch" else c
             for c in cluster_component.components(ctx)]
    sup = Supervisor(ctx, comps, Notifier(""), backoff_max=1.0)
    url = rendered.url
    async with anyio.create_task_group() as tg:
        tg.start_soon(sup.run)

        async def confirmed() -> bool:
            code, body = await get(url + "/metrics")
            return code == 200 and gauge(body, "pgnode_confirmed_primary") == 1.0

        await wait_for("confirmed primary", confirmed)
        assert (await get(url + "/health"))[0] == 200
        assert guards.state_trips(ctx.state.current) == []

        broken.set()

        async def dead() -> tuple[int, Any] | None:
            code, body = await get(url + "/health")
            return (code, body) if code == 503 else None

        code, body = await wait_for("health 503", dead)
        assert body["down_components"] == ["cluster_watch"] and body["status"] == "down"
        # it goes on crashing (restarted with backoff) and stays reported as down all along
        await wait_for("restarts", lambda: _restarts_at_least(ctx, 3))
        code, body = await get(url + "/health")
        assert code == 503 and "cluster_watch" in body["down_components"]
        _, metrics = await get(url + "/metrics")
        assert gauge(metrics, "pgnode_confirmed_primary") == 0.0
        assert gauge(metrics, "pgnode_dcs_up") == 0.0
        assert 'pgnode_up{component="cluster_watch"} 0.0' in metrics
        assert 'pgnode_up{component="patroni_api"} 1.0' in metrics  # the others are untouched
        assert {t.guard for t in guards.state_trips(ctx.state.current)} >= {Guard.DCS_UP, Guard.CONFIRMED_PRIMARY}
        tg.cancel_scope.cancel()


async def _restarts_at_least(ctx: Context, n: int) -> bool:
    v = ctx.registry.get_sample_value("pgnode_component_restarts_total", {"component": "cluster_watch"})
    return (v or 0) >= n
