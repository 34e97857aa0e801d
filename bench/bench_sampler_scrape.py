"""Scrape cost of the sampler with N distinct statements in the pg_stat_monitor stand-in.

Starts a throwaway PostgreSQL 15 (agent.lab), installs the stand-in, writes N distinct queryids
(x 4 users) into one finished bucket, lets the sampler ingest it, then times generate_latest()
on the registry and reports series count, bytes per scrape and the process RSS.

    .venv/bin/python bench/bench_sampler_scrape.py [N ...]
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.core import config as config_mod
from agent.core.context import Context
from agent.lab.postgres import PgInstance
from agent.lab.rundir import new_run_dir, remove_run_dir
from agent.sampler.component import Sampler, components
from tests.integration.pgsm_standin import loader


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
            "queryid, pgsm_query_id, toplevel, query, application_name, cmd_type_text, elevel, "
            "calls, total_exec_time, rows, resp_calls, wal_bytes, bucket_done) FROM STDIN"
        ) as cp:
            for q in range(n):
                for u in range(4):
                    bins = ["0"] * 22
                    bins[0] = str(q % 9 + 1)
                    cp.write_row(
                        (
                            0,
                            bucket,
                            10 + u,
                            f"user{u}",
                            5,
                            "appdb",
                            q,
                            q,
                            True,
                            f"SELECT {q}",
                            "app",
                            "SELECT",
                            0,
                            q % 9 + 1,
                            float(q % 97),
                            1,
                            "{" + ",".join(bins) + "}",
                            0,
                            True,
                        )
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
    s.state.watermark = int(bucket.timestamp()) - 60  # as if the previous bucket had been read
    conn = await s.open(ctx)
    t0 = time.perf_counter()
    await s.step(ctx, conn)
    ingest = time.perf_counter() - t0
    await conn.close()
    times, size = [], 0
    for _ in range(50):
        t = time.perf_counter()
        out = generate_latest(ctx.registry)
        times.append(time.perf_counter() - t)
        size = len(out)
    series = sum(1 for line in out.splitlines() if line and not line.startswith(b"#"))
    print(
        f"N={n} rows={n * 4} read+ingest={ingest * 1000:.0f} ms (read {s.health.last_duration * 1000:.0f} ms) "
        f"query series={len(s.state.totals.series)} folded={s.state.totals.series_folded} "
        f"exposition lines={series} bytes/scrape={size} scrape p50={statistics.median(times) * 1000:.2f} ms "
        f"max={max(times) * 1000:.2f} ms RSS={rss_mb():.1f} MB (peak {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} MB)"
    )


async def main(ns: list[int]) -> None:
    if (
        shutil.which("prometheus-postgres-exporter") is None
        and not Path("/usr/bin/prometheus-postgres-exporter").exists()
    ):
        print("prometheus-postgres-exporter is not installed: side-by-side comparison skipped")
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
