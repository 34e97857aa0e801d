"""CPU-bound work run on the event loop a slice at a time, instead of in a worker thread.

Why not `anyio.to_thread`: a worker thread running Python holds the GIL, and on a busy box the
kernel preempts it while it holds it; the loop's thread then waits for the GIL until that
thread gets a CPU again. With 70 ms of Python a step (the sampler at 10k statements) on two
saturated CPUs, that held the loop 30-80 ms at a time, whatever the switch interval (bench/).
Run on the loop in slices of about SLICE seconds, the same work lets every timer and every
socket in between; the only wait left is the loop's own thread waiting for a CPU.

Work is a generator that yields None at points where it may pause (every few hundred
entries) and returns its result. A call that releases the GIL while it works (zlib, a write,
an fsync) belongs in a thread still: the work yields it as an `Offload` and is sent its result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

T = TypeVar("T")


@dataclass(frozen=True)
class Offload:
    """Yielded by work for a call that releases the GIL while it runs: done in a worker
    thread, its result (or its exception) sent back into the work."""

    call: Callable[[], Any]


# Yields None where it may pause, or an Offload; returns its result.
Slices = Generator["Offload | None", Any, T]

# Seconds of work between two turns of the event loop. An event that arrives meanwhile (a
# socket read, a timer) waits up to about two slices: asyncio wakes its task in the turn after
# the one that saw it.
SLICE = 0.0005


async def run(work: Slices[T], budget: float | None = None) -> T:
    """Runs `work` to its end on the event loop, letting the loop turn (timers, sockets,
    other tasks) whenever a slice has used `budget` seconds (SLICE)."""
    budget = SLICE if budget is None else budget
    clock = time.perf_counter
    until = clock() + budget
    try:
        step = next(work)
        while True:
            if step is not None:
                try:
                    result = await anyio.to_thread.run_sync(step.call)
                except Exception as e:
                    step = work.throw(e)
                else:
                    step = work.send(result)
                until = clock() + budget
                continue
            if clock() >= until:
                await anyio.lowlevel.checkpoint()
                until = clock() + budget
            step = next(work)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        work.close()  # cancelled mid-way: the generator's own finally blocks run now


def drain(work: Slices[T]) -> T:
    """Runs `work` to its end at once, offloaded calls inline (tests, code off the loop)."""
    try:
        step = next(work)
        while True:
            if step is None:
                step = next(work)
                continue
            try:
                result = step.call()
            except Exception as e:
                step = work.throw(e)
            else:
                step = work.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
