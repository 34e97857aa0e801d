"""Which tables a window would repack, and why the others are left alone.

The decision (`assess`) is pure: it takes one row of catalog facts per table plus the history
and the free disk, and returns either a candidate or the named reasons it is not one. SQL only
gathers those facts (`TABLES_SQL`, one query per database).

Bloat estimate. With the `pgstattuple` extension installed in the database we ask
`pgstattuple_approx` (reads only the pages the visibility map does not vouch for; cheap). Without
it, a statistics-only estimate: the expected heap is `reltuples x (row width from pg_stats + 28 bytes
of tuple header and line pointer)` packed into 8 KiB pages at the table's fillfactor, and bloat is
`1 - expected / actual`. Like ioguix's estimate it needs a recent ANALYZE, ignores TOAST and
alignment padding, and so errs high on small tables — the size bounds keep those out. A table never
analyzed (`reltuples < 0`) falls back to the dead-tuple ratio.

Whose code a repack runs. pg_repack (a superuser session) copies the heap into
`repack.table_<oid>`, a table that session owns, builds the original's indexes on it, and replays
the logged changes into it. Index builds and inserts evaluate index expressions and predicates,
the functions behind their operators, CHECKs of domains they cast to, and (GiST) a range type's
`subtype_diff`, all as the copy's owner: the superuser. Each of these made a plain table owner a
superuser on PostgreSQL 15 + pg_repack 1.4.8. What pg_repack does not run as the superuser: the
table's CHECK constraints, defaults, generated columns and triggers are not carried to the copy
(`CREATE TABLE … AS SELECT`, tested), row security is bypassed by a superuser, and the closing
ANALYZE runs as the table's owner. So a table is refused when its indexes use a function or
operator outside pg_catalog, or a domain, range or multirange type outside pg_catalog
(`index_user_code`), and when its owner is not trusted (`untrusted_owner`): an owner can add such
an index between this check and pg_repack's own reading of the indexes.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg

from agent.core.config import RepackConfig, RepackWindow

PAGE = 8192
PAGE_HEADER = 24
TUPLE_OVERHEAD = 28  # 23-byte heap tuple header (aligned to 24) + 4-byte line pointer


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
    owner: str = ""
    owner_trusted: bool = False  # a superuser or the agent's own role; repack.trusted_owners adds more
    index_code: tuple[str, ...] = ()  # code outside pg_catalog that building its indexes would run

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True, slots=True)
class DatabaseFacts:
    """Facts that refuse every table of a database at once."""

    extension_version: str | None     # repack.version(), None: extension not installed
    binary_version: str | None        # `pg_repack --version`
    all_tables_publication: bool = False
    logical_slot: bool = False


@dataclass(frozen=True, slots=True)
class Assessment:
    facts: TableFacts
    bloat: float
    method: str                      # pgstattuple_approx | statistics | dead_tuples
    skip: str = ""                   # not a candidate by the window's filters (no refusal)
    refusals: list[str] = field(default_factory=list)

    @property
    def eligible(self) -> bool:
        return not self.skip and not self.refusals

    @property
    def bloat_bytes(self) -> int:
        return int(self.bloat * self.facts.heap_bytes)

    def details(self) -> dict[str, object]:
        """What an operator needs beside a refusal's name to act on it."""
        out: dict[str, object] = {}
        if "untrusted_owner" in self.refusals:
            out["owner"] = self.facts.owner
        if "index_user_code" in self.refusals:
            out["index_code"] = list(self.facts.index_code)
        return out


def matches(name: str, include: list[str], exclude: list[str]) -> bool:
    """`schema.table` shell globs; exclude wins."""
    return (any(fnmatch.fnmatchcase(name, p) for p in include)
            and not any(fnmatch.fnmatchcase(name, p) for p in exclude))


def estimate_bloat(t: TableFacts) -> tuple[float, str]:
    if t.approx_bloat is not None:
        return max(0.0, min(1.0, t.approx_bloat)), "pgstattuple_approx"
    if t.reltuples >= 0 and t.row_width is not None and t.heap_bytes > 0:
        per_page = max(1.0, (PAGE - PAGE_HEADER) * t.fillfactor / 100 / (t.row_width + TUPLE_OVERHEAD))
        expected = math.ceil(t.reltuples / per_page) * PAGE
        return max(0.0, 1.0 - expected / t.heap_bytes), "statistics"
    total = t.dead_tuples + t.live_tuples
    return (t.dead_tuples / total if total else 0.0), "dead_tuples"


# A run is refused when total_bytes / throughput x this is longer than the window has left: the
# estimate comes from earlier runs of this node, and the final swap may wait for locks.
DURATION_MARGIN = 1.5


def assess(t: TableFacts, db: DatabaseFacts, w: RepackWindow, cfg: RepackConfig, *, free_disk_bytes: int,
           last_success: float | None, now: float, throughput: float | None = None,
           seconds_left: float | None = None) -> Assessment:
    bloat, method = estimate_bloat(t)
    skip = ""
    if not matches(t.name, w.include, w.exclude):
        skip = "excluded"
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
    if not (t.owner_trusted or t.owner in cfg.trusted_owners):
        refusals.append("untrusted_owner")
    if t.index_code:
        refusals.append("index_user_code")
    if db.all_tables_publication:
        refusals.append("all_tables_publication")
    if db.logical_slot:
        refusals.append("logical_slot")
    if t.vacuum_running:
        refusals.append("vacuum_running")
    if t.xid_age > 0.8 * t.freeze_max_age:
        refusals.append("relfrozenxid_age")
    if free_disk_bytes < cfg.min_free_disk_ratio * t.total_bytes:
        refusals.append("insufficient_disk")
    if last_success is not None and now - last_success < w.min_interval:
        refusals.append("repacked_recently")
    if throughput and seconds_left is not None and t.total_bytes / throughput * DURATION_MARGIN > seconds_left:
        refusals.append("window_too_short")
    return Assessment(t, bloat, method, skip, refusals)


def estimated_seconds(total_bytes: int, throughput: float | None) -> float | None:
    return total_bytes / throughput * DURATION_MARGIN if throughput else None


def order(items: list[Assessment]) -> list[Assessment]:
    """Most reclaimable bytes first."""
    return sorted(items, key=lambda a: a.bloat_bytes, reverse=True)


# --------------------------------------------------------------------------- reading the facts

TABLES_SQL = """
SELECT c.oid::bigint AS oid, n.nspname AS schema, c.relname AS table,
       pg_relation_size(c.oid) AS heap_bytes, pg_total_relation_size(c.oid) AS total_bytes,
       c.reltuples::float8 AS reltuples,
       (SELECT sum(s.avg_width * (1 - s.null_frac)) FROM pg_stats s
         WHERE s.schemaname = n.nspname AND s.tablename = c.relname)::float8 AS row_width,
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
       EXISTS (SELECT 1 FROM pg_stat_progress_vacuum v WHERE v.relid = c.oid) AS vacuum_running,
       c.relowner::regrole::text AS owner,
       (o.rolsuper OR o.rolname = current_user) AS owner_trusted,
       ARRAY(SELECT DISTINCT x FROM pg_index i CROSS JOIN LATERAL (
               SELECT format('function %s.%s(%s)', p.pronamespace::regnamespace, quote_ident(p.proname),
                             pg_get_function_identity_arguments(p.oid)) AS x
                 FROM pg_depend d JOIN pg_proc p ON p.oid = d.refobjid
                WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                  AND d.refclassid = 'pg_proc'::regclass AND p.pronamespace <> 'pg_catalog'::regnamespace
               UNION ALL
               SELECT format('operator %s.%s(%s,%s)', op.oprnamespace::regnamespace, op.oprname,
                             format_type(op.oprleft, NULL), format_type(op.oprright, NULL))
                 FROM pg_depend d JOIN pg_operator op ON op.oid = d.refobjid
                 JOIN pg_proc p ON p.oid = op.oprcode
                WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                  AND d.refclassid = 'pg_operator'::regclass
                  AND 'pg_catalog'::regnamespace <> ANY (ARRAY[op.oprnamespace, p.pronamespace])
               UNION ALL
               SELECT format('type %s.%s', ty.typnamespace::regnamespace, quote_ident(ty.typname))
                 FROM pg_type ty
                WHERE ty.typnamespace <> 'pg_catalog'::regnamespace AND ty.typtype IN ('d', 'r', 'm')
                  AND (ty.oid IN (SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = i.indexrelid)
                       OR ty.oid IN (SELECT d.refobjid FROM pg_depend d
                                      WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                                        AND d.refclassid = 'pg_type'::regclass))
             ) code WHERE i.indrelid = c.oid ORDER BY x) AS index_code
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_roles o ON o.oid = c.relowner
  LEFT JOIN pg_stat_user_tables st ON st.relid = c.oid
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
                         logical_slot=bool(row["logical_slot"])), bool(row["has_pgstattuple"])


async def read_tables(conn: psycopg.AsyncConnection[dict[str, Any]], database: str, w: RepackWindow,
                      use_pgstattuple: bool) -> list[TableFacts]:
    """Facts per table; pgstattuple_approx only for tables the window's filters let through."""
    out: list[TableFacts] = []
    for row in await (await conn.execute(TABLES_SQL)).fetchall():
        t = TableFacts(database=database, **{**row, "index_code": tuple(row["index_code"])})
        if (use_pgstattuple and matches(t.name, w.include, w.exclude)
                and w.min_table_bytes <= t.total_bytes <= w.max_table_bytes and t.heap_bytes > 0):
            r = await (await conn.execute(APPROX_SQL, {"oid": t.oid})).fetchone()
            if r is not None and r["bloat"] is not None:
                t = replace(t, approx_bloat=float(r["bloat"]))
        out.append(t)
    return out
