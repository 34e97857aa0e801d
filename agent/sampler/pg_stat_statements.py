"""pg_stat_statements fallback: deltas of cumulative counters, read without query text."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog
from psycopg import sql

from agent.core.slices import Slices
from agent.sampler.deltas import Entries
from agent.sampler.persist import SamplerState
from agent.sampler.source import Conn, Folded, Level, Limits, SourceUnavailable, read_chunks

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
        "WHERE s.queryid IS NOT NULL "
        # deltas.Entries' key order: the delta merges two reads (an unsorted read is sorted there)
        "ORDER BY s.queryid, s.dbid, s.userid, s.toplevel"
    ).format(sql.SQL(", ").join(cols))
    return Schema(extversion, read, tuple(missing), since)


@dataclass(frozen=True, slots=True)
class PgssRead:
    """One read: every entry (`entries`, not changed after the read) and the view's info."""

    entries: Entries
    stats_reset: str | None
    dealloc: int | None
    rows: int
    duration: float
    wait: float

    def dropping(self) -> Slices[None]:
        yield from ()  # its entries become the next baseline

    def fold(self, st: SamplerState, limits: Limits) -> Slices[Folded]:
        """The increments since the baseline, added to a copy of the totals (tens of ms at 10k
        entries: run in slices); this read becomes the next baseline."""
        res = yield from st.pgss.applying(self.entries, self.stats_reset, self.dealloc)
        totals = st.totals
        if len(res.batch):
            totals = yield from totals.added(res.batch, limits.top_n, limits.max_series)
        yield from res.batch.dropping()
        seen = tuple((kind, k) for kind, k in (("stats_reset", int(res.reset)), ("dealloc", res.dealloc),
                                               ("recreated", res.recreated)) if k)
        events: list[tuple[Level, str, dict[str, Any]]] = [
            ("info", "sampler_pgss_discontinuity_seen", {"kind": kind, "count": k}) for kind, k in seen]
        if res.primed:
            events.insert(0, ("info", "sampler_pgss_primed", {"entries": len(self.entries)}))
        return Folded(replace(st, totals=totals, pgss=res.baseline), resets=seen, events=tuple(events))


class PgStatStatements:
    name = "pg_stat_statements"
    urgent_save = False  # cumulative counters: a crash costs nothing the next read will not count

    def __init__(self) -> None:
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

    async def read(self, conn: Conn, st: SamplerState, now: float, limits: Limits) -> PgssRead:
        """Every entry, through a server-side cursor in chunks stored in a worker thread."""
        if self.schema is None:
            raise RuntimeError("read() before connected()")
        t0 = time.perf_counter()
        async with conn.cursor() as cur:
            await cur.execute(INFO)
            info = await cur.fetchone()
        if info is None:
            raise RuntimeError("pg_stat_statements_info returned no row")
        entries = Entries(st.totals.label_names)
        n = await read_chunks(conn, self.schema.read, None, entries.add_rows)
        return PgssRead(entries, info["stats_reset"], info["dealloc"], n, time.perf_counter() - t0,
                        limits.interval)
