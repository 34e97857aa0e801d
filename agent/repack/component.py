"""The repack component: wait for a window, check who may run, take the scope's lock, pick the most
bloated eligible table, run it guarded, record the outcome; repeat. Nothing runs outside a window,
on a node that is not a confirmed primary, or after a reload set `enabled = false`.

Leftovers (a trigger still logging every write) are looked for in every window database each time
this node becomes the confirmed primary, and a run whose cleanup could not take its lock lists its
table at once; a task of its own retries the list, spaced out and persisted, until it is empty.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

import anyio
import anyio.abc
import psycopg
import structlog

from agent.core.config import ConfigError, RepackWindow
from agent.core.context import Context
from agent.core.supervisor import Component
from agent.repack import candidates, cleanup, guards, windows
from agent.repack.history import History
from agent.repack.leftovers import Pending
from agent.repack.lock import TTL, RepackLock
from agent.repack.metrics import RepackMetrics
from agent.repack.runner import repack_table

log = structlog.get_logger("repack")

NAME = "repack"
IDLE_SLICE = 2.0  # seconds; also the heartbeat period while idle
RETRY_FIRST = 5.0   # seconds before a leftover is retried, doubling while nothing gives way
RETRY_MAX = 60.0
PASS_SECONDS = 2.0  # one retry pass's lock attempts per database (cleanup spaces them)


def resolve_binary(name: str) -> str:
    path = name if Path(name).is_absolute() else shutil.which(name)
    if not path or not Path(path).is_file():
        raise ConfigError("repack.binary", f'pg_repack binary "{name}" not found')
    return path


async def binary_version(binary: str) -> str | None:
    """`pg_repack 1.4.8` -> "1.4.8"; compared with the extension's repack.version()."""
    try:
        with anyio.fail_after(10):
            done = await anyio.run_process([binary, "--version"], check=False)
    except (OSError, TimeoutError):
        return None
    out = done.stdout.decode(errors="replace").strip()
    return out.removeprefix("pg_repack").strip() or None


class RunningStatus(TypedDict):
    database: str
    table: str
    since: float


class RecentRun(TypedDict):
    database: str
    table: str
    result: str
    reason: str
    reclaimed_bytes: int
    duration_seconds: float
    guard: str | None
    stop_to_clean_seconds: float | None
    leftovers: int
    at: float


class RepackStatus(TypedDict):
    binary: str
    version: str | None
    running: RunningStatus | None
    current_window: str | None
    next_window: str | None
    waiting_for: list[str]               # the guards holding it back
    leftovers: int                       # tables whose leftovers are not dropped yet
    leftover_tables: dict[str, list[int]]  # database -> table oids
    recent: list[RecentRun]


class RepackJob:
    def __init__(self, metrics: RepackMetrics, binary: str, pending: Pending, lock: RepackLock) -> None:
        self.metrics = metrics
        self.lock = lock  # one etcd client for the component's lifetime (etcd settings need a restart)
        self.binary = binary
        self.version: str | None = None
        self.running: RunningStatus | None = None
        self.recent: deque[RecentRun] = deque(maxlen=20)
        self.pending = pending
        self.log_bytes: dict[str, int] = {}
        self._wake = anyio.Event()
        self._pass_lock = anyio.Lock()
        self._disabled_logged = False
        self.waiting_for: tuple[str, ...] = ()
        self.next_window: str | None = None
        self.current_window: str | None = None
        self._tried: set[tuple[str, str]] = set()   # (window occurrence, table key)
        self._started: dict[str, int] = {}          # window occurrence -> runs started
        self._exhausted: set[str] = set()

    def status(self) -> RepackStatus:
        return RepackStatus(binary=self.binary, version=self.version, running=self.running,
                            current_window=self.current_window, next_window=self.next_window,
                            waiting_for=list(self.waiting_for), leftovers=self.pending.count(),
                            leftover_tables=dict(self.pending.tables), recent=list(self.recent))

    # ------------------------------------------------------------------ main loop
    async def run(self, ctx: Context, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
                  ) -> None:
        self.version = await binary_version(self.binary)
        log.info("pg_repack_resolved", binary=self.binary, version=self.version)
        self._publish_leftovers()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._work_leftovers, ctx)
            task_status.started()
            await self._loop(ctx)

    async def _loop(self, ctx: Context) -> None:
        swept = False
        while True:
            ctx.liveness.beat(NAME)
            cfg = ctx.config.repack
            now = datetime.now(UTC)
            slot = windows.active(cfg.windows, now)
            nxt = windows.next_start(cfg.windows, now)
            self.current_window = f"{slot.start.isoformat()}/{slot.end.isoformat()}" if slot else None
            self.next_window = nxt.start.isoformat() if nxt else None
            start = slot.start if slot else (nxt.start if nxt else None)
            self.metrics.next_window.set(start.timestamp() if start else 0)
            state = ctx.state.current
            if not state.confirmed_primary:
                swept = False
            elif not swept:  # before anything else writes: a run must not race this drop
                await self._leftover_pass(ctx, discover=True)
                swept = True
            if not cfg.enabled:  # a reload turned repacking off: a running table was stopped by its guard
                if not self._disabled_logged:
                    log.info("repack_disabled_by_reload")
                    self._disabled_logged = True
                self.waiting_for = ()
                await self._idle(ctx, IDLE_SLICE)
                continue
            self._disabled_logged = False
            trips = guards.state_trips(state)
            reasons = tuple(t.guard.value for t in trips)
            if slot is not None and reasons != self.waiting_for:
                log.info("repack_waiting" if reasons else "repack_may_run", window_end=slot.end.isoformat(),
                         guards=[t.log_fields() for t in trips])
            self.waiting_for = reasons if slot is not None else ()
            if slot is None or trips:
                until = IDLE_SLICE if nxt is None else (nxt.start - now).total_seconds()
                await self._idle(ctx, max(0.05, min(IDLE_SLICE, until)))
                continue
            w = cfg.windows[slot.index]
            if slot.key in self._exhausted or self._started.get(slot.key, 0) >= w.max_tables_per_window:
                await self._idle(ctx, max(0.05, min(IDLE_SLICE, (slot.end - now).total_seconds())))
                continue
            target = await self._pick(ctx, w, slot)
            if target is None:
                log.info("repack_window_done", window_end=slot.end.isoformat(),
                         tables_started=self._started.get(slot.key, 0))
                self._exhausted.add(slot.key)
                continue
            self._tried.add((slot.key, target.key))
            await self._run_locked(ctx, target, slot)

    async def _idle(self, ctx: Context, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await ctx.state.changed()

    # ------------------------------------------------------------------ leftovers
    def _publish_leftovers(self) -> None:
        self.metrics.leftovers.set(self.pending.count())
        self.metrics.leftover_log_bytes.set(sum(self.log_bytes.get(db, 0) for db in self.pending.tables))

    def _listed(self, database: str, oid: int) -> None:
        """A run's cleanup gave up: the gauge shows it now, the retries start after RETRY_FIRST."""
        if self.pending.set(database, [*self.pending.tables.get(database, []), oid]):
            log.warning("repack_leftovers_pending", database=database, oids=self.pending.tables[database])
        self._publish_leftovers()
        self._wake.set()

    async def _work_leftovers(self, ctx: Context) -> None:
        gap = RETRY_FIRST
        while True:
            with anyio.move_on_after(gap):
                await self._wake.wait()
            if self._wake.is_set():  # a run just listed a table after trying itself: wait a gap
                self._wake = anyio.Event()
                gap = RETRY_FIRST
                continue
            if not self.pending.tables:
                gap = RETRY_FIRST
                continue
            before = self.pending.count()
            await self._leftover_pass(ctx, discover=False)
            gap = RETRY_FIRST if self.pending.count() < before else min(gap * 2, RETRY_MAX)

    async def _leftover_pass(self, ctx: Context, *, discover: bool) -> None:
        async with self._pass_lock:
            await self._leftover_pass_locked(ctx, discover)

    async def _leftover_pass_locked(self, ctx: Context, discover: bool) -> None:
        """One attempt at every listed table (with `discover`, on becoming the confirmed primary,
        at everything found in the window databases: leftovers of a run that died with the agent,
        or that physical replication carried here from the previous primary). On a standby
        nothing can be dropped: the list keeps only what is still there, which is how a drop on
        the primary, replicated here, empties it."""
        primary = ctx.state.current.confirmed_primary
        window_dbs = {d for w in ctx.config.repack.windows for d in w.databases} if discover else set()
        for db in sorted(set(self.pending.tables) | window_dbs):
            listed = set(self.pending.tables.get(db, []))
            try:
                async with await ctx.pg_connect(NAME, db) as conn:
                    left, busy = await cleanup.sweep(conn, deadline=anyio.current_time() + PASS_SECONDS,
                                                     only=None if db in window_dbs else listed, may_drop=primary)
                    keep = left + [o for o in busy if o in listed]  # a live run's tables are not leftovers
                    self.log_bytes[db] = await cleanup.log_bytes(conn, keep) if keep else 0
            except psycopg.errors.InvalidCatalogName:  # the database was dropped, leftovers with it
                keep = []
                left = []
            except psycopg.Error as e:
                log.warning("repack_leftovers_unreadable", database=db, error=str(e).strip()[:200])
                continue
            if left and not listed.issuperset(left):
                log.warning("repack_leftovers_found", database=db, oids=left)
            if self.pending.set(db, keep):
                log.info("repack_leftovers_pending", database=db, oids=keep, log_bytes=self.log_bytes.get(db, 0))
        self._publish_leftovers()

    # ------------------------------------------------------------------ choosing
    async def _pick(self, ctx: Context, w: RepackWindow, slot: windows.Slot) -> candidates.TableFacts | None:
        cfg = ctx.config
        history = History.load(cfg.state_dir / "repack.json")
        now = time.time()
        best: candidates.Assessment | None = None
        assess = candidates.judge(w, cfg.repack, history, now=now, seconds_left=slot.end.timestamp() - now)

        def judge(t: candidates.TableFacts, dbf: candidates.DatabaseFacts) -> candidates.Assessment:
            a = assess(t, dbf)
            return replace(a, skip="tried") if (slot.key, t.key) in self._tried else a

        for db in w.databases:
            ctx.liveness.beat(NAME)
            try:
                async with await ctx.pg_connect(NAME, db) as conn:
                    items = await candidates.survey(conn, db, self.version, judge,
                                                    measure_timeout=float(cfg.repack.measure_timeout),
                                                    beat=lambda: ctx.liveness.beat(NAME))
            except psycopg.Error as e:
                log.warning("repack_candidates_unreadable", database=db, error=str(e).strip()[:200])
                continue
            for a in items:
                if a.facts.approx_failed:
                    log.warning("repack_bloat_measure_failed", database=db, table=a.facts.name,
                                reason=a.facts.approx_failed, timeout_seconds=float(cfg.repack.measure_timeout),
                                estimate_ratio=round(a.bloat, 3))
            log.info("repack_candidates_surveyed", database=db, tables=len(items),
                     measured=sum(a.facts.approx_bloat is not None or bool(a.facts.approx_failed) for a in items),
                     eligible=sum(a.eligible for a in items))
            for a in items:
                key = a.facts.key
                if a.skip or (slot.key, key) in self._tried:
                    continue
                if a.refusals:
                    self._tried.add((slot.key, key))  # logged once per window
                    log.info("repack_table_refused", database=db, table=a.facts.name, reasons=a.refusals,
                             **a.details,
                             bloat_ratio=round(a.bloat, 3), bloat_method=a.method,
                             total_bytes=a.facts.total_bytes,
                             estimated_seconds=candidates.estimated_seconds(a.facts.total_bytes,
                                                                            history.throughput()))
                    continue
                if best is None or a.bloat_bytes > best.bloat_bytes:
                    best = a
        if best is None:
            return None
        f = best.facts
        log.info("repack_table_chosen", database=f.database, table=f.name, bloat_ratio=round(best.bloat, 3),
                 bloat_method=best.method, bloat_bytes=best.bloat_bytes, total_bytes=f.total_bytes,
                 threshold_ratio=w.bloat_ratio)
        return f

    # ------------------------------------------------------------------ running
    async def _run_locked(self, ctx: Context, target: candidates.TableFacts, slot: windows.Slot) -> None:
        lock = self.lock
        try:
            ok, holder = await lock.acquire()
        except Exception as e:
            log.warning("repack_lock_unavailable", key=lock.key, error=str(e)[:200])
            await self._idle(ctx, IDLE_SLICE)
            return
        if not ok:
            log.info("repack_lock_busy", key=lock.key, holder=holder)
            await self._idle(ctx, IDLE_SLICE)
            return
        log.info("repack_lock_acquired", key=lock.key, ttl_seconds=TTL)
        held = True

        async def keepalive() -> None:
            nonlocal held
            while held:
                await anyio.sleep(TTL / 3)
                if not await lock.refresh():
                    held = False

        self._started[slot.key] = self._started.get(slot.key, 0) + 1
        self.running = RunningStatus(database=target.database, table=target.name, since=time.time())
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(keepalive)
                out = await repack_table(ctx, self.metrics, self.binary, target, slot.end.timestamp(),
                                         lambda: held)
                tg.cancel_scope.cancel()
        finally:
            self.running = None
            await lock.release()
        if out.result is None:
            self._started[slot.key] -= 1  # never started: a guard said no
            await self._idle(ctx, IDLE_SLICE)
            return
        if out.leftovers:
            self._listed(target.database, target.oid)
        History.load(ctx.config.state_dir / "repack.json").record(
            target.key, out.result.value, time.time(),
            out.reclaimed_bytes, total_bytes=target.total_bytes, duration=out.duration_seconds)
        self.recent.appendleft(RecentRun(
            database=target.database, table=target.name, result=out.result.value, reason=out.reason,
            reclaimed_bytes=out.reclaimed_bytes, duration_seconds=round(out.duration_seconds, 3),
            guard=out.trip.guard.value if out.trip else None, stop_to_clean_seconds=out.stop_to_clean_seconds,
            leftovers=out.leftovers, at=time.time()))


def components(ctx: Context) -> list[Component]:
    if not ctx.config.repack.enabled:
        return []
    metrics = RepackMetrics(ctx.registry)
    job = RepackJob(metrics, resolve_binary(ctx.config.repack.binary),
                    Pending.load(ctx.config.state_dir / "repack-leftovers.json"),
                    RepackLock(ctx.config.etcd, ctx.config.node.name))
    ctx.status_sections[NAME] = job.status
    return [Component(NAME, job.run)]
