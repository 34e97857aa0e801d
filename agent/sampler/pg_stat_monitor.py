"""pg_stat_monitor 2.x: each finished bucket read once, by time, and added to the totals.

Settings and the function's columns are read once per connection (they change only with a
server restart, which also drops the session). Each due read is one scan of
pg_stat_monitor_internal(): the rows of the buckets between the watermark and the newest finished
one, and a summary of every other bucket from the watermark on, from which a reset is told from a
quiet server.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog
from psycopg import sql

from agent.core.slices import Slices
from agent.sampler.buckets import (
    ReadPlan,
    Watch,
    aligned,
    lost_buckets,
    newest_ready_start,
    parse_histogram_timings,
    plan_read,
    reset_bound,
    reset_evidence,
    seconds_until_next_ready,
)
from agent.sampler.persist import SamplerState
from agent.sampler.source import Conn, Folded, Idle, Level, Limits, SourceUnreadable, read_chunks
from agent.sampler.totals import Batch, Totals

log = structlog.get_logger("sampler")

SETTINGS = """
SELECT pg_stat_monitor_version() AS version,
       (SELECT extversion FROM pg_extension WHERE extname = 'pg_stat_monitor') AS extversion,
       current_setting('server_version_num')::int AS server_version_num,
       to_regprocedure('get_cmd_type(integer)') IS NOT NULL AS has_cmd_type,
       get_histogram_timings() AS timings
"""
# As PostgreSQL gives them: `setting` in `unit` (current_setting() would say '5s' or '1min').
# Absent when the library is not in shared_preload_libraries (its _PG_init defines them).
GUCS = """
SELECT name, setting, unit FROM pg_settings
WHERE name IN ('pg_stat_monitor.pgsm_bucket_time', 'pg_stat_monitor.pgsm_max_buckets')
"""
# The columns of the set-returning function behind the view, from the catalog: they differ by
# extversion (2.0-2.3), and the read selects from the function, not the view (build_select).
COLUMNS = """
SELECT a.name FROM pg_proc p, unnest(p.proargnames, p.proargmodes::text[]) AS a(name, mode)
WHERE p.oid = to_regprocedure('pg_stat_monitor_internal(boolean)') AND a.mode = 'o'
"""
# Keep the sampler's own reads out of the statistics (USERSET in 2.x).
UNTRACK = "SELECT set_config('pg_stat_monitor.pgsm_track', 'none', false)"

# Label -> (column of pg_stat_monitor_internal, the expression the view shows it as).
LABEL_SQL = {"datname": ("datname", "datname"), "username": ("username", "username"),
             "cmd_type": ("cmd_type", "get_cmd_type(cmd_type)"),
             "application_name": ("application_name", "application_name"),
             "client_ip": ("client_ip", "'0.0.0.0'::inet + client_ip")}

# Logical value -> candidate columns (the function's names differ by extversion), scale.
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
NEEDED = {"bucket_start_time", "queryid", "elevel", "sqlcode", "resp_calls", "calls"}

# elevel of ERROR: 21 since PostgreSQL 14 (20 became WARNING_CLIENT_ONLY), 20 before.
ERROR_PG14, ERROR_PG13 = 21, 20

_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT = re.compile(r"(-?[0-9]+(?:\.[0-9]+)?)([a-z]*)")


def guc_number(name: str, setting: str | None, unit: str | None, *, seconds: bool) -> int:
    """A whole positive GUC value as pg_settings gives it (`setting` in `unit`), in seconds when
    `seconds`. A unit inside the setting ('5s', '1min': current_setting()'s form) is read too.
    Anything else is a SourceUnreadable naming the setting: reported, never a crash."""
    m = _NUMBER_UNIT.fullmatch((setting or "").strip())
    inner = m.group(2) if m else ""
    u = inner or unit or ""
    scale = (_SECONDS.get(u) if seconds else (1.0 if not u else None)) if not (inner and unit) else None
    value = float(m.group(1)) * scale if m is not None and scale is not None else math.nan
    if not (value >= 1 and value == int(value)):
        what = "number of seconds" if seconds else "number"
        raise SourceUnreadable(f"{name} = {setting!r} (unit {unit!r}) is not a whole positive {what}")
    return int(value)


@dataclass(frozen=True, slots=True)
class PgsmSettings:
    version: str
    extversion: str | None
    bucket_time: int
    max_buckets: int
    le: tuple[float, ...]
    error_level: int = ERROR_PG14
    has_cmd_type: bool = True


def build_select(columns: set[str], labels: Sequence[str] = tuple(LABEL_SQL),
                 has_cmd_type: bool = True) -> sql.Composed:
    """One read: the rows of the buckets in (lo, hi] and one summary row per other bucket from lo on.

    From pg_stat_monitor_internal(false), not the view: the view adds a per-row SQL function
    call, array building and an ORDER BY over every retained row before any WHERE applies. Only
    what a read uses is selected (no query text is sent): bucket start, queryid, elevel, sqlcode,
    resp_calls, stats_since, the configured `labels` (in that order) and the 19 values, read
    positionally. Summary rows (queryid NULL) carry a bucket's summed calls and oldest
    stats_since: what reset detection compares between reads (buckets.reset_evidence); older
    buckets are left out before anything is materialised (they were compared at earlier reads)."""
    vals: list[sql.Composable] = []
    for i, (cands, _scale) in enumerate(VALUE_COLUMNS):
        col = next((c for c in cands if c in columns), None)
        expr: sql.Composable = sql.SQL("0") if col is None else sql.Identifier(col)
        vals.append(sql.SQL("coalesce({}, 0)::float8 AS {}").format(expr, sql.Identifier(f"v{i}")))
    label_sql = []
    for name in labels:
        col, expr_text = LABEL_SQL[name]
        usable = col in columns and (has_cmd_type or name != "cmd_type")
        label_sql.append(sql.SQL("coalesce(({})::text, '') AS {}").format(  # constant SQL text
            sql.SQL(expr_text) if usable else sql.SQL("NULL"), sql.Identifier(name)))
    since = sql.SQL("stats_since" if "stats_since" in columns else "NULL::timestamptz")
    nlab, nval = len(label_sql), len(vals)
    return sql.SQL(
        "WITH s AS MATERIALIZED ("
        "SELECT bucket_start_time, queryid, elevel, sqlcode, resp_calls, {since} AS since{labels}, {vals} "
        "FROM pg_stat_monitor_internal(false) WHERE queryid IS NOT NULL AND bucket_start_time >= %(lo)s) "
        "SELECT extract(epoch FROM bucket_start_time)::float8, queryid::text, coalesce(elevel, 0), "
        "coalesce(sqlcode, ''), resp_calls, extract(epoch FROM since)::float8{lcols}, {vcols} FROM s "
        "WHERE bucket_start_time > %(lo)s AND bucket_start_time <= %(hi)s "
        "UNION ALL "
        "SELECT extract(epoch FROM bucket_start_time)::float8, NULL, 0, '', NULL, "
        "extract(epoch FROM min(since))::float8{lempty}, sum(v0){vzero} FROM s "
        "WHERE NOT (bucket_start_time > %(lo)s AND bucket_start_time <= %(hi)s) GROUP BY bucket_start_time"
    ).format(since=since,
             labels=sql.SQL("").join(sql.SQL(", ") + ls for ls in label_sql),
             vals=sql.SQL(", ").join(vals),
             lcols=sql.SQL("").join(sql.SQL(", ") + sql.Identifier(n) for n in labels),
             vcols=sql.SQL(", ").join(sql.Identifier(f"v{i}") for i in range(nval)),
             lempty=sql.SQL("").join([sql.SQL(", ''")] * nlab),
             vzero=sql.SQL("").join([sql.SQL(", 0::float8")] * (nval - 1)))


_SCALES = tuple(scale for _c, scale in VALUE_COLUMNS)
_LABELS_AT = 6  # position of the first label column in a row of build_select()


class Batches:
    """A read, aggregated chunk by chunk: memory grows with the distinct (bucket, queryid,
    labels) of the read, not with its rows, and no row is held after its chunk.

    Rows with elevel > 0 are pg_stat_monitor's error log entries (one call per message, no
    execution): ERROR and above go to `errors`, lower levels (WARNING) to `warnings`, neither
    to calls. `summary` is (calls, oldest stats_since) per retained bucket, read or not."""

    def __init__(self, nlabels: int, error_level: int = ERROR_PG14) -> None:
        self.nlabels = nlabels
        self.error_level = error_level
        self.buckets: dict[int, Batch] = {}
        self.seen: set[int] = set()
        self.summary: dict[int, tuple[float, float | None]] = {}
        self.errors: dict[tuple[str, str], float] = {}
        self.warnings: dict[str, float] = {}
        self.histogram_mismatches = 0
        self.rows = 0
        self._labels: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple per label set

    def _sum(self, bucket: int, calls: float, since: float | None) -> None:
        c, s = self.summary.get(bucket, (0.0, None))
        if since is not None and (s is None or since < s):
            s = since
        self.summary[bucket] = (c + calls, s)

    def add_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        first_value = _LABELS_AT + self.nlabels
        for r in rows:
            bucket = int(r[0])
            if r[1] is None:  # summary of a bucket outside the read's range
                self._sum(bucket, float(r[first_value]), r[5])
                continue
            self.rows += 1
            self.seen.add(bucket)
            vals = [float(x) * scale for x, scale in zip(r[first_value:], _SCALES, strict=True)]
            self._sum(bucket, vals[0], r[5])
            if r[2] > 0:  # an error log entry: counted as an error or a warning, not as a call
                if r[2] >= self.error_level:
                    k = (str(r[2]), r[3])
                    self.errors[k] = self.errors.get(k, 0.0) + vals[0]
                else:
                    self.warnings[r[3]] = self.warnings.get(r[3], 0.0) + vals[0]
                continue
            resp = [float(x) for x in r[4].split(",")] if r[4] else None
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


Event = tuple[Level, str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class PgsmRead:
    """One read of the buckets in (plan.lo, plan.hi], aggregated (`batches`, not changed after
    the read), with the settings and server time it was made with."""

    settings: PgsmSettings
    plan: ReadPlan
    now: float
    batches: Batches
    duration: float
    wait: float

    @property
    def rows(self) -> int:
        return self.batches.rows

    def dropping(self) -> Slices[None]:
        """Frees the read's aggregates in slices, once folded (see Batch.dropping)."""
        for batch in self.batches.buckets.values():
            yield from batch.dropping()

    def fold(self, st: SamplerState, limits: Limits) -> Slices[Folded]:
        """Each finished bucket added to a copy of the totals, oldest first (so top-N promotion
        sees buckets as they happened), errors and warnings too, and the buckets the extension
        lost counted; the watermark moves to plan.hi. A priming read only takes the baseline."""
        s, plan, b = self.settings, self.plan, self.batches
        totals, events = st.totals, list[Event]()
        if s.le != totals.le:
            totals = totals.copy()
            totals.set_bounds(s.le)
            events.append(("info", "sampler_histogram_bounds_set", {"bins": len(s.le)}))
        if plan.prime:  # a new baseline: nothing before it is ours to count, lost or not
            events.append(("info", "sampler_watermark_primed", {"watermark": plan.hi}))
            return Folded(replace(st, totals=totals, watermark=plan.hi, pgsm=Watch(seen=b.summary, read_at=self.now)),
                          events=tuple(events), ingested_bucket=plan.hi)
        if totals is st.totals:
            totals = totals.copy()
        for bucket in sorted(b.buckets):
            yield from totals.adding(b.buckets[bucket], limits.top_n, limits.max_series)
        totals.add_errors((elevel, sqlcode, calls) for (elevel, sqlcode), calls in b.errors.items())
        totals.add_warnings(b.warnings.items())
        watch, resets, lost_events = account_losses(s, plan, self.now, b, st.pgsm, totals)
        return Folded(replace(st, totals=totals, watermark=plan.hi, pgsm=watch), resets=resets,
                      events=(*events, *lost_events), histogram_mismatches=b.histogram_mismatches,
                      ingested_bucket=plan.hi)


class PgStatMonitor:
    name = "pg_stat_monitor"
    urgent_save = True  # consumed buckets must be on disk before the extension expires them

    def __init__(self) -> None:
        self.settings: PgsmSettings | None = None
        self._columns: set[str] | None = None
        self._select: tuple[tuple[str, ...], sql.Composed] | None = None  # per label list
        self._clock_back_seen = False

    async def connected(self, conn: Conn) -> None:
        async with conn.cursor() as cur:
            await cur.execute(UNTRACK)
            await cur.execute(GUCS)
            gucs = {r["name"]: r for r in await cur.fetchall()}
            if len(gucs) < 2:
                raise SourceUnreadable("pg_stat_monitor is installed but not loaded: its settings are not in "
                                       "pg_settings (add it to shared_preload_libraries)")
            await cur.execute(SETTINGS)
            s = await cur.fetchone()
            await cur.execute(COLUMNS)
            cols = {r["name"] for r in await cur.fetchall()}
        if s is None:
            raise SourceUnreadable("pg_stat_monitor settings query returned no row")
        if missing := NEEDED - cols:
            raise SourceUnreadable("pg_stat_monitor_internal(boolean) lacks columns "
                                   f"{sorted(missing)} (extversion {s['extversion']})")
        bt, mb = (gucs[f"pg_stat_monitor.pgsm_{n}"] for n in ("bucket_time", "max_buckets"))
        self.settings = PgsmSettings(
            version=s["version"], extversion=s["extversion"],
            bucket_time=guc_number(bt["name"], bt["setting"], bt["unit"], seconds=True),
            max_buckets=guc_number(mb["name"], mb["setting"], mb["unit"], seconds=False),
            le=parse_histogram_timings(s["timings"] or ""),
            error_level=ERROR_PG14 if s["server_version_num"] >= 140000 else ERROR_PG13,
            has_cmd_type=bool(s["has_cmd_type"]))
        self._columns = cols
        self._select = None
        log.info("sampler_pgsm_detected", version=self.settings.version, extversion=self.settings.extversion,
                 bucket_time_seconds=self.settings.bucket_time, max_buckets=self.settings.max_buckets,
                 histogram_bins=len(self.settings.le), columns=len(cols))

    async def read(self, conn: Conn, st: SamplerState, now: float, limits: Limits) -> PgsmRead | Idle:
        """The finished buckets after the watermark, or Idle when none is finished yet."""
        if self.settings is None or self._columns is None:
            raise RuntimeError("read() before connected()")
        bt = self.settings.bucket_time
        wait = seconds_until_next_ready(now, bt, limits.grace)
        plan = plan_read(st.watermark, now, bt, limits.grace)
        if plan is None:
            back = st.watermark is not None and newest_ready_start(now, bt, limits.grace) < st.watermark
            if back and not self._clock_back_seen:  # counted once per episode, not per step
                self._clock_back_seen = True
                return Idle(wait, resets=(("clock_stepped_back", 1),), events=(
                    ("warning", "sampler_clock_stepped_back", {"watermark": st.watermark, "server_now": now}),))
            return Idle(wait)
        self._clock_back_seen = False
        names = st.totals.label_names
        if self._select is None or self._select[0] != names:
            self._select = (names, build_select(self._columns, names, self.settings.has_cmd_type))
        t0 = time.perf_counter()
        batches = Batches(len(names), self.settings.error_level)
        await read_chunks(conn, self._select[1], {"lo": _ts(plan.lo), "hi": _ts(plan.hi)}, batches.add_rows)
        return PgsmRead(self.settings, plan, now, batches, time.perf_counter() - t0, wait)


def account_losses(settings: PgsmSettings, plan: ReadPlan, now: float, batches: Batches, w: Watch,
                   totals: Totals) -> tuple[Watch, tuple[tuple[str, int], ...], list[Event]]:
    """Counts into `totals` the buckets of this read a restart, a reset or expiry destroyed, by
    reason; returns the next Watch, the resets seen and what to log."""
    bt, mb = settings.bucket_time, settings.max_buckets
    resets: tuple[tuple[str, int], ...] = ()
    events: list[Event] = []
    reset_by = w.reset_by
    if w.restart_at is None:
        b = reset_evidence(w.seen, batches.summary, now, bt, mb, since=plan.lo)
        if b is not None:
            since = [s for _c, s in batches.summary.values() if s is not None]
            reset_by = reset_bound(w.read_at, now, min(since, default=None))
            events.append(("warning", "sampler_pgsm_reset_seen", {"evidence_bucket": b, "reset_before": reset_by}))
            resets = (("pgsm_reset", 1),)
    lost = lost_buckets(plan, now, bt, mb, batches.seen, restart_at=w.restart_at, reset_by=reset_by)
    if lost:
        totals.add_lost(lost)
        events.append(("warning", "sampler_buckets_lost", {"watermark": plan.lo, "newest": plan.hi, **lost}))
    restart_at = w.restart_at
    if restart_at is not None and aligned(restart_at, bt) <= plan.hi:
        restart_at = None
    if reset_by is not None and aligned(reset_by, bt) <= plan.hi:
        reset_by = None
    return Watch(seen=batches.summary, read_at=now, restart_at=restart_at, reset_by=reset_by), resets, events
