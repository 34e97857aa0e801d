"""pg_stat_monitor 2.x: each finished bucket read once, by time, and added to the totals.

Settings and the view's columns are read once per connection (they change only with a server
restart, which also drops the session). Each due read is one scan of the view restricted to the
buckets between the watermark and the newest finished one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from psycopg import sql

from agent.sampler.buckets import (
    missed_buckets,
    newest_ready_start,
    parse_histogram_timings,
    plan_read,
    seconds_until_next_ready,
)
from agent.sampler.metrics import Health
from agent.sampler.persist import SamplerState
from agent.sampler.source import Conn, read_chunks
from agent.sampler.totals import Batch

log = structlog.get_logger("sampler")

SETTINGS = """
SELECT pg_stat_monitor_version() AS version,
       (SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_monitor') AS extversion,
       current_setting('pg_stat_monitor.pgsm_bucket_time', true) AS bucket_time,
       current_setting('pg_stat_monitor.pgsm_max_buckets', true) AS max_buckets,
       get_histogram_timings() AS timings
"""
COLUMNS = """
SELECT attname::text AS name FROM pg_attribute
WHERE attrelid = to_regclass('pg_stat_monitor') AND attnum > 0 AND NOT attisdropped
"""
# Keep the sampler's own reads out of the statistics (USERSET in 2.x).
UNTRACK = "SELECT set_config('pg_stat_monitor.pgsm_track', 'none', false)"

LABEL_COLUMNS = {"datname": "datname", "username": "username", "cmd_type": "cmd_type_text",
                 "application_name": "application_name", "client_ip": "client_ip"}

# Logical value -> candidate columns (2.0-2.3 on PG13-18 name shared I/O time differently), scale.
VALUE_COLUMNS: tuple[tuple[tuple[str, ...], float], ...] = (
    (("calls",), 1.0),
    (("total_exec_time",), 1e-3),
    (("total_plan_time",), 1e-3),
    (("rows",), 1.0),
    (("shared_blks_hit",), 1.0),
    (("shared_blks_read",), 1.0),
    (("shared_blks_dirtied",), 1.0),
    (("shared_blks_written",), 1.0),
    (("local_blks_hit",), 1.0),
    (("local_blks_read",), 1.0),
    (("temp_blks_read",), 1.0),
    (("temp_blks_written",), 1.0),
    (("shared_blk_read_time", "blk_read_time"), 1e-3),
    (("shared_blk_write_time", "blk_write_time"), 1e-3),
    (("wal_records",), 1.0),
    (("wal_fpi",), 1.0),
    (("wal_bytes",), 1.0),
    (("cpu_user_time",), 1e-3),
    (("cpu_sys_time",), 1e-3),
)


@dataclass(frozen=True, slots=True)
class PgsmSettings:
    version: str
    extversion: str | None
    bucket_time: int
    max_buckets: int
    le: tuple[float, ...]


def build_select(columns: set[str], labels: Sequence[str] = tuple(LABEL_COLUMNS)) -> sql.Composed:
    """The scan, built from the columns the catalog shows (55/65/71/74-column variants).

    Only what a read uses is selected: bucket, queryid, elevel, sqlcode, resp_calls, the
    configured `labels` (in that order) and the 19 values, read positionally (`Row`)."""
    vals: list[sql.Composable] = []
    for i, (cands, _scale) in enumerate(VALUE_COLUMNS):
        col = next((c for c in cands if c in columns), None)
        expr: sql.Composable = sql.SQL("0") if col is None else sql.Identifier(col)
        vals.append(sql.SQL("coalesce({}, 0)::float8 AS {}").format(expr, sql.Identifier(f"v{i}")))
    cols = [LABEL_COLUMNS[name] for name in labels]
    label_sql = [sql.SQL("coalesce({}::text, '') AS {}").format(
        sql.Identifier(col) if col in columns else sql.SQL("NULL"), sql.Identifier(name))
        for name, col in zip(labels, cols, strict=True)]
    return sql.SQL(
        "SELECT extract(epoch FROM bucket_start_time)::float8 AS bucket_start, queryid::text AS queryid, "
        "coalesce(elevel, 0) AS elevel, coalesce(sqlcode, '') AS sqlcode, resp_calls{labels}, {vals} "
        "FROM pg_stat_monitor "
        "WHERE bucket_start_time > %(lo)s AND bucket_start_time <= %(hi)s AND queryid IS NOT NULL"
    ).format(labels=sql.SQL("").join(sql.SQL(", ") + ls for ls in label_sql),
             vals=sql.SQL(", ").join(vals))


_SCALES = tuple(scale for _c, scale in VALUE_COLUMNS)
_LABELS_AT = 5  # position of the first label column in a row of build_select()


class Batches:
    """A read, aggregated chunk by chunk: memory grows with the distinct (bucket, queryid,
    labels) of the read, not with its rows, and no row is held after its chunk."""

    def __init__(self, nlabels: int) -> None:
        self.nlabels = nlabels
        self.buckets: dict[int, Batch] = {}
        self.seen: set[int] = set()
        self.errors: dict[tuple[str, str], float] = {}
        self.histogram_mismatches = 0
        self.rows = 0
        self._labels: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple per label set

    def add_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        first_value = _LABELS_AT + self.nlabels
        for r in rows:
            self.rows += 1
            bucket = int(r[0])
            self.seen.add(bucket)
            vals = [float(x) * scale for x, scale in zip(r[first_value:], _SCALES, strict=True)]
            if r[2] > 0:  # a failed statement: counted as an error only, not as a call
                k = (str(r[2]), r[3])
                self.errors[k] = self.errors.get(k, 0.0) + vals[0]
                continue
            resp = [float(x) for x in r[4]] if r[4] is not None else None
            if resp is not None and sum(resp) != vals[0]:
                self.histogram_mismatches += 1
                resp = None
            aggs = self.buckets.get(bucket)
            if aggs is None:
                aggs = self.buckets[bucket] = Batch()
            labels = tuple(r[_LABELS_AT:first_value])
            aggs.add(r[1], self._labels.setdefault(labels, labels), vals, resp)


def _ts(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class PgStatMonitor:
    name = "pg_stat_monitor"

    def __init__(self) -> None:
        self.settings: PgsmSettings | None = None
        self._columns: set[str] | None = None
        self._select: tuple[tuple[str, ...], sql.Composed] | None = None  # per label list
        self._clock_back_logged = False

    async def connected(self, conn: Conn) -> None:
        async with conn.cursor() as cur:
            await cur.execute(UNTRACK)
            await cur.execute(SETTINGS)
            s = await cur.fetchone()
            await cur.execute(COLUMNS)
            cols = {r["name"] for r in await cur.fetchall()}
        if s is None:
            raise RuntimeError("pg_stat_monitor settings query returned no row")
        self.settings = PgsmSettings(version=s["version"], extversion=s["extversion"],
                                     bucket_time=int(s["bucket_time"] or 60),
                                     max_buckets=int(s["max_buckets"] or 10),
                                     le=parse_histogram_timings(s["timings"] or ""))
        self._columns = cols
        self._select = None
        log.info("sampler_pgsm_detected", version=self.settings.version, extversion=self.settings.extversion,
                 bucket_time_seconds=self.settings.bucket_time, max_buckets=self.settings.max_buckets,
                 histogram_bins=len(self.settings.le), columns=len(cols))

    async def step(self, conn: Conn, st: SamplerState, now: float, top_n: int, max_series: int,
                   grace: float, health: Health) -> tuple[float, bool]:
        if self.settings is None or self._columns is None:
            raise RuntimeError("step() before connected()")
        bt, mb = self.settings.bucket_time, self.settings.max_buckets
        wait = seconds_until_next_ready(now, bt, grace)
        plan = plan_read(st.watermark, now, bt, grace)
        if plan is None:
            back = st.watermark is not None and newest_ready_start(now, bt, grace) < st.watermark
            if back and not self._clock_back_logged:
                log.warning("sampler_clock_stepped_back", watermark=st.watermark, server_now=now)
                resets = health.source_resets
                resets["clock_stepped_back"] = resets.get("clock_stepped_back", 0) + 1
                self._clock_back_logged = True
            return wait, False
        self._clock_back_logged = False
        if plan.prime:
            st.watermark = plan.hi
            health.last_ingested_bucket = float(plan.hi)
            log.info("sampler_watermark_primed", watermark=plan.hi)
            return wait, True
        if st.totals.set_bounds(self.settings.le):
            log.info("sampler_histogram_bounds_set", bins=len(self.settings.le))
        names = st.totals.label_names
        if self._select is None or self._select[0] != names:
            self._select = (names, build_select(self._columns, names))
        t0 = time.perf_counter()
        batches = Batches(len(names))
        await read_chunks(conn, self._select[1], {"lo": _ts(plan.lo), "hi": _ts(plan.hi)}, batches.add_rows)
        health.last_duration = time.perf_counter() - t0
        health.reads += 1
        health.rows_read += batches.rows
        self.ingest(batches, st, top_n, max_series, health)
        seen = batches.seen
        missed = missed_buckets(plan, now, bt, mb, seen)
        if missed:
            st.totals.buckets_missed += missed
            log.warning("sampler_buckets_missed", buckets=missed, watermark=plan.lo, newest=plan.hi)
        st.watermark = plan.hi
        health.last_ingested_bucket = float(plan.hi)
        return wait, True

    def ingest(self, batches: Batches, st: SamplerState, top_n: int, max_series: int,
               health: Health) -> None:
        """One batch per bucket, oldest first, so top-N promotion sees buckets as they happened."""
        health.histogram_mismatches += batches.histogram_mismatches
        for b in sorted(batches.buckets):
            st.totals.add(batches.buckets.pop(b), top_n, max_series)
        st.totals.add_errors((elevel, sqlcode, calls) for (elevel, sqlcode), calls in batches.errors.items())
