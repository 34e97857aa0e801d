"""DB-side cost of one pg_stat_monitor read at ~30k retained rows, next to the view's own count(*).

Needs the real pg_stat_monitor built and installed for the lab's PostgreSQL 15 (see
tests/integration/test_sampler_pgsm_real.py); exits saying so otherwise. Starts a throwaway
PostgreSQL 15 with the extension preloaded (bucket 20 s x 6 buckets, pgsm_max at its 256 MB
default), fills every bucket with 5,000 distinct statements (50 tables x 100 columns, run from
a DO block with pgsm_track = 'all'), then times each query server-side with EXPLAIN (ANALYZE,
TIMING OFF): execution time, no transfer to the client.

    .venv/bin/python bench/bench_pgsm_read_cost.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.lab.patroni import PG_BIN_DIR
from agent.lab.rundir import new_run_dir, remove_run_dir
from agent.sampler.pg_stat_monitor import COLUMNS, build_select
from tests.integration.testlab.postgres import PgInstance

BT, MB, TABLES, COLS = 20, 6, 50, 100
# the read before this change: the view, filtered to the buckets to ingest
OLD_READ = """
SELECT extract(epoch FROM bucket_start_time)::float8, queryid::text, coalesce(elevel, 0), coalesce(sqlcode, ''),
       resp_calls, coalesce(datname::text, ''), coalesce(username::text, ''), calls::float8, total_exec_time
FROM pg_stat_monitor WHERE bucket_start_time > {lo} AND bucket_start_time <= {hi} AND queryid IS NOT NULL
"""

INTERNAL_DETAIL = """
SELECT extract(epoch FROM bucket_start_time)::float8, queryid::text, coalesce(elevel, 0), coalesce(sqlcode, ''),
       resp_calls, coalesce(datname::text, ''), coalesce(username::text, ''), calls::float8, total_exec_time
FROM pg_stat_monitor_internal(false) WHERE bucket_start_time > {lo} AND bucket_start_time <= {hi}
"""
RUNS = 11


def exec_ms(conn: psycopg.Connection[Any], query: sql.Composable | str) -> float:
    plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {}").format(
        query if isinstance(query, sql.Composable) else sql.SQL(query))).fetchone()[0]  # type: ignore[index]
    return float(plan[0]["Execution Time"])


def medians(conn: psycopg.Connection[Any], queries: dict[str, sql.Composable | str]) -> dict[str, float]:
    """Round-robin over the queries, RUNS rounds: load on the host hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in queries}
    for _ in range(RUNS):
        for k, q in queries.items():
            times[k].append(exec_ms(conn, q))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    if not (PG_BIN_DIR.parent / "lib" / "pg_stat_monitor.so").exists():
        print("pg_stat_monitor is not installed for this PostgreSQL: nothing to measure")
        return
    run = new_run_dir("pgna-bench-")
    pg = PgInstance(run, name="pgsm-cost", settings={
        "shared_preload_libraries": "pg_stat_monitor", "pg_stat_monitor.pgsm_bucket_time": BT,
        "pg_stat_monitor.pgsm_max_buckets": MB, "pg_stat_monitor.pgsm_normalized_query": "on"})
    pg.start()
    try:
        with pg.connect() as c:
            c.execute("CREATE EXTENSION pg_stat_monitor")
            for t in range(TABLES):
                cols = ", ".join(f"c{j} int" for j in range(COLS))
                c.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(f"w{t}"), sql.SQL(cols)))
            c.execute("SET pg_stat_monitor.pgsm_track = 'all'")
            fill = (f"DO $$ BEGIN FOR t IN 0..{TABLES - 1} LOOP FOR j IN 0..{COLS - 1} LOOP "
                    "EXECUTE format('SELECT c%s FROM w%s LIMIT 1', j, t); END LOOP; END LOOP; END $$")
            for i in range(MB):  # one fill per bucket: MB buckets x TABLES x COLS distinct statements
                if i:
                    time.sleep(BT - (time.time() % BT) + 0.2)
                c.execute(fill)
            c.execute("SET pg_stat_monitor.pgsm_track = 'none'")
            rows = c.execute("SELECT count(*) FROM pg_stat_monitor").fetchone()[0]  # type: ignore[index]
            cols_ = {r[0] for r in c.execute(COLUMNS).fetchall()}
            hi = int((time.time() - BT) // BT * BT)  # the newest finished bucket
            his = c.execute("SELECT to_timestamp(%s), to_timestamp(%s)", (hi - BT, hi)).fetchone()
            assert his is not None
            lit = {"lo": sql.Literal(his[0]), "hi": sql.Literal(his[1])}
            new_read = sql.SQL(build_select(cols_, ("datname", "username")).as_string(c)
                               .replace("%(lo)s", "{lo}").replace("%(hi)s", "{hi}")).format(**lit)
            old_read = sql.SQL(OLD_READ).format(**lit)
            one_bucket = c.execute(sql.SQL("SELECT count(*) FROM pg_stat_monitor WHERE bucket_start_time > {lo} "
                                           "AND bucket_start_time <= {hi}").format(**lit)).fetchone()[0]  # type: ignore[index]
            figures = medians(c, {
                "view count(*)": "SELECT count(*) FROM pg_stat_monitor",
                "view SELECT * (whole view)": "SELECT * FROM pg_stat_monitor",
                "old read: view WHERE bucket (lo, hi]": old_read,
                "new read: pg_stat_monitor_internal(false), rows of (lo, hi] + summaries": new_read,
                "  the same without the summaries (what they cost)": sql.SQL(INTERNAL_DETAIL).format(**lit),
                "pg_stat_monitor_internal(false) count(*)": "SELECT count(*) FROM pg_stat_monitor_internal(false)",
            })
        print(f"pg_stat_monitor 2.3.2, PostgreSQL 15: {rows} retained rows ({MB} buckets x "
              f"{TABLES * COLS} statements), {one_bucket} in the bucket read; labels datname, username")
        for k, v in figures.items():
            print(f"  {k:75s} {v:8.1f} ms (median of {RUNS}, server execution time)")
    finally:
        pg.stop()
        remove_run_dir(run)


if __name__ == "__main__":
    main()
