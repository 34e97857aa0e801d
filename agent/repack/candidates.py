"""Which tables a window would repack, and why the others are left alone.

The decision (`assess`) is pure: it takes one row of catalog facts per table plus the history,
and returns either a candidate or the named reasons it is not one. SQL only gathers those facts
(`TABLES_SQL`, `guards.PLACEMENT_SQL` and `trust`'s queries, set-wise: nothing runs per table but
the few measurements below). Disk is judged as the run's guard judges it before a start
(`guards.disk_trip` over every file system holding the table, its TOAST, its indexes and pg_wal), so
a table the guard would stop is refused here, by name and path, instead of being chosen.

Bloat estimate. First from statistics, for every table in one query: the expected heap is
`reltuples x (row width from pg_stats + 28 bytes of tuple header and line pointer)` packed into
8 KiB pages at the table's fillfactor, and bloat is `1 - expected / actual`, or the dead-tuple ratio
of pg_stat_user_tables when that is higher (deletes since the last ANALYZE). Like ioguix's estimate
it needs a recent ANALYZE, ignores TOAST and alignment padding, and so errs high on small tables —
the size bounds keep those out. A table never analyzed (`reltuples < 0`) has only the dead-tuple
ratio. Then, with the `pgstattuple` extension in the database, `pgstattuple_approx` (reads the pages
the visibility map does not vouch for) measures only the few tables that rank highest by that
estimate, each under its own server-side statement_timeout (`repack.measure_timeout`), with a
heartbeat after each: a database of thousands of tables must not hold the loop past the watchdog.
A table whose measurement times out is named (`approx_failed`) and keeps its statistics estimate:
it is still a candidate, as it would be without pgstattuple; a big, hot table is the one most likely
to time out and the one an operator most wants repacked.

Who may be repacked at all (whose code pg_repack would run as a superuser) is `trust`'s concern.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from agent.core.config import RepackConfig, RepackWindow
from agent.repack import guards, trust
from agent.repack.history import History, table_key

PAGE = 8192
PAGE_HEADER = 24
TUPLE_OVERHEAD = 28  # 23-byte heap tuple header (aligned to 24) + 4-byte line pointer
MEASURED_PER_DATABASE = 3  # pgstattuple_approx runs on this many of a database's best-ranked tables


@dataclass(frozen=True, slots=True)
class TableFacts:
    database: str
    oid: int
    schema: str
    table: str
    heap_bytes: int             # main fork
    total_bytes: int            # heap + TOAST + indexes: what a repack rewrites
    reltuples: float
    row_width: float | None     # sum of pg_stats avg_width x (1 - null_frac); None without stats
    dead_tuples: int
    live_tuples: int
    fillfactor: int = 100
    persistent: bool = True
    has_key: bool = True        # PK, or a valid NOT NULL unique non-partial non-expression index
    invalid_index: bool = False
    deferrable_unique: bool = False
    xid_age: int = 0
    freeze_max_age: int = 200_000_000
    vacuum_running: bool = False
    approx_bloat: float | None = None  # from pgstattuple_approx, when available
    approx_failed: str = ""            # why pgstattuple_approx gave no figure (timeout, lock_timeout, …)
    locked: bool = False               # someone holds or awaits ACCESS EXCLUSIVE on it: not even sized
    owner: str = ""
    owner_trusted: bool = False  # a superuser or the agent's own role; repack.trusted_owners adds more
    index_code: tuple[str, ...] = ()  # code outside pg_catalog that building its indexes would run
    volumes: tuple[guards.Volume, ...] = ()  # the file systems its copy and WAL would land on

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def key(self) -> str:
        """Its key in the node's history."""
        return table_key(self.database, self.schema, self.table)


@dataclass(frozen=True, slots=True)
class DatabaseFacts:
    """Facts that refuse every table of a database at once."""

    extension_version: str | None     # repack.version(), None: extension not installed
    binary_version: str | None        # `pg_repack --version`
    all_tables_publication: bool = False
    logical_slot: bool = False
    public: trust.PublicSchema = field(default_factory=trust.PublicSchema)


@dataclass(frozen=True, slots=True)
class Assessment:
    facts: TableFacts
    bloat: float
    method: str                      # pgstattuple_approx | statistics | dead_tuples
    skip: str = ""                   # not a candidate by the window's filters (no refusal)
    refusals: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)  # what an operator needs beside a refusal

    @property
    def eligible(self) -> bool:
        return not self.skip and not self.refusals

    @property
    def bloat_bytes(self) -> int:
        return int(self.bloat * self.facts.heap_bytes)


def matches(name: str, include: list[str], exclude: list[str]) -> bool:
    """`schema.table` shell globs; exclude wins."""
    return (any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude))


def estimate_bloat(t: TableFacts) -> tuple[float, str]:
    if t.approx_bloat is not None:
        return max(0.0, min(1.0, t.approx_bloat)), "pgstattuple_approx"
    bloat, method = _statistics_bloat(t)
    return bloat, f"{method}; pgstattuple_approx {t.approx_failed}" if t.approx_failed else method


def _statistics_bloat(t: TableFacts) -> tuple[float, str]:
    total = t.dead_tuples + t.live_tuples
    dead = t.dead_tuples / total if total else 0.0
    if t.reltuples >= 0 and t.row_width is not None and t.heap_bytes > 0:
        per_page = max(1.0, (PAGE - PAGE_HEADER) * t.fillfactor / 100 / (t.row_width + TUPLE_OVERHEAD))
        expected = math.ceil(t.reltuples / per_page) * PAGE
        return max(0.0, 1.0 - expected / t.heap_bytes, dead), "statistics"
    return dead, "dead_tuples"


# A run is refused when total_bytes / throughput x this is longer than the window has left: the
# estimate comes from earlier runs of this node, and the final swap may wait for locks.
DURATION_MARGIN = 1.5


def assess(t: TableFacts, db: DatabaseFacts, w: RepackWindow, cfg: RepackConfig, *,
           last_success: float | None, now: float, throughput: float | None = None,
           seconds_left: float | None = None) -> Assessment:
    bloat, method = estimate_bloat(t)
    skip = ""
    if not matches(t.name, w.include, w.exclude):
        skip = "excluded"
    elif t.locked:
        return Assessment(t, 0.0, "none", refusals=["locked"])  # sizes unknown: no other verdict
    elif t.total_bytes < w.min_table_bytes:
        skip = "too_small"
    elif t.total_bytes > w.max_table_bytes:
        skip = "too_large"
    elif bloat < w.bloat_ratio:
        skip = "below_bloat_ratio"
    refusals: list[str] = []
    if db.extension_version is None:
        refusals.append("extension_missing")
    elif db.binary_version is not None and db.extension_version != db.binary_version:
        refusals.append("version_mismatch")
    if not t.persistent:
        refusals.append("unlogged")
    if not t.has_key:
        refusals.append("no_primary_key")
    if t.invalid_index:
        refusals.append("invalid_index")
    if t.deferrable_unique:
        refusals.append("deferrable_unique")
    untrusted = trust.refusals(t.owner, t.owner_trusted, t.index_code, db.public, cfg.trusted_owners)
    refusals += untrusted
    if db.all_tables_publication:
        refusals.append("all_tables_publication")
    if db.logical_slot:
        refusals.append("logical_slot")
    if t.vacuum_running:
        refusals.append("vacuum_running")
    if t.xid_age > 0.8 * t.freeze_max_age:
        refusals.append("relfrozenxid_age")
    details = {k: v for d in untrusted.values() for k, v in d.items()}
    if (disk := guards.disk_trip(cfg, t.volumes, t.total_bytes, running=False)) is not None:
        refusals.append("insufficient_disk")
        details.update(disk_path=disk.path, disk_free_bytes=disk.value, disk_needed_bytes=disk.threshold)
    if last_success is not None and now - last_success < w.min_interval:
        refusals.append("repacked_recently")
    if seconds_left is not None and (estimate := estimated_seconds(t.total_bytes, throughput)) is not None \
            and estimate > seconds_left:
        refusals.append("window_too_short")
    return Assessment(t, bloat, method, skip, refusals, details)


def estimated_seconds(total_bytes: int, throughput: float | None) -> float | None:
    return total_bytes / throughput * DURATION_MARGIN if throughput else None


def order(items: list[Assessment]) -> list[Assessment]:
    """Most reclaimable bytes first."""
    return sorted(items, key=lambda a: a.bloat_bytes, reverse=True)


def to_measure(items: list[Assessment], n: int = MEASURED_PER_DATABASE) -> list[Assessment]:
    """The tables worth a pgstattuple_approx: not refused, inside the window's filters (a statistics
    estimate under the bloat ratio may be stale), most reclaimable bytes by the estimate first."""
    return order([a for a in items if not a.refusals and a.skip in ("", "below_bloat_ratio")])[:n]


# --------------------------------------------------------------------------- reading the facts

# Sizing a relation takes ACCESS SHARE on it and on its indexes and TOAST table: behind an ACCESS
# EXCLUSIVE someone holds or awaits (a migration, a REINDEX), that waits out lock_timeout and fails
# the whole query. Such a table is not sized but named (`locked`), and the rest is read.
TABLES_SQL = """
WITH held AS (
  SELECT l.relation FROM pg_locks l
   WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock'
     AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())),
locked AS (
  SELECT c.oid FROM pg_class c
   WHERE c.oid IN (SELECT relation FROM held) OR c.reltoastrelid IN (SELECT relation FROM held)
  UNION
  SELECT i.indrelid FROM pg_index i WHERE i.indexrelid IN (SELECT relation FROM held))
SELECT c.oid::bigint AS oid, n.nspname AS schema, c.relname AS table,
       lk.oid IS NOT NULL AS locked,
       CASE WHEN lk.oid IS NULL THEN pg_relation_size(c.oid) ELSE 0 END AS heap_bytes,
       CASE WHEN lk.oid IS NULL THEN pg_total_relation_size(c.oid) ELSE 0 END AS total_bytes,
       c.reltuples::float8 AS reltuples,
       w.row_width,
       coalesce(st.n_dead_tup, 0) AS dead_tuples, coalesce(st.n_live_tup, 0) AS live_tuples,
       coalesce((SELECT option_value::int FROM pg_options_to_table(c.reloptions)
                  WHERE option_name = 'fillfactor'), 100) AS fillfactor,
       c.relpersistence = 'p' AS persistent,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisvalid AND i.indisunique
                 AND i.indpred IS NULL AND i.indexprs IS NULL
                 AND (i.indisprimary OR NOT EXISTS (
                       SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                          AND a.attnum = ANY (i.indkey) AND NOT a.attnotnull))) AS has_key,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND NOT i.indisvalid) AS invalid_index,
       EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype IN ('p', 'u')
                 AND k.condeferrable) AS deferrable_unique,
       age(c.relfrozenxid)::bigint AS xid_age,
       current_setting('autovacuum_freeze_max_age')::bigint AS freeze_max_age,
       c.oid IN (SELECT v.relid FROM pg_stat_progress_vacuum v) AS vacuum_running,
       c.relowner::regrole::text AS owner,
       (o.rolsuper OR o.rolname = current_user) AS owner_trusted
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_roles o ON o.oid = c.relowner
  LEFT JOIN locked lk ON lk.oid = c.oid
  LEFT JOIN pg_stat_user_tables st ON st.relid = c.oid
  LEFT JOIN (SELECT s.schemaname, s.tablename, sum(s.avg_width * (1 - s.null_frac))::float8 AS row_width
               FROM pg_stats s WHERE NOT s.inherited GROUP BY 1, 2) w  -- once, not per table
         ON w.schemaname = n.nspname AND w.tablename = c.relname
 WHERE c.relkind = 'r'
   AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'repack')
   AND n.nspname !~ '^pg_(toast|temp)'
"""

DATABASE_SQL = """
SELECT (SELECT extversion FROM pg_extension WHERE extname = 'pg_repack') AS repack_extension,
       EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgstattuple') AS has_pgstattuple,
       EXISTS (SELECT 1 FROM pg_publication WHERE puballtables) AS all_tables_publication,
       EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_type = 'logical'
                 AND database = current_database()) AS logical_slot
"""

APPROX_SQL = """
SELECT CASE WHEN table_len > 0 THEN (approx_free_space + dead_tuple_len)::float8 / table_len END AS bloat
  FROM pgstattuple_approx(%(oid)s::oid)
"""


async def read_database(conn: psycopg.AsyncConnection[dict[str, Any]], binary_version: str | None,
                        ) -> tuple[DatabaseFacts, bool]:
    row = await (await conn.execute(DATABASE_SQL)).fetchone()
    if row is None:
        raise RuntimeError("query returned no row")
    ext: str | None = None
    if row["repack_extension"] is not None:
        # repack.version() is the C library's "pg_repack 1.4.8", which is what the client compares
        v = await (await conn.execute("SELECT repack.version() AS v")).fetchone()
        ext = str(v["v"]).removeprefix("pg_repack").strip() if v else None
    return DatabaseFacts(extension_version=ext, binary_version=binary_version,
                         all_tables_publication=bool(row["all_tables_publication"]),
                         logical_slot=bool(row["logical_slot"]),
                         public=await trust.read_public(conn)), bool(row["has_pgstattuple"])


async def read_tables(conn: psycopg.AsyncConnection[dict[str, Any]], database: str) -> list[TableFacts]:
    """Catalog and statistics facts of every table: set-wise queries, nothing per table."""
    code = await trust.read_index_code(conn)
    rows = await (await conn.execute(TABLES_SQL)).fetchall()
    vols = await guards.read_volumes(conn, [r["oid"] for r in rows if not r["locked"]],
                                     await guards.data_directory(conn))
    return [TableFacts(database=database, index_code=code.get(r["oid"], ()), volumes=vols.get(r["oid"], ()), **r)
            for r in rows]


async def measure(conn: psycopg.AsyncConnection[dict[str, Any]], t: TableFacts, timeout: float) -> TableFacts:
    """pgstattuple_approx of one table under a server-side statement_timeout (a client-side cancel
    would close the connection). A failure on a live connection is this table's, not the
    database's: it is returned as `approx_failed`."""
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('statement_timeout', %s, true)",
                               (f"{max(1, round(timeout * 1000))}ms",))
            row = await (await conn.execute(APPROX_SQL, {"oid": t.oid})).fetchone()
    except psycopg.Error as e:
        if conn.broken:
            raise
        reason = {"57014": "timeout", "55P03": "lock_timeout"}.get(e.sqlstate or "", e.sqlstate or "error")
        return replace(t, approx_failed=reason)
    if row is None or row["bloat"] is None:
        return t
    return replace(t, approx_bloat=float(row["bloat"]))


Judge = Callable[[TableFacts, DatabaseFacts], Assessment]


def judge(w: RepackWindow, cfg: RepackConfig, history: History, *, now: float,
          seconds_left: float | None) -> Judge:
    """`assess` with this window, config and node history: what the run and `repack plan` both use."""
    throughput = history.throughput()

    def one(t: TableFacts, db: DatabaseFacts) -> Assessment:
        return assess(t, db, w, cfg, now=now, last_success=history.last_success(t.key), throughput=throughput,
                      seconds_left=seconds_left)
    return one


async def survey(conn: psycopg.AsyncConnection[dict[str, Any]], database: str, binary_version: str | None,
                 judge: Judge, *, measure_timeout: float, beat: Callable[[], None]) -> list[Assessment]:
    """Every table of one database assessed, most reclaimable first. `beat` is called after each
    query: each is bounded by a statement_timeout, so the gaps between beats are too. Tables
    whose measurement failed carry `approx_failed`; the caller names them."""
    dbf, has_pgstattuple = await read_database(conn, binary_version)
    beat()
    items = [judge(t, dbf) for t in await read_tables(conn, database)]
    beat()
    if has_pgstattuple:
        where = {id(a): i for i, a in enumerate(items)}
        for a in to_measure(items):
            items[where[id(a)]] = judge(await measure(conn, a.facts, measure_timeout), dbf)
            beat()
    return order(items)
