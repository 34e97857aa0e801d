"""Poll at an interval, but soon (50 ms, then a few times more) when role news arrives: a leader
event (Patroni and PostgreSQL finish a promotion or demotion a moment after the leader key
moves), or pg_is_in_recovery() seeing PostgreSQL go down, come back or change its recovery
state (after a postmaster restart Patroni's word changes with no leader event at all)."""

from __future__ import annotations

import anyio

from agent.core.bus import Bus, Lagged
from agent.core.events import LeaderChanged, PostgresAvailability

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
        postgres: tuple[bool, bool | None] | None = None  # (up, in_recovery) last seen
        async with bus.subscribe() as events, anyio.create_task_group() as tg:
            async for ev in events:
                if isinstance(ev, PostgresAvailability):
                    seen, postgres = postgres, (ev.up, ev.in_recovery)
                    if seen is None or seen == postgres:
                        continue  # the first sighting or the same again: no news
                elif not isinstance(ev, LeaderChanged | Lagged):
                    continue
                tg.start_soon(self._followups)

    async def _followups(self) -> None:
        last = 0.0
        for t in FOLLOWUPS:
            await anyio.sleep(t - last)
            last = t
            self.set()
