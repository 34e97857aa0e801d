"""Role news wakes the pollers: leader events, and PostgreSQL going down or coming back."""

from __future__ import annotations

import anyio
import pytest

from agent.cluster.wake import Waker
from agent.core.bus import Bus
from agent.core.events import LeaderChanged, PostgresAvailability

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_postgres_going_down_or_coming_back_wakes_the_patroni_reader() -> None:
    bus, waker = Bus(), Waker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waker.follow_leader_events, bus)
        await anyio.sleep(0.05)  # subscribed
        bus.publish(PostgresAvailability(up=True, in_recovery=False))  # first sighting: no news
        bus.publish(PostgresAvailability(up=True, in_recovery=False))  # the same again: no news
        assert not await waker.wait(0.5)
        bus.publish(PostgresAvailability(up=False, reason="connection refused"))
        assert await waker.wait(2)
        await anyio.sleep(2.6)  # let the follow-ups of that news pass
        while await waker.wait(0.01):
            pass
        bus.publish(PostgresAvailability(up=True, in_recovery=False))  # back
        assert await waker.wait(2)
        await anyio.sleep(2.6)
        while await waker.wait(0.01):
            pass
        bus.publish(LeaderChanged(leader="n1", previous=None, revision=3))
        assert await waker.wait(2)
        tg.cancel_scope.cancel()
