"""pg_is_in_recovery() over the local socket: the third witness of the node's role."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import psycopg
import structlog

from agent.cluster.wake import Waker
from agent.core.context import Context
from agent.core.events import PostgresAvailability

log = structlog.get_logger("pg_role")


async def run(ctx: Context, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    started = False
    conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
    waker = Waker()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(waker.follow_leader_events, ctx.bus)
            while True:
                ctx.liveness.beat("pg_role")
                try:
                    if conn is None or conn.closed:
                        conn = await ctx.pg_connect("role")
                    with anyio.fail_after(ctx.config.postgres.statement_timeout + 1):
                        cur = await conn.execute("SELECT pg_is_in_recovery() AS r")
                        row = await cur.fetchone()
                    ctx.publish(PostgresAvailability(up=True, in_recovery=bool(row and row["r"])))
                except (psycopg.Error, OSError, TimeoutError) as e:
                    reason = f"{type(e).__name__}: {str(e).strip()[:200]}"
                    if ctx.state.current.postgres_up or not started:
                        log.warning("postgres_unreachable", error=reason)
                    ctx.publish(PostgresAvailability(up=False, reason=reason))
                    if conn is not None:
                        with anyio.move_on_after(1):
                            await conn.close()
                        conn = None
                if not started:
                    task_status.started()
                    started = True
                await waker.wait(ctx.config.postgres.poll_interval)
    finally:
        if conn is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await conn.close()
