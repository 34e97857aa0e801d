"""What both sources share: the server-identity probe and the source choice."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from agent.sampler.metrics import Health
from agent.sampler.persist import SamplerState

Conn = psycopg.AsyncConnection[dict[str, Any]]
Query = str | sql.Composed

# Rows fetched per round trip of a read. A read is consumed chunk by chunk, so the agent never
# holds more than this many source rows at once, whatever the view's size (pg_stat_statements.max,
# pg_stat_monitor's buckets x entries).
CHUNK_ROWS = 500

# pg_stat_monitor is detected by its view plus its version function rather than pg_extension
# alone: that is what a read needs, and it also finds a schema-faithful stand-in in tests.
DETECT = """
SELECT to_regclass('pg_stat_monitor') IS NOT NULL
       AND to_regprocedure('pg_stat_monitor_version()') IS NOT NULL AS has_pgsm,
       to_regprocedure('pg_stat_statements(boolean)') IS NOT NULL AS has_pgss
"""

# Server clock (bucket completeness is judged on the server's time, not ours) and identity.
CLOCK = """
SELECT extract(epoch FROM clock_timestamp())::float8 AS now,
       (SELECT system_identifier FROM pg_control_system())::text AS system_identifier,
       extract(epoch FROM pg_postmaster_start_time())::float8 AS postmaster_start
"""


class SourceUnavailable(Exception):
    """Neither the wanted source nor a fallback is installed in the configured database."""


class SourceUnreadable(Exception):
    """The source is installed but cannot be read as it is (not preloaded, a setting we cannot
    use): a read failure to report, and for `auto` a reason to fall back."""


# SQLSTATEs that mean the session is gone: connection exceptions and the server shutting down.
_LOST_STATES = ("57P01", "57P02", "57P03")


def read_failure(e: BaseException) -> str | None:
    """Why a read failed on a PostgreSQL that answered: "timeout" (57014: statement_timeout or a
    cancel) or "error" (any other SQL error, a lock_timeout included, or a source we cannot
    read). None: the session is lost (no SQLSTATE from the server, class 08, a shutdown).
    psycopg files 57014 and 55P03 under OperationalError, which is not an outage."""
    if isinstance(e, OSError):
        return None
    if isinstance(e, psycopg.Error):
        state = e.sqlstate
        if state == "57014":
            return "timeout"
        if (state is None and isinstance(e, psycopg.OperationalError)) or (
                state is not None and (state.startswith("08") or state in _LOST_STATES)):
            return None
    return "error"


class Source(Protocol):
    name: str

    async def step(self, conn: Conn, st: SamplerState, now: float, top_n: int, max_series: int,
                   grace: float, health: Health) -> tuple[float, bool]:
        """One read if one is due; returns (seconds until the next is due, state changed)."""
        ...


async def detect(conn: Conn, want: str, *, skip_pgsm: bool = False) -> str:
    """The source to read: `want`, or for "auto" pg_stat_monitor, else pg_stat_statements.
    `skip_pgsm`: "auto" found pg_stat_monitor unreadable, so pg_stat_statements is used."""
    async with conn.cursor() as cur:
        await cur.execute(DETECT)
        row = await cur.fetchone()
    if row is None:
        raise SourceUnavailable("detection returned no row")
    if (want == "pg_stat_monitor" or (want == "auto" and not skip_pgsm)) and row["has_pgsm"]:
        return "pg_stat_monitor"
    if want in ("auto", "pg_stat_statements") and row["has_pgss"]:
        return "pg_stat_statements"
    raise SourceUnavailable(f"source {want!r} not installed (pg_stat_monitor={row['has_pgsm']}, "
                            f"pg_stat_statements={row['has_pgss']})")


async def clock(conn: Conn) -> dict[str, Any]:
    async with conn.cursor() as cur:
        await cur.execute(CLOCK)
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError("clock query returned no row")
    return row


async def read_chunks(conn: Conn, query: Query, params: dict[str, Any] | None,
                      consume: Callable[[Sequence[tuple[Any, ...]]], None], *,
                      chunk: int = CHUNK_ROWS) -> int:
    """Runs one read through a server-side cursor and hands its rows to `consume` in chunks
    of tuple rows (positional, no per-row dict); returns the row count.

    The cursor lives in its own short transaction (the session is autocommit): a server-side
    cursor needs one, and it ends with the read.
    """
    n = 0
    async with conn.transaction(), conn.cursor("pgna_sampler_read", row_factory=tuple_row) as cur:
        await cur.execute(query, params)
        while rows := await cur.fetchmany(chunk):
            n += len(rows)
            consume(rows)
    return n
