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


class Source(Protocol):
    name: str

    async def step(self, conn: Conn, st: SamplerState, now: float, top_n: int, max_series: int,
                   grace: float, health: Health) -> tuple[float, bool]:
        """One read if one is due; returns (seconds until the next is due, state changed)."""
        ...


async def detect(conn: Conn, want: str) -> str:
    async with conn.cursor() as cur:
        await cur.execute(DETECT)
        row = await cur.fetchone()
    if row is None:
        raise SourceUnavailable("detection returned no row")
    if want in ("auto", "pg_stat_monitor") and row["has_pgsm"]:
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
