"""The sampler's wait between reads: while PostgreSQL is lost it retries as soon as pg_role
reports PostgreSQL up (not at the end of a 30 s backoff), but never within 1 s."""

from __future__ import annotations

import anyio
from prometheus_client import CollectorRegistry

from agent.core import config as config_mod
from agent.core.context import Context
from agent.core.events import PostgresAvailability
from agent.sampler.component import Sampler


def ctx() -> Context:
    cfg = config_mod.parse({"node": {"name": "n1", "state_dir": "/nonexistent"}, "etcd": {"scope": "s"},
                            "sampler": {"interval": "60s"}})
    return Context.create(cfg, CollectorRegistry())


async def test_lost_postgres_is_retried_when_pg_role_sees_it_up() -> None:
    c = ctx()
    sampler = Sampler(c)
    t0 = anyio.current_time()
    async with anyio.create_task_group() as tg:
        async def recover() -> None:
            await anyio.sleep(1.5)
            c.state.publish(PostgresAvailability(up=True, in_recovery=False))
        tg.start_soon(recover)
        with anyio.fail_after(10):
            await sampler._pause(c, 30.0, down=True)
    assert anyio.current_time() - t0 >= 1.5   # and well before the 30 s backoff (fail_after)


async def test_retry_waits_at_least_a_second_even_when_postgres_looks_up() -> None:
    c = ctx()
    c.state.publish(PostgresAvailability(up=True, in_recovery=False))
    t0 = anyio.current_time()
    with anyio.fail_after(10):
        await Sampler(c)._pause(c, 30.0, down=True)
    assert anyio.current_time() - t0 >= 1.0


async def test_healthy_sampler_sleeps_its_delay() -> None:
    c = ctx()
    t0 = anyio.current_time()
    with anyio.fail_after(10):
        await Sampler(c)._pause(c, 0.3, down=False)
    assert anyio.current_time() - t0 >= 0.3
