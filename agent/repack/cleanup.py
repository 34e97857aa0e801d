"""Find and drop what an interrupted pg_repack leaves behind.

A pg_repack killed (or cut off from its server) leaves an enabled `repack_trigger` on the table
that logs every write into `repack.log_<oid>`, plus `repack.table_<oid>` (the copy) and the type
`repack.pk_<oid>`. `repack.repack_drop(oid, 4)` drops all four; it takes ACCESS EXCLUSIVE on the
table, and while that request queues every new query on the table waits behind it. So each attempt
queues for at most LOCK_TIMEOUT, and attempts are spaced at least ten times that apart, doubling:
the table's clients wait on the cleanup for well under a tenth of the time, never for seconds.
A table still locked by a pg_repack session (its advisory lock, class 16185446) is left alone:
that run is alive and will clean up itself.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import anyio
import psycopg
import structlog
from psycopg import errors, sql

log = structlog.get_logger("repack")

REPACK_ADVISORY_CLASS = 16185446
LOCK_TIMEOUT = 0.08  # seconds one ACCESS EXCLUSIVE request may queue
FIRST_GAP = 0.8      # seconds between attempts, doubling: >= 10x LOCK_TIMEOUT
MAX_GAP = 8.0

LEFTOVERS_SQL = """
SELECT DISTINCT oid FROM (
  SELECT t.tgrelid::bigint AS oid FROM pg_trigger t WHERE t.tgname IN ('repack_trigger', 'z_repack_trigger')
  UNION
  SELECT substring(c.relname FROM '^(?:log|table)_([0-9]+)$')::bigint
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = 'repack' AND c.relkind = 'r' AND c.relname ~ '^(log|table)_[0-9]+$'
  UNION
  SELECT substring(t.typname FROM '^pk_([0-9]+)$')::bigint
    FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
   WHERE n.nspname = 'repack' AND t.typname ~ '^pk_[0-9]+$'
) x ORDER BY oid
"""

# pg_repack takes pg_try_advisory_lock(16185446, oid - 2^31): pg_locks shows objid = oid + 2^31 mod 2^32
BUSY_SQL = """
SELECT array_agg(l.pid) AS pids FROM pg_locks l
 WHERE l.locktype = 'advisory' AND l.classid = %(cls)s::oid AND l.objsubid = 2
   AND l.objid = ((%(oid)s::bigint + 2147483648) %% 4294967296)::oid
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


async def find(conn: psycopg.AsyncConnection[dict[str, Any]]) -> list[int]:
    return [int(r["oid"]) for r in await (await conn.execute(LEFTOVERS_SQL)).fetchall()]


async def busy_pids(conn: psycopg.AsyncConnection[dict[str, Any]], oid: int) -> list[int]:
    row = await (await conn.execute(BUSY_SQL, {"cls": REPACK_ADVISORY_CLASS, "oid": oid})).fetchone()
    return list(row["pids"] or []) if row else []


LOG_BYTES_SQL = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint AS bytes
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'repack' AND c.relname = ANY (%s::text[])
"""


async def log_bytes(conn: psycopg.AsyncConnection[dict[str, Any]], oids: Collection[int]) -> int:
    """Size of these tables' repack.log_<oid>: it grows with every write while the trigger is left."""
    row = await (await conn.execute(LOG_BYTES_SQL, ([f"log_{o}" for o in oids],))).fetchone()
    return int(row["bytes"]) if row else 0


async def drop(conn: psycopg.AsyncConnection[dict[str, Any]], oid: int, *, deadline: float) -> bool:
    """Drop one table's leftovers; attempts spaced out (see above) until `deadline` (anyio clock)."""
    await conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(LOCK_TIMEOUT * 1000)}ms")))
    attempts = 0
    gap = FIRST_GAP
    while True:
        attempts += 1
        try:
            row = await (await conn.execute("SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid = %s::oid) AS e",
                                            (oid,))).fetchone()
            if row and row["e"]:
                await conn.execute("SELECT repack.repack_drop(%s::oid, 4)", (oid,))
            else:  # the table itself is gone: repack_drop would fail to lock it
                for kind, name in (("TABLE", f"log_{oid}"), ("TABLE", f"table_{oid}"), ("TYPE", f"pk_{oid}")):
                    await conn.execute(sql.SQL("DROP {} IF EXISTS {} CASCADE").format(
                        sql.SQL(kind), sql.Identifier("repack", name)))
            log.info("repack_leftovers_dropped", oid=oid, attempts=attempts)
            return True
        except (errors.LockNotAvailable, errors.QueryCanceled) as e:
            if anyio.current_time() + gap >= deadline:
                log.warning("repack_leftovers_not_dropped", oid=oid, attempts=attempts, error=str(e).strip())
                return False
            await anyio.sleep(gap)
            gap = min(gap * 2, MAX_GAP)


async def sweep(conn: psycopg.AsyncConnection[dict[str, Any]], *, deadline: float,
                only: Collection[int] | None = None, may_drop: bool = True) -> tuple[list[int], list[int]]:
    """Drop the leftovers of every table (or of `only`) not held by a live pg_repack run. Returns
    (left, busy): the tables whose leftovers are still there, and those a live run holds. With
    `may_drop` false (a standby) nothing is dropped: it only reports what is there."""
    left: list[int] = []
    busy: list[int] = []
    for oid in await find(conn):
        if only is not None and oid not in only:
            continue
        if not may_drop:
            left.append(oid)
            continue
        pids = await busy_pids(conn, oid)
        if pids:
            log.info("repack_leftovers_in_use", oid=oid, pg_repack_pids=pids)
            busy.append(oid)
            continue
        if not await drop(conn, oid, deadline=deadline):
            left.append(oid)
    return left, busy
