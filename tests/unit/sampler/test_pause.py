"""The sampler's wait after a failed read: it retries as soon as pg_role has seen PostgreSQL go
down and come back (not at the end of a 30 s backoff), never within 1 s, and keeps the backoff
when the read failed on a PostgreSQL that pg_role sees up all along (a query error)."""

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


async def timed_pause(c: Context, delay: float, *script: tuple[float, bool]) -> float:
    """Seconds `_pause(down=True)` took while `script` publishes (at, postgres_up) events."""
    took = 0.0

    async def publish() -> None:
        t0 = anyio.current_time()
        for at, up in script:
            await anyio.sleep(max(0.0, t0 + at - anyio.current_time()))
            c.state.publish(PostgresAvailability(up=up, in_recovery=False if up else None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(publish)
        t0 = anyio.current_time()
        with anyio.fail_after(delay + 5):
            await Sampler(c)._pause(c, delay, down=True)
        took = anyio.current_time() - t0
        tg.cancel_scope.cancel()
    return took


async def test_retried_once_pg_role_sees_postgres_go_down_and_come_back() -> None:
    c = ctx()
    c.state.publish(PostgresAvailability(up=True, in_recovery=False))
    took = await timed_pause(c, 30.0, (0.3, False), (1.5, True))
    assert 1.5 <= took < 10   # not the 30 s backoff


async def test_never_retried_within_a_second() -> None:
    c = ctx()   # pg_role has not seen PostgreSQL yet: down
    took = await timed_pause(c, 30.0, (0.1, True))
    assert 1.0 <= took < 10


async def test_a_query_error_on_a_postgres_that_stays_up_keeps_the_backoff() -> None:
    c = ctx()
    c.state.publish(PostgresAvailability(up=True, in_recovery=False))
    took = await timed_pause(c, 2.5)
    assert took >= 2.5


async def test_healthy_sampler_sleeps_its_delay() -> None:
    c = ctx()
    t0 = anyio.current_time()
    with anyio.fail_after(10):
        await Sampler(c)._pause(c, 0.3, down=False)
    assert anyio.current_time() - t0 >= 0.3
