"""Why the sampler's Python runs on the event loop in slices, not in a worker thread.

A probe task in an asyncio loop (bench/loopprobe.py: sleeps 1 ms at a time, records how late it
wakes, wall clock and less the loop thread's run-queue wait) while a burst of ~70 ms of pure
Python (the sampler's fold at 10k statements) runs every 2 s:

- `thread`: the burst in a worker thread of the same process (what anyio.to_thread does);
- `process`: the same burst in a child process (no GIL shared);
- `slices`: the same burst on the loop, 0.5 ms at a time (agent/core/slices.py);
- `none`: no burst.

With `--spinners K`, K processes spin on the CPU meanwhile (two saturate a 2-vCPU box). Prints
the longest stall per 2-second window, p50 and max, per mode.

    .venv/bin/python bench/bench_gil_preemption.py [--seconds 30] [--spinners 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.app import SWITCH_INTERVAL
from agent.core import slices
from bench.loopprobe import LoopProbe

BURST = 0.07  # seconds of CPU a burst
PERIOD = 2.0


def burst_pieces() -> slices.Slices[None]:
    t, x = time.thread_time(), 0
    while time.thread_time() - t < BURST:
        for i in range(200):
            x += len(str(i))
        yield None


def burst() -> None:
    slices.drain(burst_pieces())


def burst_forever() -> None:
    while True:
        burst()
        time.sleep(PERIOD)


def spin_forever() -> None:
    while True:
        t = time.monotonic()
        while time.monotonic() - t < 0.05:
            pass
        time.sleep(0.02)


async def measure(mode: str, seconds: float) -> tuple[list[float], list[float]]:
    probe, windows = LoopProbe(), []
    child = None
    if mode == "thread":
        threading.Thread(target=burst_forever, daemon=True).start()
    elif mode == "process":
        child = subprocess.Popen([sys.executable, __file__, "--child", "burst"])  # noqa: ASYNC220 - before the loop runs anything
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe.run)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                windows.append(probe.open())
                if mode == "slices":
                    await slices.run(burst_pieces())
                await anyio.sleep(PERIOD)
                probe.close()
            tg.cancel_scope.cancel()
    finally:
        if child is not None:
            child.kill()
            child.wait()
    return [w.wall_ms for w in windows], [w.net_ms for w in windows]


def main() -> int:
    if sys.argv[1:2] == ["--child"]:
        (burst_forever if sys.argv[2] == "burst" else spin_forever)()
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--spinners", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default="none,thread,process,slices")
    args = ap.parse_args()
    sys.setswitchinterval(SWITCH_INTERVAL)
    spinners = [subprocess.Popen([sys.executable, __file__, "--child", "spin"]) for _ in range(args.spinners)]
    try:
        for r in range(args.rounds):
            for mode in args.modes.split(","):
                # each mode in a fresh process: a thread started by one mode must not run on in the next
                out = subprocess.run([sys.executable, __file__, "--one", mode, str(args.seconds)],
                                     capture_output=True, text=True, check=True).stdout.strip()
                print(f"round {r + 1} {out}", flush=True)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    return 0


def one(mode: str, seconds: float) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL)
    wall, net = anyio.run(measure, mode, seconds)
    print(f"{mode:8} longest stall per {PERIOD:g} s window: wall p50 {statistics.median(wall):6.2f} max "
          f"{max(wall):6.2f} ms | less run-queue wait p50 {statistics.median(net):5.2f} max {max(net):6.2f} ms")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        one(sys.argv[2], float(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
