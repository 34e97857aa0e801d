"""The sampler component: one loop, one session, reads when a read is due, state on disk.

A PostgreSQL outage is an expected condition here, not a crash: it is logged once when it
starts and once when it ends, counted, and retried with backoff, while the heartbeat goes on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypedDict

import anyio
import anyio.abc
import psycopg
import structlog
from prometheus_client import CollectorRegistry

from agent.core import malloc, slices
from agent.core.context import CachedMetrics, Context
from agent.core.supervisor import Component
from agent.sampler import persist
from agent.sampler.metrics import Health, SamplerCollector, SamplerHealthCollector
from agent.sampler.persist import SamplerState
from agent.sampler.pg_stat_monitor import PgStatMonitor
from agent.sampler.pg_stat_statements import PgStatStatements
from agent.sampler.source import (
    Conn,
    Folded,
    Limits,
    Read,
    Source,
    SourceUnavailable,
    SourceUnreadable,
    clock,
    detect,
    identity_seen,
    read_failure,
)

log = structlog.get_logger("sampler")
NAME = "sampler"
BACKOFF_MAX = 30.0
SOURCES: dict[str, Callable[[], Source]] = {PgStatMonitor.name: PgStatMonitor, PgStatStatements.name: PgStatStatements}


class SamplerStatus(TypedDict):
    source: str | None
    watermark: int | None
    series: int
    queryids_kept: int
    buckets_lost: dict[str, int]     # per reason
    reads: int
    read_failures: dict[str, int]    # per reason
    fallback: str | None             # why `auto` reads pg_stat_statements although pgsm is installed
    unavailable: str | None          # why it is not reading now
    save_error: str | None           # why the state file cannot be written


class Sampler:
    def __init__(self, ctx: Context) -> None:
        self.path: Path = ctx.config.state_dir / "sampler.json"
        self.state: SamplerState = persist.load(self.path, tuple(ctx.config.sampler.labels))
        self.health = Health()
        self.writer = persist.Writer(self.path, self.health)
        self.health.last_ingested_bucket = (float(self.state.watermark)
                                            if self.state.watermark is not None else None)
        self.source: Source | None = None
        self.unavailable: str | None = None  # why no source can be read now (for /status)
        self.reading: str | None = None  # the source open() chose, before it is known to be readable
        self.version = 0  # bumped whenever the totals may have changed: re-render the query series

    @property
    def save_error(self) -> str | None:
        """Why the state file could not be written, while it cannot."""
        return self.writer.error

    def status(self) -> SamplerStatus:
        return SamplerStatus(source=self.health.source, watermark=self.state.watermark,
                             series=len(self.state.totals.series), queryids_kept=len(self.state.totals.kept),
                             buckets_lost=dict(self.state.totals.buckets_lost), reads=self.health.reads,
                             read_failures=dict(self.health.read_failures), fallback=self.health.fallback,
                             unavailable=self.unavailable, save_error=self.writer.error)

    async def open(self, ctx: Context) -> Conn:
        """Connect and choose the source; settings and schema are read once per session."""
        cfg = ctx.config.sampler
        conn = await ctx.pg_connect(NAME)
        try:
            name = self.reading = await detect(conn, cfg.source, skip_pgsm=self.health.fallback is not None)
            self.source = SOURCES[name]()
            await self.source.connected(conn)
        except BaseException:
            await conn.close()
            raise
        if self.health.source != name:
            log.info("sampler_source_selected", source=name, wanted=cfg.source, previous=self.health.source)
        self.health.source = name
        return conn

    async def step(self, ctx: Context, conn: Conn) -> float:
        """One due read (or none); returns seconds until the next one is due."""
        cfg = ctx.config.sampler
        if self.source is None:
            raise RuntimeError("step() before open()")
        limits = Limits(cfg.interval, cfg.grace, cfg.top_n, cfg.max_series)
        totals = self.state.totals.relabeled(tuple(cfg.labels))
        if totals is not self.state.totals:
            self.state = replace(self.state, totals=totals)
            self.version += 1
            log.info("sampler_labels_changed", labels=list(cfg.labels))
        c = await clock(conn)
        moved = identity_seen(self.state, c)
        if moved is not None:
            self._apply(moved)
        read = await self.source.read(conn, self.state, c["now"], limits)
        # the fold is tens of ms of Python at 10k statements: in slices on the loop
        # (agent/core/slices.py), from a state nothing changes meanwhile (only this task
        # replaces it), to one applied at once
        folded = await slices.run(read.fold(self.state, limits))
        self._apply(folded, read)
        await slices.run(read.dropping())
        if moved is not None or folded.changed:
            self.version += 1
            self.writer.changed(urgent=moved is not None or self.source.urgent_save)
        await self.writer.maybe_save(self.state)  # a failed write is survived, retried next read
        if folded.changed:  # the read's buffers and the old baseline are freed: their pages go back
            await anyio.to_thread.run_sync(malloc.trim)
        return read.wait

    def _apply(self, f: Folded, read: Read | None = None) -> None:
        """The one place a read reaches the sampler: its next state, and its counts in Health."""
        self.state = f.state
        h = self.health
        if read is not None and read.duration is not None:
            h.reads += 1
            h.rows_read += read.rows
            h.last_duration = read.duration
        for kind, n in f.resets:
            h.source_resets[kind] = h.source_resets.get(kind, 0) + n
        h.histogram_mismatches += f.histogram_mismatches
        if f.ingested_bucket is not None:
            h.last_ingested_bucket = float(f.ingested_bucket)
        for level, event, fields in f.events:
            getattr(log, level)(event, **fields)

    async def run(self, ctx: Context, *,
                  task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        conn: Conn | None = None
        down = False
        backoff = 1.0
        started = False
        try:
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = await self.open(ctx)
                    delay = await self.step(ctx, conn)
                    if down:
                        log.info("sampler_postgres_recovered" if self.unavailable == "PostgreSQL unreachable"
                                 else "sampler_read_recovered", source=self.health.source)
                        down = False
                    self.unavailable = None
                    backoff = 1.0
                except SourceUnavailable as e:
                    if self.unavailable != str(e):  # logged once per reason, not per retry
                        log.warning("sampler_source_unavailable", reason=str(e),
                                    retry_in_seconds=ctx.config.sampler.interval)
                    self.health.source = None
                    self.unavailable = str(e)
                    delay = ctx.config.sampler.interval
                except (psycopg.Error, OSError, SourceUnreadable) as e:
                    self._failed(ctx, e, first=not down)
                    down = True
                    await _close(conn)
                    conn = None
                    delay, backoff = backoff, min(backoff * 2, BACKOFF_MAX)
                if not started:
                    task_status.started()
                    started = True
                ctx.liveness.beat(NAME)
                await self._pause(ctx, delay, down)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                if self.writer.dirty:  # a clean stop keeps everything counted so far
                    await self.writer.save(self.state)
            await _close(conn)

    def _failed(self, ctx: Context, e: BaseException, *, first: bool) -> None:
        """A lost session is an outage; a read PostgreSQL answered with an error or a timeout is
        a read failure, counted each time and shown with its SQL error. With `auto`, a
        pg_stat_monitor that errors (not loaded, unusable settings, a failing function) is left
        for pg_stat_statements for the rest of this process: switching back and forth would
        count the same statements from both."""
        reason = read_failure(e)
        error = f"{type(e).__name__}: {e}".strip()[:300]
        if reason is None:
            self.unavailable = "PostgreSQL unreachable"
            if first:  # once per failure streak, not per retry
                log.warning("sampler_postgres_lost", error=error)
                self.health.postgres_outages += 1
            return
        self.health.read_failures[reason] = self.health.read_failures.get(reason, 0) + 1
        unavailable = f"read timed out (statement_timeout): {error}" if reason == "timeout" else error
        if unavailable != self.unavailable:  # once per distinct failure, not per retry
            log.warning("sampler_read_timeout" if reason == "timeout" else "sampler_read_failed",
                        source=self.reading, error=error)
        self.unavailable = unavailable
        if (reason == "error" and self.reading == "pg_stat_monitor" and ctx.config.sampler.source == "auto"
                and self.health.fallback is None):
            self.health.fallback = error
            log.warning("sampler_source_fallback", source="pg_stat_statements",
                        unreadable="pg_stat_monitor", error=error)

    async def _pause(self, ctx: Context, delay: float, down: bool) -> None:
        """Wake at least every interval (heartbeat, SIGHUP'd config, identity checks). After a
        failed read, retry on the backoff, or sooner once pg_role has seen PostgreSQL go down and
        come back (after a switchover it is back long before a 30 s backoff ends), but not within
        1 s. A read that fails on a PostgreSQL pg_role sees up all along keeps the backoff."""
        delay = min(delay, ctx.config.sampler.interval)
        if not down:
            await anyio.sleep(delay)
            return
        start = anyio.current_time()
        with anyio.move_on_after(delay):
            seen_down = not ctx.state.current.postgres_up
            while not (seen_down and ctx.state.current.postgres_up):
                changed = await ctx.state.changed()   # awaited every turn: never a busy loop
                seen_down = seen_down or not changed.postgres_up
            await anyio.sleep(max(0.0, start + 1.0 - anyio.current_time()))


async def _close(conn: Conn | None) -> None:
    if conn is not None and not conn.closed:
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            await conn.close()


def components(ctx: Context) -> list[Component]:
    cfg = ctx.config.sampler
    if not cfg.enabled:
        return []
    sampler = Sampler(ctx)
    series = CollectorRegistry(auto_describe=True)
    series.register(SamplerCollector(lambda: sampler.state.totals))
    ctx.cached_metrics.append(CachedMetrics(series, lambda: sampler.version))
    ctx.registry.register(SamplerHealthCollector(sampler.health))
    ctx.status_sections[NAME] = sampler.status
    return [Component(NAME, sampler.run, heartbeat_timeout=max(60.0, 6 * cfg.interval))]
