"""Choosing a table in a database of thousands, on a real PostgreSQL 15: the scan keeps the
repack heartbeat fresh, a measurement that times out costs that table's figure (not the
database), and every database of the window is still considered."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from repack_lab import LEFTOVERS
from test_repack import client_killed, confirm_primary, q, recent, started
from test_repack import make_ctx as repack_ctx
from testlab.postgres import PgInstance

from agent.core.context import Context
from agent.lab.etcd import Etcd

pytestmark = pytest.mark.slow

_n = itertools.count(1)
TABLES = 3000


def _bloated(pg: PgInstance, db: str, table: str, rows: int) -> None:
    """Deleted and analyzed but not vacuumed: no page is all-visible, so pgstattuple_approx reads
    every page, and the statistics (reltuples, n_dead_tup) already show the bloat."""
    q(pg, db, f"CREATE TABLE {table} (id int PRIMARY KEY, pad text)")
    q(pg, db, f"INSERT INTO {table} SELECT i, repeat('x', 150) FROM generate_series(1, {rows}) i")
    q(pg, db, f"DELETE FROM {table} WHERE id % 10 < 7")
    q(pg, db, f"ANALYZE {table}")


@pytest.fixture
def dbs(pg15: PgInstance) -> Iterator[tuple[str, str]]:
    """(many, other): `many` holds 3,000 one-row tables and `big` (~20 MiB, 70 % dead); `other`
    holds `small` (~2 MiB, 70 % dead), which is what remains when `many` is not considered."""
    n = next(_n)
    many, other = f"scan_many_{n}", f"scan_other_{n}"
    for db in (many, other):
        pg15.psql(f"CREATE DATABASE {db}")
        q(pg15, db, "CREATE EXTENSION pg_repack")
        q(pg15, db, "CREATE EXTENSION pgstattuple")
    for first in range(1, TABLES + 1, 500):  # batches: a transaction holds a lock per table it creates
        q(pg15, many, f"""DO $$ BEGIN FOR i IN {first}..{first + 499} LOOP
            EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY)', i);
            EXECUTE format('INSERT INTO t%s VALUES (1)', i);
          END LOOP; END $$""")
    _bloated(pg15, many, "big", 100_000)
    _bloated(pg15, other, "small", 10_000)
    yield many, other
    with pg15.connect() as conn:
        for db in (many, other):
            conn.execute(f"DROP DATABASE {db} WITH (FORCE)".encode())


def make_ctx(pg: PgInstance, etcd: Etcd, dbs: list[str], state_dir: Path, **repack: Any) -> Context:
    return repack_ctx(pg, etcd, dbs[0], state_dir, window={"databases": dbs}, **repack)


async def test_a_database_of_thousands_of_tables_keeps_heartbeats_fresh_and_its_timed_out_table_is_chosen(
        pg15: PgInstance, etcd: Etcd, dbs: tuple[str, str], tmp_path: Path,
        logs: list[dict[str, Any]]) -> None:
    many, other = dbs
    # 1 ms is far below what reading big's 2,500 pages takes: its measurement always times out
    ctx = make_ctx(pg15, etcd, [many, other], tmp_path, measure_timeout="1ms")
    stale: list[list[str]] = []
    oldest = 0.0

    async def watch_heartbeats() -> None:
        nonlocal oldest
        while True:
            stale.append(ctx.liveness.stale())  # the watchdog feeder's own rule (30 s by default)
            oldest = max(oldest, ctx.liveness.ages().get("repack", 0.0))
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_heartbeats)
        async with started(ctx):
            confirm_primary(ctx)
            out = await recent(ctx, 240)
        tg.cancel_scope.cancel()
    print(f"oldest repack heartbeat during the window: {oldest:.3f}s")  # noqa: T201
    assert not [s for s in stale if s], "a heartbeat went stale: the watchdog would not be fed"
    timed_out = [e for e in logs if e["event"] == "repack_bloat_measure_failed"]
    assert [(e["database"], e["table"], e["reason"]) for e in timed_out if e["table"] == "public.big"] == [
        (many, "public.big", "timeout")], timed_out
    chosen = [e for e in logs if e["event"] == "repack_table_chosen"]
    assert (chosen[0]["database"], chosen[0]["table"]) == (many, "public.big"), chosen
    assert chosen[0]["bloat_method"] == "statistics; pgstattuple_approx timeout"
    surveyed = {e["database"]: e for e in logs if e["event"] == "repack_candidates_surveyed"}
    assert surveyed[many]["tables"] == TABLES + 1
    assert surveyed[other]["eligible"] == 1  # the other database was read and its table assessed
    assert out["database"] == many and out["table"] == "public.big" and out["result"] == "success", out
    assert q(pg15, many, LEFTOVERS)[0][0] == 0


async def test_a_table_under_a_clients_exclusive_lock_is_named_and_the_rest_of_its_database_still_considered(
        pg15: PgInstance, etcd: Etcd, tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    """Sizing a table queues behind an ACCESS EXCLUSIVE (a migration, say): before, that timed
    out the catalog query and left the whole database out."""
    n = next(_n)
    locked_db, other = f"scan_locked_{n}", f"scan_locked_other_{n}"
    for db in (locked_db, other):
        pg15.psql(f"CREATE DATABASE {db}")
        q(pg15, db, "CREATE EXTENSION pg_repack")
    _bloated(pg15, locked_db, "big", 50_000)
    _bloated(pg15, other, "small", 10_000)
    q(pg15, locked_db, "CREATE TABLE busy (id int PRIMARY KEY)")
    log_from = pg15.log_path.stat().st_size
    client = psycopg.connect(pg15.conninfo.replace("dbname=postgres", f"dbname={locked_db}"))
    try:
        client.execute("LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")  # held until commit
        ctx = make_ctx(pg15, etcd, [locked_db, other], tmp_path)
        async with started(ctx):
            confirm_primary(ctx)
            with anyio.fail_after(60):
                while not any(e["event"] == "repack_table_chosen" for e in logs):
                    await anyio.sleep(0.05)
            client.commit()  # an open transaction would hold pg_repack in its wait for old ones
            out = await recent(ctx, 120)
        assert not client_killed(pg15, client.info.backend_pid, log_from)
    finally:
        client.close()
        with pg15.connect() as conn:
            for db in (locked_db, other):
                conn.execute(f"DROP DATABASE {db} WITH (FORCE)".encode())
    assert (out["database"], out["table"], out["result"]) == (locked_db, "public.big", "success"), out
    refused = [(e["database"], e["table"], e["reasons"]) for e in logs if e["event"] == "repack_table_refused"]
    assert (locked_db, "public.busy", ["locked"]) in refused, refused
    assert not [e for e in logs if e["event"] == "repack_candidates_unreadable"]
