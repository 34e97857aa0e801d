"""Heartbeats of the agent's own loops. The watchdog is fed only while all of them are fresh:
a wedged loop (not an external outage) must get the agent restarted. A component that has
stopped (crashed, backing off) stays registered with its last beat and is listed as down: its
beat ages like a wedged one's, so a component down longer than its timeout withholds the feed."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio


@dataclass
class Liveness:
    timeout: float
    _beats: dict[str, float] = field(default_factory=dict)
    _timeouts: dict[str, float] = field(default_factory=dict)
    _down: set[str] = field(default_factory=set)

    def register(self, name: str, timeout: float | None = None) -> None:
        """(Re)started: fresh beat, not down."""
        self._beats[name] = anyio.current_time()
        self._down.discard(name)
        if timeout is not None:
            self._timeouts[name] = timeout

    def stopped(self, name: str) -> None:
        self._down.add(name)

    def down(self) -> list[str]:
        return sorted(self._down)

    def beat(self, name: str) -> None:
        self._beats[name] = anyio.current_time()

    def ages(self) -> dict[str, float]:
        now = anyio.current_time()
        return {n: now - t for n, t in self._beats.items()}

    def stale(self) -> list[str]:
        return sorted(n for n, age in self.ages().items() if age > self._timeouts.get(n, self.timeout))
