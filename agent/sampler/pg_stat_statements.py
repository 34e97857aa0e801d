"""pg_stat_statements fallback: deltas of cumulative counters, read without query text."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
import structlog
from psycopg import sql
from psycopg.rows import tuple_row

from agent.sampler.deltas import DeltaResult, Entries
from agent.sampler.metrics import Health
from agent.sampler.persist import SamplerState
from agent.sampler.source import Conn, SourceUnavailable
from agent.sampler.totals import Totals

log = structlog.get_logger("sampler")

# The view's columns and the extension's version, read once per session: the column set moved
# between versions (1.11, PG17, renamed blk_*_time to shared_blk_*_time and added stats_since),
# so the SELECT is built from what this server has, never from a fixed list.
SCHEMA = """
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_statements') AS extversion,
       coalesce((SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute
                 WHERE attrelid = to_regclass('pg_stat_statements') AND attnum > 0
                   AND NOT attisdropped), '{}') AS columns
"""
INFO = "SELECT dealloc, stats_reset::text AS stats_reset FROM pg_stat_statements_info"

# The values in the order of totals.FIELDS: (candidate columns, newest name first; divisor to
# base units). None: the source has no such value (CPU times exist only in pg_stat_monitor).
VALUES: tuple[tuple[tuple[str, ...], float] | None, ...] = (
    (("calls",), 1), (("total_exec_time",), 1000), (("total_plan_time",), 1000), (("rows",), 1),
    (("shared_blks_hit",), 1), (("shared_blks_read",), 1), (("shared_blks_dirtied",), 1),
    (("shared_blks_written",), 1), (("local_blks_hit",), 1), (("local_blks_read",), 1),
    (("temp_blks_read",), 1), (("temp_blks_written",), 1),
    (("shared_blk_read_time", "blk_read_time"), 1000), (("shared_blk_write_time", "blk_write_time"), 1000),
    (("wal_records",), 1), (("wal_fpi",), 1), (("wal_bytes",), 1), None, None,
)
IDENTITY = ("dbid", "userid", "queryid", "toplevel")
# Rows per FETCH: psycopg turns them into tuples in the event loop's thread, ~7 us a row of 27
# columns, so 200 rows hold the loop ~1.5 ms (500 held it ~3.5 ms at 10k entries, bench/).
CHUNK_ROWS = 200


@dataclass(frozen=True)
class Schema:
    extversion: str | None
    read: sql.Composed  # row layout of deltas.Entries: identity, labels, values, stats_since
    missing: tuple[str, ...]  # values this version lacks (read as 0)
    has_stats_since: bool


def build_schema(extversion: str | None, columns: Sequence[str]) -> Schema:
    """The read for this server's view. Values the view lacks read as 0 (and are named in the
    log once); identity columns it lacks make the source unreadable (pgss < 1.9 has no toplevel)."""
    have = set(columns)
    lacking = [c for c in IDENTITY if c not in have]
    if lacking:
        raise SourceUnavailable(f"pg_stat_statements {extversion} lacks {', '.join(lacking)} (1.9+ needed)")
    s = sql.Identifier("s")
    cols: list[sql.Composable] = [sql.SQL("{}.{}").format(s, sql.Identifier(c)) for c in IDENTITY]
    cols += [sql.SQL("coalesce(d.datname, '')"), sql.SQL("coalesce(r.rolname, '')")]
    missing: list[str] = []
    for spec in VALUES:
        name = next((c for c in spec[0] if c in have), None) if spec else None
        if spec is None or name is None:
            if spec is not None:
                missing.append(spec[0][0])
            cols.append(sql.SQL("0::float8"))
        elif spec[1] == 1:
            cols.append(sql.SQL("{}.{}::float8").format(s, sql.Identifier(name)))
        else:
            cols.append(sql.SQL("{}.{} / {}").format(s, sql.Identifier(name), sql.Literal(float(spec[1]))))
    since = "stats_since" in have
    # stats_since (1.11+): when the entry was created, so an entry evicted and recreated between
    # two reads is told apart from one that kept running, even when its counters went up.
    cols.append(sql.SQL("extract(epoch FROM s.stats_since)::float8") if since else sql.SQL("NULL::float8"))
    read = sql.SQL(
        "SELECT {} FROM pg_stat_statements(false) s "  # showtext=false: the text file is not read
        "LEFT JOIN pg_database d ON d.oid = s.dbid LEFT JOIN pg_roles r ON r.oid = s.userid "
        "WHERE s.queryid IS NOT NULL"
    ).format(sql.SQL(", ").join(cols))
    return Schema(extversion, read, tuple(missing), since)


class PgStatStatements:
    name = "pg_stat_statements"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.schema: Schema | None = None

    async def connected(self, conn: Conn) -> None:
        async with conn.cursor() as cur:
            await cur.execute(SCHEMA)
            row = await cur.fetchone()
        if row is None:
            raise RuntimeError("pg_stat_statements schema probe returned no row")
        self.schema = build_schema(row["extversion"], row["columns"])
        log.info("sampler_pgss_detected", extversion=self.schema.extversion,
                 stats_since=self.schema.has_stats_since, missing=list(self.schema.missing))

    async def step(self, conn: Conn, st: SamplerState, now: float, top_n: int, max_series: int,
                   grace: float, health: Health) -> tuple[float, bool]:
        if self.schema is None:
            raise RuntimeError("step() before connected()")
        t0 = time.perf_counter()
        async with conn.cursor() as cur:
            await cur.execute(INFO)
            info = await cur.fetchone()
        if info is None:
            raise RuntimeError("pg_stat_statements_info returned no row")
        cur_entries = Entries(st.totals.label_names)
        n = await read_into(conn, self.schema.read, cur_entries)
        health.last_duration = time.perf_counter() - t0
        health.reads += 1
        health.rows_read += n
        # Delta and fold cost tens of ms at 10k entries: off the event loop, in one thread call so
        # that the new baseline and the totals it produced are taken together or not at all. The
        # fold works on a copy that replaces the totals, so a scrape never sees them half-updated.
        res, totals = await anyio.to_thread.run_sync(
            ingest, st, cur_entries, info["stats_reset"], info["dealloc"], top_n, max_series)
        st.totals = totals
        if res.primed:
            log.info("sampler_pgss_primed", entries=len(cur_entries))
        seen = (("stats_reset", int(res.reset)), ("dealloc", res.dealloc), ("recreated", res.recreated))
        for kind, k in seen:
            if k:
                health.source_resets[kind] = health.source_resets.get(kind, 0) + k
                log.info("sampler_pgss_discontinuity_seen", kind=kind, count=k)
        return self.interval, True


def ingest(st: SamplerState, cur: Entries, stats_reset: str | None, dealloc: int | None,
           top_n: int, max_series: int) -> tuple[DeltaResult, Totals]:
    """Worker-thread half of a step: the increments since the last read, folded into a copy of
    the totals. Touches nothing the event loop reads but `st.pgss`, which only the step uses."""
    res = st.pgss.apply(cur, stats_reset, dealloc)
    return res, (st.totals.added(res.batch, top_n, max_series) if len(res.batch) else st.totals)


async def read_into(conn: Conn, query: sql.Composed, entries: Entries) -> int:
    """The read through a server-side cursor in chunks; each chunk is stored in a worker thread
    (10k rows are ~20 ms of Python), so the loop only waits for the network."""
    n = 0
    async with conn.transaction(), conn.cursor("pgna_sampler_read", row_factory=tuple_row) as cur:
        await cur.execute(query)
        while rows := await cur.fetchmany(CHUNK_ROWS):
            n += len(rows)
            await anyio.to_thread.run_sync(entries.add_rows, rows)
    return n

