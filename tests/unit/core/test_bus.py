from __future__ import annotations

import anyio
import pytest

from agent.core.bus import Bus, Lagged
from agent.core.events import DcsAvailability


@pytest.mark.anyio
async def test_slow_subscriber_is_told_it_lagged_and_others_are_not_stalled() -> None:
    bus = Bus(buffer=2)
    async with bus.subscribe() as slow, bus.subscribe() as fast:
        got_fast = []
        for i in range(5):
            bus.publish(DcsAvailability(up=bool(i % 2), endpoint=str(i)))
            got_fast.append(await fast.receive())
        assert [e.endpoint for e in got_fast] == ["0", "1", "2", "3", "4"]  # type: ignore[union-attr]
        first, second = slow.receive_nowait(), slow.receive_nowait()
        assert [first.endpoint, second.endpoint] == ["0", "1"]  # type: ignore[union-attr]
        bus.publish(DcsAvailability(up=True, endpoint="5"))
        assert slow.receive_nowait() == Lagged(3)
        assert slow.receive_nowait().endpoint == "5"  # type: ignore[union-attr]
        with pytest.raises(anyio.WouldBlock):
            slow.receive_nowait()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
