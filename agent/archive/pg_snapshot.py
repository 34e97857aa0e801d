"""The SQL side: one snapshot of settings, pg_stat_archiver and the .ready backlog.

Everything comes through SQL (pg_ls_archive_statusdir(), PG 12+), so the checks need no access
to the data directory. A failing optional query (no privilege on the pg_control functions or
the status directory) leaves its fields unknown instead of failing the whole check.
"""

from __future__ import annotations

from typing import Any

import psycopg
import structlog

from agent.archive.checks import ArchiverStats, PgSnapshot

log = structlog.get_logger("archive")

MAIN_SQL = """
SELECT clock_timestamp() AS now,
       pg_is_in_recovery() AS in_recovery,
       current_setting('archive_mode') AS archive_mode,
       current_setting('archive_command') AS archive_command,
       coalesce(current_setting('archive_library', true), '') AS archive_library,
       (SELECT setting::float8 FROM pg_settings WHERE name = 'archive_timeout') AS archive_timeout,
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size') AS seg_setting,
       (SELECT unit FROM pg_settings WHERE name = 'wal_segment_size') AS seg_unit,
       (CASE WHEN pg_is_in_recovery()
             THEN coalesce(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
             ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint AS current_lsn,
       a.archived_count, a.last_archived_wal, a.last_archived_time,
       a.failed_count, a.last_failed_wal, a.last_failed_time, a.stats_reset
  FROM pg_stat_archiver a
"""

CONTROL_SQL = """
SELECT (pg_control_system()).system_identifier AS system_identifier,
       (pg_control_checkpoint()).timeline_id AS timeline
"""

# A .ready file's mtime is when its segment was finished: the oldest one is how long the
# backlog has been waiting.
READY_SQL = """
SELECT count(*) AS ready_files,
       extract(epoch FROM clock_timestamp() - min(modification))::float8 AS oldest_ready_age
  FROM pg_ls_archive_statusdir()
 WHERE name LIKE '%.ready'
"""

_UNIT_BYTES = {"B": 1, "kB": 1024, "8kB": 8192, "MB": 1 << 20}


async def _one(conn: psycopg.AsyncConnection[dict[str, Any]], query: str) -> dict[str, Any]:
    cur = await conn.execute(query)
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("query returned no row")
    return row


async def _optional(conn: psycopg.AsyncConnection[dict[str, Any]], query: str,
                    what: str) -> dict[str, Any] | None:
    try:
        return await _one(conn, query)
    except psycopg.errors.InsufficientPrivilege as e:
        log.debug("archive_query_not_permitted", query=what, error=str(e).strip())
        return None


async def read(conn: psycopg.AsyncConnection[dict[str, Any]]) -> tuple[PgSnapshot, bool]:
    """The snapshot, and whether the .ready backlog could be read."""
    r = await _one(conn, MAIN_SQL)
    ctl = await _optional(conn, CONTROL_SQL, "pg_control")
    ready = await _optional(conn, READY_SQL, "pg_ls_archive_statusdir")
    n = int(ready["ready_files"]) if ready else None
    # An empty backlog is a known zero age, not an unknown one.
    age = None
    if ready:
        age = float(ready["oldest_ready_age"]) if ready["oldest_ready_age"] is not None else 0.0
    snap = PgSnapshot(
        now=r["now"],
        in_recovery=bool(r["in_recovery"]),
        archive_mode=str(r["archive_mode"]),
        archive_command=str(r["archive_command"] or ""),
        archive_library=str(r["archive_library"] or ""),
        archive_timeout=float(r["archive_timeout"] or 0),
        wal_segment_size=int(r["seg_setting"]) * _UNIT_BYTES.get(str(r["seg_unit"] or "B"), 1),
        timeline=int(ctl["timeline"]) if ctl and ctl["timeline"] is not None else None,
        current_lsn=int(r["current_lsn"]) if r["current_lsn"] is not None else None,
        system_identifier=int(ctl["system_identifier"]) if ctl else None,
        archiver=ArchiverStats(
            archived_count=int(r["archived_count"]), last_archived_wal=r["last_archived_wal"],
            last_archived_time=r["last_archived_time"], failed_count=int(r["failed_count"]),
            last_failed_wal=r["last_failed_wal"], last_failed_time=r["last_failed_time"],
            stats_reset=r["stats_reset"],
        ),
        ready_files=n,
        oldest_ready_age=age,
    )
    return snap, ready is not None
