"""`pg-node-agent repack plan`: what the next window would do and what would stop it now.

Read-only: it reads the catalog, pgstattuple_approx and etcd, and changes nothing. There is no
agent NodeState in a one-shot command, so the confirmed-primary guard is evaluated from the same
three sources the agent uses, asked directly: the etcd leader and failover keys, Patroni's
`GET /patroni`, and `pg_is_in_recovery()`; they are folded through the agent's own `reduce`.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime

import anyio
import httpx
import psycopg

from agent.core import pg
from agent.core.config import Config
from agent.core.events import (
    DcsAvailability,
    Event,
    FailoverPending,
    LeaderChanged,
    PatroniObserved,
    PostgresAvailability,
    Role,
)
from agent.core.patroni import parse_patroni
from agent.core.state import NodeState, reduce
from agent.core.tls import patroni_context
from agent.etcd.client import Etcd, EtcdUnavailable
from agent.etcd.keys import Keys, failover_pending
from agent.repack import candidates, guards, windows
from agent.repack.component import binary_version, resolve_binary
from agent.repack.history import History


def _say(line: str = "") -> None:
    sys.stdout.write(line + "\n")


async def _etcd_events(cfg: Config) -> list[Event]:
    """The leader and failover keys and the lock holder, read with the agent's etcd client and
    key layout (the same the watch and the lock use)."""
    etcd, keys = Etcd.from_config(cfg.etcd), Keys(cfg.etcd.namespace, cfg.etcd.scope)
    try:
        leader = await etcd.get(keys.leader)
        failover = await etcd.get(keys.failover)
        holder = await etcd.get(keys.repack_lock)
    except EtcdUnavailable as e:
        return [DcsAvailability(up=False, endpoint="", reason=str(e)[:200])]
    if holder:
        _say(f"repack lock {keys.repack_lock} held by {holder}")
    pending, candidate = failover_pending(failover)
    return [DcsAvailability(up=True, endpoint=etcd.endpoint),
            LeaderChanged(leader=leader or None, previous=None, revision=0),
            FailoverPending(pending=pending, candidate=candidate, revision=0)]


def _patroni_event(cfg: Config) -> Event:
    """GET /patroni read as the agent's own poller reads it."""
    try:
        body = httpx.get(f"{cfg.patroni.url.rstrip('/')}/patroni", timeout=float(cfg.patroni.timeout),
                         verify=patroni_context(cfg.patroni)).json()
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
    except (httpx.HTTPError, ValueError):
        return PatroniObserved(up=False, role=Role.UNKNOWN)
    return parse_patroni(body)


async def _sample(cfg: Config, table: candidates.TableFacts | None, database: str | None) -> guards.Sample | None:
    """The run's own GuardSession: the same queries, bounds and exclusions (None: unreadable)."""
    db = table.database if table else database
    session = guards.GuardSession(lambda: pg.connect(cfg.postgres, "repack-plan", db), table.oid if table else 0,
                                  cfg.repack)
    try:
        return await session.read()
    except (psycopg.Error, TimeoutError, OSError, RuntimeError) as e:
        _say(f"guard sample: cannot read: {str(e).strip()[:200] or type(e).__name__}")
        return None
    finally:
        await session.aclose()


async def _plan(cfg: Config) -> int:
    rc = cfg.repack
    now = datetime.now(UTC)
    slot = windows.active(rc.windows, now)
    nxt = windows.next_start(rc.windows, now)
    _say(f"repack {'enabled' if rc.enabled else 'DISABLED'}; {len(rc.windows)} window(s)")
    if slot is not None:
        _say(f"open window: #{slot.index} {slot.start.isoformat()} .. {slot.end.isoformat()}")
    nxt_text = f"#{nxt.index} {nxt.start.isoformat()} .. {nxt.end.isoformat()}" if nxt else "none"
    _say(f"next window: {nxt_text}")
    try:
        binary = resolve_binary(rc.binary)
        version = await binary_version(binary)
        _say(f"pg_repack: {binary} ({version})")
    except Exception as e:
        _say(f"pg_repack: {e}")
        version = None

    events: list[Event] = [*await _etcd_events(cfg),
                           await anyio.to_thread.run_sync(_patroni_event, cfg)]
    history = History.load(cfg.state_dir / "repack.json")
    first: candidates.Assessment | None = None
    shown = slot or nxt
    w = rc.windows[shown.index] if shown is not None else None
    seconds_left = (shown.end - max(now, shown.start)).total_seconds() if shown is not None else None
    rate = history.throughput()
    _say(f"throughput of this node's recent runs: {rate / 1048576:.1f} MiB/s (a table is refused when "
         f"size / throughput x {candidates.DURATION_MARGIN} exceeds the window's time left)" if rate else
         "throughput: no earlier run on this node, so no duration estimate yet")
    try:
        async with await pg.connect(cfg.postgres, "repack-plan") as conn:
            row = await (await conn.execute("SELECT pg_is_in_recovery() AS r")).fetchone()
            events.append(PostgresAvailability(up=True, in_recovery=bool(row["r"]) if row else None))
    except psycopg.Error as e:
        events.append(PostgresAvailability(up=False, reason=str(e).strip()[:200]))
    state = NodeState(member=cfg.node.name)
    for ev in events:
        state = reduce(state, ev)

    if w is not None:
        judge = candidates.judge(w, rc, history, now=time.time(), seconds_left=seconds_left)
        for db in w.databases:
            _say(f"\ndatabase {db}:")
            try:
                async with await pg.connect(cfg.postgres, "repack-plan", db) as conn:
                    items = await candidates.survey(conn, db, version, judge,
                                                    measure_timeout=float(rc.measure_timeout), beat=lambda: None)
                    for a in items:
                        if a.skip in ("excluded",):
                            continue
                        verdict = "WOULD REPACK" if a.eligible else f"skip ({a.skip})" if a.skip else ""
                        if a.refusals:
                            verdict = f"{verdict}; REFUSED ({', '.join(a.refusals)})".lstrip("; ")
                        _say(f"  {a.facts.name:<40} {a.facts.total_bytes / 1048576:10.1f} MiB  "
                             f"bloat {a.bloat:6.1%} ({a.method})  {verdict}")
                        for k, v in a.details.items():
                            _say(f"  {'':<40} {k}: {', '.join(v) if isinstance(v, list) else v}")
                        if a.eligible and first is None:
                            first = a
            except psycopg.Error as e:
                _say(f"  cannot read: {str(e).strip()}")
    # the guards as the run evaluates them before its start, on the table it would start with
    sample = await _sample(cfg, first.facts if first else None, w.databases[0] if w and w.databases else None)
    end = (slot.end if slot else nxt.end if nxt else now).timestamp()
    trips = guards.evaluate(rc, state, sample, table_bytes=first.facts.total_bytes if first else 0,
                            window_end=end if slot else float("inf"), now=time.time(), running=False,
                            lock_held=True)
    _say(f"\nnode: role={state.role.value} leader={state.leader} confirmed_primary={state.confirmed_primary} "
         f"failover_pending={state.failover_pending} paused={state.paused} dcs_up={state.dcs_up}")
    if slot is None:
        _say("a run now: not started (outside every window)")
    if trips:
        for t in trips:
            _say("guard would stop a run now: " + " ".join(f"{k}={v}" for k, v in t.log_fields().items()))
        return 1
    _say("no guard would stop a run now")
    return 0


def main(cfg: Config) -> int:
    """Exit 0 when no guard would stop a run now, 1 otherwise."""
    return anyio.run(_plan, cfg, backend="asyncio")

