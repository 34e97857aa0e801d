"""How long a blocked leftover cleanup stalls the table's readers, old schedule vs new.

A throwaway PostgreSQL 15 (tests/integration/testlab/postgres.py) gets a table with real pg_repack leftovers
(pg_repack 1.4.8 SIGKILLed after its trigger exists) and a client transaction holding ACCESS
SHARE on it, so no cleanup can take its ACCESS EXCLUSIVE lock. While a cleanup keeps trying for
`--seconds`, one reader thread runs primary-key lookups on the table back to back; every lookup
queued behind a waiting ACCESS EXCLUSIVE request waits with it. Two schedules, one after the
other:

- old: `lock_timeout = 1.2s`, retried every 0.3 s (agent/repack/cleanup.py before issue 16);
- new: `agent.repack.cleanup.drop` (80 ms attempts, gaps from 0.8 s doubling).

Prints, per schedule: lookups, share of wall time the reader spent in lookups slower than 20 ms,
p99 and max lookup time.

    .venv/bin/python bench/repack_cleanup_stall.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.integration.testlab

import anyio
import psycopg
from psycopg.rows import dict_row

from agent.lab.patroni import PG_BIN_DIR, SUPERUSER
from agent.lab.rundir import new_run_dir, remove_run_dir
from agent.repack import cleanup
from tests.integration.testlab.postgres import PgInstance

DB = "stall"


def leftovers(pg: PgInstance) -> int:
    """Run pg_repack on tbl, SIGKILL it once its trigger exists; return the table's oid."""
    hold = pg.connect(DB)
    hold.autocommit = False
    hold.execute("INSERT INTO other VALUES (1)")  # pg_repack waits for it after the copy
    env = {**os.environ, "PGHOST": str(pg.socket_dir), "PGPORT": str(pg.port), "PGUSER": SUPERUSER}
    p = subprocess.Popen([str(PG_BIN_DIR / "pg_repack"), "--no-kill-backend", "-t", "public.tbl", "-d", DB],
                         env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        while not _has_trigger(pg):
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    finally:
        hold.rollback()
        hold.close()
    with pg.connect(DB) as c:
        while c.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_repack'").fetchone():
            c.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'pg_repack'")
            time.sleep(0.1)
        row = c.execute("SELECT 'tbl'::regclass::oid").fetchone()
        assert row is not None
        return int(row[0])


def _has_trigger(pg: PgInstance) -> bool:
    with pg.connect(DB) as c:
        return c.execute("SELECT 1 FROM pg_trigger WHERE tgname = 'repack_trigger'").fetchone() is not None


def reader(pg: PgInstance, stop: threading.Event, out: list[float]) -> None:
    with pg.connect(DB) as c:
        i = 0
        while not stop.is_set():
            i += 1
            t0 = time.perf_counter()
            c.execute("SELECT payload FROM tbl WHERE id = %s", (i % 20000 + 1,))
            out.append(time.perf_counter() - t0)


def old_schedule(pg: PgInstance, oid: int, seconds: float) -> None:
    with pg.connect(DB) as c:
        c.execute("SET lock_timeout = '1200ms'")
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                c.execute("SELECT repack.repack_drop(%s::oid, 4)", (oid,))
                return
            except psycopg.errors.LockNotAvailable:
                time.sleep(0.3)


def new_schedule(pg: PgInstance, oid: int, seconds: float) -> None:
    async def go() -> None:
        async with await psycopg.AsyncConnection.connect(host=str(pg.socket_dir), port=pg.port, user=SUPERUSER,
                                                         dbname=DB, autocommit=True, row_factory=dict_row) as c:
            await cleanup.drop(c, oid, deadline=anyio.current_time() + seconds)
    anyio.run(go)


def measure(pg: PgInstance, name: str, run: Callable[[PgInstance, int, float], None], oid: int,
            seconds: float) -> None:
    blocker = pg.connect(DB)
    blocker.autocommit = False
    blocker.execute("SELECT count(*) FROM tbl")  # ACCESS SHARE until the end: no cleanup gets its lock
    lat: list[float] = []
    stop = threading.Event()
    th = threading.Thread(target=reader, args=(pg, stop, lat))
    th.start()
    time.sleep(0.5)
    n0 = len(lat)
    t0 = time.monotonic()
    run(pg, oid, seconds)
    wall = time.monotonic() - t0
    stop.set()
    th.join()
    blocker.rollback()
    blocker.close()
    window = lat[n0:]
    slow = sum(x for x in window if x > 0.02)
    q = statistics.quantiles(window, n=100) if len(window) > 2 else [0.0] * 99
    print(f"{name:>4}: {len(window):6d} lookups in {wall:5.1f}s  stalled {100 * slow / wall:5.1f}% of the time"
          f"  p99 {q[98] * 1000:7.1f} ms  max {max(window) * 1000:7.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    run_dir = new_run_dir("pgna-bench-")
    pg = PgInstance(run_dir, "stall")
    pg.start()
    try:
        pg.psql(f"CREATE DATABASE {DB}")
        with pg.connect(DB) as c:
            for stmt in ("CREATE EXTENSION pg_repack", "CREATE TABLE other (id int)",
                         "CREATE TABLE tbl (id int PRIMARY KEY, payload text)",
                         "INSERT INTO tbl SELECT i, md5(i::text) FROM generate_series(1, 200000) i"):
                c.execute(stmt.encode())
        oid = leftovers(pg)
        measure(pg, "old", old_schedule, oid, args.seconds)
        measure(pg, "new", new_schedule, oid, args.seconds)
    finally:
        pg.stop()
        remove_run_dir(run_dir)


if __name__ == "__main__":
    main()
