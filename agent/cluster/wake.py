"""Poll at an interval, but at once (and a few times soon after) when a leader event arrives:
Patroni and PostgreSQL finish a promotion or demotion a moment after the leader key moves."""

from __future__ import annotations

import anyio

from agent.core.bus import Bus, Lagged
from agent.core.events import LeaderChanged

# The first re-read waits 50 ms: Patroni's REST answer lags the key anyway, and polling at once
# puts ~3 ms of event-loop work right where the scrape showing the change would run (measured).
FOLLOWUPS = (0.05, 0.3, 1.0, 2.5)


class Waker:
    def __init__(self) -> None:
        self._ev = anyio.Event()

    def set(self) -> None:
        self._ev.set()

    async def wait(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self._ev.wait()
        fired = self._ev.is_set()
        if fired:
            self._ev = anyio.Event()
        return fired

    async def follow_leader_events(self, bus: Bus) -> None:
        """Run in the component's task group: wake on each leader change, then again shortly."""
        async with bus.subscribe() as events, anyio.create_task_group() as tg:
            async for ev in events:
                if isinstance(ev, LeaderChanged | Lagged):
                    tg.start_soon(self._followups)

    async def _followups(self) -> None:
        last = 0.0
        for t in FOLLOWUPS:
            await anyio.sleep(t - last)
            last = t
            self.set()
