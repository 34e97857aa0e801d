"""One guarded pg_repack run of one table.

pg_repack gets an argv list over the local socket, always `--no-kill-backend` and a short
`--wait-timeout`, with `PGOPTIONS=-c lock_timeout=…` so its cleanup cannot queue without bound,
and `PGAPPNAME=pg_repack` (its vxid wait recognises other runs by that name). While it runs, the
node state, window, lock and config are re-checked at once on a NodeState change and four times a
second, the SQL figures every second. A trip (or `enabled = false` by a reload) sends SIGINT (the
only signal pg_repack cleans up after), SIGKILL after the grace period, then drops whatever is left
— also when the agent itself is stopped (a cancellation of this task), under a shielded deadline.
What a cleanup cannot drop is reported in the Outcome; the component lists it for retries.

Exit 0 does not mean repacked: the result comes from the catalog (did the relfilenode change?),
read on a fresh session after the run, and from the WARNINGs pg_repack printed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import psycopg
import structlog
from psycopg import sql

from agent.core import pg, proc
from agent.core.context import Context
from agent.core.events import RepackFinished, RepackStarted
from agent.repack import cleanup, guards
from agent.repack.candidates import TableFacts
from agent.repack.guards import Sample, Trip
from agent.repack.metrics import RepackMetrics, RepackResult

log = structlog.get_logger("repack")

MAX_LOGGED_LINES = 200   # 1.4.8 printed 50k+ lines before a segfault: the log gets the first ones
SAMPLE_FAILURES_TO_TRIP = 3

_TIMEOUT = re.compile(r"Skipping repack .* due to timeout")
_NO_KEY = "must have a primary key or not-null unique keys"
_HAS_TRIGGER = "already has a trigger called"
_BUSY = "Another pg_repack command may be running"


def classify(lines: list[str], returncode: int | None, filenode_changed: bool,
             aborted: bool) -> tuple[RepackResult, str]:
    """The run's result and a short reason, from what pg_repack said and what the catalog shows."""
    if aborted:
        return RepackResult.ABORTED, "guard"
    if filenode_changed:
        return RepackResult.SUCCESS, ""
    text = "\n".join(lines)
    if _TIMEOUT.search(text):
        return RepackResult.SKIPPED_LOCK_TIMEOUT, "wait_timeout"
    if _NO_KEY in text:
        return RepackResult.REFUSED, "no_primary_key"
    if _HAS_TRIGGER in text:
        return RepackResult.REFUSED, "leftover_trigger"
    if _BUSY in text:
        return RepackResult.SKIPPED, "another_pg_repack_running"
    errors = [ln for ln in lines if ln.startswith(("ERROR", "FATAL"))]
    if errors or returncode != 0:
        return RepackResult.FAILED, (errors[0] if errors else f"exit_{returncode}")[:200]
    return RepackResult.SKIPPED, "not_rebuilt"


def argv(binary: str, wait_timeout: float, qualified_table: str, database: str) -> list[str]:
    return [binary, "--no-kill-backend", f"--wait-timeout={max(1, round(wait_timeout))}",
            "-t", qualified_table, "-d", database]


@dataclass
class Outcome:
    result: RepackResult | None      # None: not started (a guard tripped before the start)
    reason: str = ""
    trip: Trip | None = None
    returncode: int | None = None
    reclaimed_bytes: int = 0
    duration_seconds: float = 0.0
    stop_to_clean_seconds: float | None = None
    leftovers: int = 0
    lines: list[str] = field(default_factory=list)


REL_SQL = """
SELECT pg_relation_filenode(%(oid)s::oid)::bigint AS filenode,
       pg_total_relation_size(%(oid)s::oid) AS total_bytes
"""


async def _rel(conn: psycopg.AsyncConnection[dict[str, Any]], oid: int) -> dict[str, Any]:
    row = await (await conn.execute(REL_SQL, {"oid": oid})).fetchone()
    if row is None:
        raise RuntimeError("query returned no row")
    return row


class Run:
    """State of one run, so the guard loop, the output pump and the cleanup share it."""

    def __init__(self, ctx: Context, metrics: RepackMetrics, binary: str, target: TableFacts, window_end: float,
                 lock_ok: Callable[[], bool]) -> None:
        self.ctx = ctx
        self.metrics = metrics
        self.binary = binary
        self.t = target
        self.window_end = window_end
        self.lock_ok = lock_ok
        self.lines: list[str] = []
        self.logged = 0
        self.last_sample: Sample | None = None
        self.sample_failures = 0
        self.log = log.bind(database=target.database, table=target.name)

    # ---------------------------------------------------------------- guards
    def fast_trips(self) -> list[Trip]:
        return guards.fast_trips(self.ctx.config.repack, self.ctx.state.current, window_end=self.window_end,
                                 now=time.time(), lock_held=self.lock_ok())

    async def sampled_trips(self, session: guards.GuardSession, running: bool) -> list[Trip]:
        try:
            self.last_sample = await session.read()
            self.sample_failures = 0
        except (psycopg.Error, TimeoutError, OSError, RuntimeError) as e:
            self.sample_failures += 1
            self.log.warning("repack_guard_sample_failed", error=str(e).strip()[:200] or type(e).__name__,
                             failures=self.sample_failures)
        sample = self.last_sample if self.sample_failures < SAMPLE_FAILURES_TO_TRIP else None
        return guards.evaluate(self.ctx.config.repack, self.ctx.state.current, sample,
                               table_bytes=self.t.total_bytes, window_end=self.window_end, now=time.time(),
                               running=running, lock_held=self.lock_ok())

    def _trip(self, trip: Trip, phase: str) -> None:
        self.metrics.guard_trips.labels(trip.guard.value).inc()
        self.log.warning("repack_guard_tripped", phase=phase, **trip.log_fields())

    # ---------------------------------------------------------------- output
    def _line(self, line: str) -> None:
        line = line.rstrip()
        if not line:
            return
        if len(self.lines) < 10 * MAX_LOGGED_LINES:  # kept for classification; markers come early
            self.lines.append(line)
        if self.logged < MAX_LOGGED_LINES:
            self.log.info("pg_repack_output", line=line[:500])
        elif self.logged == MAX_LOGGED_LINES:
            self.log.warning("pg_repack_output_capped", logged_lines=MAX_LOGGED_LINES)
        self.logged += 1

    # ---------------------------------------------------------------- the run
    async def execute(self) -> Outcome:
        rc = self.ctx.config.repack
        session = guards.GuardSession(lambda: self.ctx.pg_connect("repack", self.t.database), self.t.oid, rc)
        try:
            trips = self.fast_trips() or await self.sampled_trips(session, running=False)
            if trips:
                for tr in trips:
                    self._trip(tr, "before_start")
                return Outcome(None, "guard", trips[0])
            return await self._run(session)
        finally:
            await session.aclose()

    async def _run(self, session: guards.GuardSession) -> Outcome:
        cfg = self.ctx.config
        rc = cfg.repack
        async with await self.ctx.pg_connect("repack", self.t.database) as conn:
            before = await _rel(conn, self.t.oid)
            qualified = sql.Identifier(self.t.schema, self.t.table).as_string(conn)
        cmd = argv(self.binary, rc.wait_timeout, qualified, self.t.database)
        env = {**os.environ,
               **pg.subprocess_env(cfg.postgres, "pg_repack", cfg.state_dir, self.t.database),
               "PGOPTIONS": f"-c lock_timeout={int(rc.lock_timeout * 1000)}", "PGAPPNAME": "pg_repack"}
        self.log.info("repack_started", argv=cmd, total_bytes=before["total_bytes"],
                      filenode=before["filenode"], wait_timeout_seconds=float(rc.wait_timeout))
        self.ctx.publish(RepackStarted(table=self.t.name, database=self.t.database))
        self.metrics.running.set(1)
        started = anyio.current_time()
        trip: Trip | None = None
        stopped_at: float | None = None
        p = await anyio.open_process(cmd, env=env, start_new_session=True, stdin=subprocess.DEVNULL)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(proc.pump_lines, p.stderr, self._line)
                tg.start_soon(proc.pump_lines, p.stdout, self._line)
                trip = await self._watch(p, session)
                if trip is not None:
                    stopped_at = anyio.current_time()
                    self._trip(trip, "running")
                    await proc.stop(p, signal.SIGINT, float(rc.grace))
                await p.wait()
        finally:
            # also on cancellation (agent stopping): SIGINT first, never the SIGKILL anyio would send
            deadline = anyio.current_time() + float(rc.cleanup_timeout)
            with anyio.CancelScope(shield=True, deadline=deadline):
                if p.returncode is None:
                    stopped_at = anyio.current_time()
                    self.log.warning("repack_stopping", reason="agent_stopping")
                    await proc.stop(p, signal.SIGINT, float(rc.grace))
                self.metrics.running.set(0)
                leftovers = await self._cleanup(killed=p.returncode == -signal.SIGKILL)
                await p.aclose()
        clean_seconds = anyio.current_time() - stopped_at if stopped_at is not None else None
        after = await self._rel_fresh()
        changed = after is not None and after["filenode"] != before["filenode"]
        # a trip that raced pg_repack's own successful exit does not undo the rewrite
        result, reason = classify(self.lines, p.returncode, changed, aborted=trip is not None and not changed)
        reclaimed = max(0, int(before["total_bytes"]) - int(after["total_bytes"])) if after and changed else 0
        return Outcome(result, reason, trip, p.returncode, reclaimed, anyio.current_time() - started,
                       clean_seconds, leftovers, self.lines)

    async def _rel_fresh(self) -> dict[str, Any] | None:
        """The outcome, read on a session of its own: the guard session may have been cut off."""
        try:
            async with await self.ctx.pg_connect("repack", self.t.database) as conn:
                return await _rel(conn, self.t.oid)
        except psycopg.Error as e:
            self.log.warning("repack_outcome_unreadable", error=str(e).strip()[:200])
            return None

    async def _watch(self, p: anyio.abc.Process, session: guards.GuardSession) -> Trip | None:
        """Return the first guard trip, or None once pg_repack has exited by itself. The node state
        (and a reload) is checked at once on every change and four times a second, beside the SQL
        samples, so a slow sample never delays a stop; a sample is abandoned only when the run is over."""
        trip: Trip | None = None
        async with anyio.create_task_group() as tg:
            async def exited() -> None:
                await p.wait()
                tg.cancel_scope.cancel()

            async def fast() -> None:
                nonlocal trip
                while True:
                    self.ctx.liveness.beat("repack")
                    if trips := self.fast_trips():
                        trip = trips[0]
                        tg.cancel_scope.cancel()
                        return
                    with anyio.move_on_after(0.25):
                        await self.ctx.state.changed()

            async def sampled() -> None:
                nonlocal trip
                while True:
                    trips = await self.sampled_trips(session, running=True)
                    if trips and p.returncode is None:
                        trip = trips[0]
                        tg.cancel_scope.cancel()
                        return
                    await anyio.sleep(1.0)

            tg.start_soon(exited)
            tg.start_soon(fast)
            tg.start_soon(sampled)
        return trip

    async def _cleanup(self, killed: bool) -> int:
        """Drop this table's leftovers on a fresh session (the guard session may have been cut off
        mid-query). If pg_repack was SIGKILLed its backends may still be busy (a copy runs to the end
        of its statement): cancel those, they are our child's sessions, never a client's."""
        rc = self.ctx.config.repack
        deadline = anyio.current_time() + float(rc.cleanup_timeout) - 0.5
        try:
            async with await self.ctx.pg_connect("repack", self.t.database) as conn:
                while True:
                    pids = await cleanup.busy_pids(conn, self.t.oid)
                    if not pids or anyio.current_time() >= deadline:
                        break
                    if killed:
                        await conn.execute("SELECT pg_cancel_backend(pid) FROM unnest(%s::int[]) AS pid",
                                           (pids,))
                    await anyio.sleep(0.1)
                left, busy = await cleanup.sweep(conn, deadline=deadline, only={self.t.oid})
        except psycopg.Error as e:
            self.log.error("repack_cleanup_failed", error=str(e).strip()[:300])
            return 1
        remaining = len(left) + len(busy)
        if remaining:
            self.log.error("repack_leftovers_remain", count=remaining)
        return remaining


async def repack_table(ctx: Context, metrics: RepackMetrics, binary: str, target: TableFacts, window_end: float,
                       lock_ok: Callable[[], bool]) -> Outcome:
    run = Run(ctx, metrics, binary, target, window_end, lock_ok)
    out = await run.execute()
    if out.result is None:
        return out
    metrics.runs.labels(out.result.value).inc()
    metrics.duration.set(out.duration_seconds)
    if out.reclaimed_bytes:
        metrics.reclaimed.inc(out.reclaimed_bytes)
    fields: dict[str, Any] = {"result": out.result.value, "reason": out.reason, "returncode": out.returncode,
                              "reclaimed_bytes": out.reclaimed_bytes, "leftovers": out.leftovers,
                              "duration_seconds": round(out.duration_seconds, 3)}
    if out.trip is not None:
        fields.update(out.trip.log_fields())
    if out.stop_to_clean_seconds is not None:
        fields["stop_to_clean_seconds"] = round(out.stop_to_clean_seconds, 3)
    run.log.info("repack_finished", **fields)
    ctx.publish(RepackFinished(table=target.name, database=target.database, result=out.result.value,
                               reclaimed_bytes=out.reclaimed_bytes))
    return out
