"""How long the event loop is held: a task that sleeps 1 ms at a time and records how late it wakes.

A late wake-up on a busy box is partly the loop's thread waiting for a CPU (runnable, not
running: the kernel's run-queue wait, the second field of /proc/self/task/<tid>/schedstat), and
partly this process: its callbacks, a worker thread holding the GIL, a garbage collection. Each
stall is recorded both ways: `wall`, and `net` (less the run-queue wait of the same interval).
Linux only.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import anyio


@dataclass
class Window:
    """The longest stall seen while the window was open."""

    wall_ms: float = 0.0
    net_ms: float = 0.0


@dataclass
class LoopProbe:
    current: Window | None = None  # where stalls are recorded now; `outside` when None
    outside: Window = field(default_factory=Window)

    def open(self) -> Window:
        self.current = Window()
        return self.current

    def close(self) -> None:
        self.current = None

    async def run(self) -> None:
        """Until cancelled, in the loop to watch."""
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat", "rb", buffering=0) as sched:  # noqa: ASYNC230

            def runq_ms() -> float:
                sched.seek(0)
                return int(sched.read().split()[1]) / 1e6

            while True:
                t, q = time.perf_counter(), runq_ms()
                await anyio.sleep(0.001)
                wall = (time.perf_counter() - t - 0.001) * 1000
                net = wall - (runq_ms() - q)
                w = self.current or self.outside
                w.wall_ms, w.net_ms = max(w.wall_ms, wall), max(w.net_ms, net)
