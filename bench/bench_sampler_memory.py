"""Where the sampler's memory goes at N pg_stat_statements entries: the real component and the
real /metrics render path in this process, with glibc's and pymalloc's own counters.

    .venv/bin/python bench/bench_sampler_memory.py [--n 10000] [--steps 6] [--trace FRAMES]

A throwaway PostgreSQL 15 gets N distinct statements (bench_exporter_side_by_side.py's), the
sampler component (pg_stat_statements, 2 s) primes, then each step runs the N statements again,
waits for two reads and renders /metrics (`agent.core.http.Api.metrics_parts`), and prints:
VmRSS; glibc's heaps (`mallinfo2`: size, in use, free inside them, mmapped blocks) and each
arena's size (`malloc_info`); pymalloc's 1 MiB arenas (`sys._debugmallocstats`). The difference
between VmRSS and what is in use is memory freed but kept (fragmentation). `--trace N` also
runs tracemalloc (N frames; its own allocations move the VmRSS figures, so read those from a
run without it) and prints the largest allocations by line when the state is at rest and at a
read's peak (when the fold starts: two reads and the delta batch alive).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anyio
from prometheus_client import CollectorRegistry

from agent.app import tune_runtime
from agent.core import config as config_mod
from agent.core.context import Context
from agent.core.http import Api
from agent.lab.rundir import new_run_dir, remove_run_dir
from agent.sampler import totals as totals_mod
from agent.sampler.component import Sampler, components
from bench.bench_exporter_side_by_side import fill, new_pg, prepare

LIBC = ctypes.CDLL(None)
MiB = 1 << 20


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def rss() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def glibc() -> str:
    LIBC.mallinfo2.restype = MallInfo2
    m = LIBC.mallinfo2()
    LIBC.fopen.restype = ctypes.c_void_p
    LIBC.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    LIBC.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    LIBC.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(suffix=".xml") as f:
        fp = LIBC.fopen(f.name.encode(), b"w")
        LIBC.malloc_info(0, fp)
        LIBC.fclose(fp)
        xml = Path(f.name).read_text()
    heaps = re.findall(r'<heap nr="\d+">.*?<system type="current" size="(\d+)"/>', xml, re.S)
    return (f"glibc heaps {m.arena / MiB:.1f} (in use {m.uordblks / MiB:.1f}, free {m.fordblks / MiB:.1f}; "
            f"arenas {'/'.join(f'{int(h) / MiB:.1f}' for h in heaps)}), mmapped {m.hblkhd / MiB:.1f}")


def pymalloc_arenas() -> int:
    r, w = os.pipe()
    saved = os.dup(2)
    os.dup2(w, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(w)
        os.close(saved)
    out = b""
    while chunk := os.read(r, 1 << 16):
        out += chunk
    os.close(r)
    m = re.search(rb"# arenas allocated current\s*=\s*([\d,]+)", out)
    return int(m.group(1).replace(b",", b"")) if m else -1


def line(tag: str) -> str:
    traced = ""
    if tracemalloc.is_tracing():
        cur, peak = tracemalloc.get_traced_memory()
        traced = f", traced {cur / MiB:.1f} (peak {peak / MiB:.1f})"
    arenas = pymalloc_arenas()  # not shown while tracemalloc hooks the allocator
    shown = f"; pymalloc arenas {arenas}" if arenas >= 0 else ""
    return f"{tag}: VmRSS {rss():.1f} MiB; {glibc()}{shown}{traced}"


def top(snap: tracemalloc.Snapshot, title: str, n: int = 12) -> None:
    print(f"--- {title}")
    for s in snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)]).statistics("lineno")[:n]:
        print(f"   {s}")


async def reads_reach(sampler: Sampler, n: int) -> None:
    """Polls the read counter (the sampler has no event to wait on)."""
    with anyio.fail_after(120):
        while sampler.health.reads < n:  # noqa: ASYNC110
            await anyio.sleep(0.05)


async def measure(run: Path, pg: Any, n: int, steps: int) -> None:
    state = run / "state"
    state.mkdir()
    cfg = config_mod.parse({
        "node": {"name": "bench", "state_dir": str(state)}, "etcd": {"scope": "bench"},
        "postgres": {"host": str(pg.socket_dir), "port": pg.port, "user": "postgres", "dbname": "postgres"},
        "sampler": {"source": "pg_stat_statements", "interval": "2s"}})
    ctx = Context.create(cfg, CollectorRegistry())
    (comp,) = components(ctx)
    sampler: Sampler = comp.run.__self__  # type: ignore[attr-defined]
    api = Api(ctx.registry, lambda: (True, {}), lambda: {}, {}, ctx.cached_metrics)
    ctx.liveness.register("sampler")
    peak: list[tracemalloc.Snapshot] = []
    added = totals_mod.Totals.added

    def at_fold(self: totals_mod.Totals, batch: totals_mod.Batch, top_n: int, max_series: int) -> totals_mod.Totals:
        if tracemalloc.is_tracing() and len(batch) >= n // 2:
            peak[:] = [tracemalloc.take_snapshot()]
        return added(self, batch, top_n, max_series)

    totals_mod.Totals.added = at_fold  # type: ignore[method-assign]
    print(line("before the sampler"))
    async with anyio.create_task_group() as tg:
        await tg.start(comp.run, ctx)  # type: ignore[arg-type]
        await reads_reach(sampler, 1)
        await api.metrics_parts("")
        print(line("primed"))
        for i in range(steps):
            await anyio.to_thread.run_sync(fill, pg, n)
            await reads_reach(sampler, sampler.health.reads + 2)
            await api.metrics_parts("")
            print(line(f"step {i}"), flush=True)
        tg.cancel_scope.cancel()
    totals_mod.Totals.added = added  # type: ignore[method-assign]
    if tracemalloc.is_tracing():
        top(tracemalloc.take_snapshot(), "largest allocations at rest, by line")
        if peak:
            top(peak[0], "largest allocations when a fold of >= N/2 deltas starts, by line")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--trace", type=int, default=0, help="tracemalloc frames (0: off)")
    args = ap.parse_args()
    if args.trace:
        tracemalloc.start(args.trace)
    run = new_run_dir("pgna-bench-mem-")
    pg = new_pg(run, args.n)
    try:
        pg.start()
        prepare(pg, args.n)
        tune_runtime()  # as agent.app.run does
        anyio.run(measure, run, pg, args.n, args.steps)
    finally:
        pg.stop()
        remove_run_dir(run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
