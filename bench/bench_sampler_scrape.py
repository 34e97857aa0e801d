"""Scrape cost of the sampler with N distinct statements in the pg_stat_monitor stand-in.

Starts a throwaway PostgreSQL 15 (agent.lab), installs the stand-in, writes N distinct queryids
(x 4 users) into one finished bucket, lets the sampler ingest it, then times two renders:

- `generate_latest` of every registry (the live one plus the query series' cached one): what a
  scrape would cost if the query series were rendered on every scrape;
- the agent's real render path, `agent.core.http.Api(...).metrics("")`, built like
  agent/core/supervisor.py does with `ctx.cached_metrics`: the first call after an ingest
  renders the query series, later calls serve their cached bytes;

and reports series count, bytes per scrape and the process RSS (now and peak), and the event
loop's longest stall (bench/loopprobe.py) during the sampler's step (read, aggregation and fold
of the N x 4 rows: the pg_stat_monitor path) and during the first render.

    .venv/bin/python bench/bench_sampler_scrape.py [N ...]
"""

from __future__ import annotations

import asyncio
import gc
import resource
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import anyio
from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.app import tune_runtime
from agent.core import config as config_mod
from agent.core import http
from agent.core.context import Context
from agent.lab.rundir import new_run_dir, remove_run_dir
from agent.sampler.component import Sampler, components
from bench.loopprobe import LoopProbe
from tests.integration.pgsm_standin import loader
from tests.integration.testlab.postgres import PgInstance


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def one(pg: PgInstance, n: int, state_dir: Path) -> None:
    db = f"bench_{n}"
    with pg.connect() as admin:
        loader.install(admin, db, bucket_time=60, max_buckets=10)
    bucket = datetime.fromtimestamp((int(time.time()) // 60 - 2) * 60, UTC)
    with pg.connect(db) as c:
        c.execute("SET search_path = pgsm_standin, pg_catalog, public")
        with c.cursor().copy(
            "COPY pgsm_standin.entries (bucket, bucket_start_time, userid, username, dbid, datname, "
            "queryid, pgsm_query_id, toplevel, query, application_name, cmd_type, elevel, "
            "calls, total_exec_time, rows, resp_calls, wal_bytes, bucket_done) FROM STDIN"
        ) as cp:
            for q in range(n):
                for u in range(4):
                    bins = ["0"] * 22
                    bins[0] = str(q % 9 + 1)
                    cp.write_row(
                        (0, bucket, 10 + u, f"user{u}", 5, "appdb", q, q, True, f"SELECT {q}", "app", 1, 0,
                         q % 9 + 1, float(q % 97), 1, ",".join(bins), 0, True)
                    )
    cfg = config_mod.parse(
        {
            "node": {"name": "bench", "state_dir": str(state_dir / db)},
            "etcd": {"scope": "s"},
            "postgres": {"host": str(pg.socket_dir), "port": pg.port, "user": "postgres", "dbname": db},
            "sampler": {"top_n": 100, "labels": ["datname", "username"]},
        }
    )
    ctx = Context.create(cfg, CollectorRegistry())
    (comp,) = components(ctx)
    s: Sampler = comp.run.__self__  # type: ignore[attr-defined]
    s.state = replace(s.state, watermark=int(bucket.timestamp()) - 60)  # as if the previous bucket had been read
    conn = await s.open(ctx)
    gc.collect()
    tune_runtime()  # as agent.app.run does (gc.freeze: what exists now lives as long as the process)
    rss_before, peak_before = rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    probe = LoopProbe()
    async with anyio.create_task_group() as tg:
        tg.start_soon(probe.run)
        await anyio.sleep(0.2)
        in_step = probe.open()
        t0 = time.perf_counter()
        await s.step(ctx, conn)
        ingest = time.perf_counter() - t0
        api = http.Api(ctx.registry, lambda: (True, {}), lambda: {}, {}, ctx.cached_metrics)
        in_render = probe.open()
        t = time.perf_counter()
        body, _ctype = await api.metrics("")  # first scrape after the ingest: renders the query series
        first = time.perf_counter() - t
        probe.close()
        tg.cancel_scope.cancel()
    await conn.close()
    registries = [ctx.registry, *(c.registry for c in ctx.cached_metrics)]
    full_times, full = [], b""
    for _ in range(50):
        t = time.perf_counter()
        full = b"".join(generate_latest(r) for r in registries)
        full_times.append(time.perf_counter() - t)
    api_times = []
    for _ in range(50):
        t = time.perf_counter()
        body, _ctype = await api.metrics("")
        api_times.append(time.perf_counter() - t)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    full_series = sum(1 for line in full.splitlines() if line and not line.startswith(b"#"))
    print(
        f"N={n} rows={n * 4} read+ingest={ingest * 1000:.0f} ms (read {(s.health.last_duration or 0.0) * 1000:.0f} ms) "
        f"query series={len(s.state.totals.series)} folded={s.state.totals.series_folded}\n"
        f"  generate_latest (all registries, every scrape): lines={full_series} bytes={len(full)} "
        f"p50={statistics.median(full_times) * 1000:.2f} ms max={max(full_times) * 1000:.2f} ms\n"
        f"  Api.metrics (agent render path): lines={series} bytes={len(body)} "
        f"first after ingest={first * 1000:.2f} ms, cached p50={statistics.median(api_times) * 1000:.3f} ms "
        f"max={max(api_times) * 1000:.3f} ms\n"
        f"  event loop's longest stall (wall / less waiting for a CPU): during the step "
        f"{in_step.wall_ms:.2f} / {in_step.net_ms:.2f} ms, during the first render {in_render.wall_ms:.2f} / "
        f"{in_render.net_ms:.2f} ms\n"
        f"  RSS before the read {rss_before:.1f} MiB (peak so far {peak_before:.1f} MiB, the loader's COPY "
        f"included), after ingest and renders {rss_mb():.1f} MiB "
        f"(peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MiB)"
    )


async def main(ns: list[int]) -> None:
    # postgres_exporter side by side (pg_stat_statements): bench/bench_exporter_side_by_side.py
    run = new_run_dir("pgna-bench-")
    pg = PgInstance(run)
    pg.start()
    try:
        for n in ns:
            await one(pg, n, run)
    finally:
        pg.stop()
        remove_run_dir(run)


if __name__ == "__main__":
    asyncio.run(main([int(a) for a in sys.argv[1:]] or [1000, 10000]))
