"""The archive component: PostgreSQL checks every `interval`, pgBackRest on its own slower clock.

pgBackRest runs in a sibling task so a slow `check` (up to `pgbackrest_timeout`) never delays
the cheap checks or the heartbeat. Sleeps are cut into short steps that beat, so a long
`interval` does not look like a wedged loop to the watchdog.
"""

from __future__ import annotations

import functools
from typing import Any

import anyio
import anyio.abc
import psycopg
import structlog

from agent.archive import rounds
from agent.archive.metrics import ArchiveMetrics
from agent.archive.rounds import ArchiveView
from agent.core import pg
from agent.core.context import Context
from agent.core.events import ArchiveHealthChanged
from agent.core.supervisor import Component

log = structlog.get_logger("archive")

NAME = "archive"
BEAT_STEP = 5.0


def components(ctx: Context) -> list[Component]:
    if not ctx.config.archive.enabled:
        return []
    view = ArchiveView()
    metrics = ArchiveMetrics(ctx.registry, view)
    ctx.status_sections[NAME] = view.status
    return [Component(NAME, functools.partial(run, view=view, metrics=metrics))]


async def _sleep_beating(ctx: Context, seconds: float) -> None:
    deadline = anyio.current_time() + seconds
    while (left := deadline - anyio.current_time()) > 0:
        await anyio.sleep(min(left, BEAT_STEP))
        ctx.liveness.beat(NAME)


def _publish_if_changed(ctx: Context, view: ArchiveView) -> None:
    healthy, changed = rounds.settle(view)
    if not changed:
        return
    a = view.assessment
    log.info("archive_health_changed", healthy=healthy, reasons=list(view.reasons),
             expected=a.expected if a else None, lag_bytes=a.lag_bytes if a else None,
             ready_files=view.snapshot.ready_files if view.snapshot else None)
    if healthy is not None:
        ctx.publish(ArchiveHealthChanged(healthy=healthy, reasons=view.reasons))


async def run(ctx: Context, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
              view: ArchiveView, metrics: ArchiveMetrics) -> None:
    conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
    started = False
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_pgbackrest_loop, ctx, view, metrics)
            while True:
                cfg = ctx.config.archive
                ctx.liveness.beat(NAME)
                try:
                    if conn is None or conn.closed:
                        conn = await ctx.pg_connect(NAME)
                    await rounds.check_postgres(conn, cfg, view, metrics)
                except (psycopg.Error, OSError) as e:
                    if view.error != str(e).strip():
                        log.warning("archive_check_failed", error=str(e).strip())
                    view.error = str(e).strip() or type(e).__name__
                    view.snapshot = view.assessment = None   # unknown now, not the old figures
                    if conn is not None:
                        await conn.close()
                    conn = None
                _publish_if_changed(ctx, view)
                if not started:
                    started = True
                    task_status.started()
                await _sleep_beating(ctx, float(cfg.interval))
    finally:
        if conn is not None:
            with anyio.CancelScope(shield=True):
                await conn.close()


async def _pgbackrest_loop(ctx: Context, view: ArchiveView, metrics: ArchiveMetrics) -> None:
    next_info = next_check = anyio.current_time()
    while True:
        cfg = ctx.config.archive
        s = rounds.settings(cfg)
        snap = view.snapshot
        if s is not None and snap is not None:
            env = pg.subprocess_env(ctx.config.postgres, "pg-node-agent/archive", ctx.config.state_dir)
            now = anyio.current_time()
            if now >= next_info:
                next_info = now + float(cfg.pgbackrest_info_interval)
                await rounds.check_pgbackrest_info(s, view, metrics, env)
                _publish_if_changed(ctx, view)
            # the end-to-end canary switches WAL: only where PostgreSQL itself is the writer
            if now >= next_check and not snap.in_recovery:
                next_check = now + float(cfg.pgbackrest_check_interval)
                await rounds.check_pgbackrest_check(s, view, metrics, env)
                _publish_if_changed(ctx, view)
        await anyio.sleep(1.0)
