"""Heartbeats of the agent's own loops. The watchdog is fed only while all of them are fresh:
a wedged loop (not an external outage) must get the agent restarted."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio


@dataclass
class Liveness:
    timeout: float
    _beats: dict[str, float] = field(default_factory=dict)
    _timeouts: dict[str, float] = field(default_factory=dict)

    def register(self, name: str, timeout: float | None = None) -> None:
        self._beats[name] = anyio.current_time()
        if timeout is not None:
            self._timeouts[name] = timeout

    def unregister(self, name: str) -> None:
        self._beats.pop(name, None)
        self._timeouts.pop(name, None)

    def beat(self, name: str) -> None:
        self._beats[name] = anyio.current_time()

    def ages(self) -> dict[str, float]:
        now = anyio.current_time()
        return {n: now - t for n, t in self._beats.items()}

    def stale(self) -> list[str]:
        return sorted(n for n, age in self.ages().items() if age > self._timeouts.get(n, self.timeout))
