"""pg_repack 1.4.8 on a real PostgreSQL 15, driven by the repack component with a NodeState the
test controls (a standalone server has no Patroni): repack, a guard trip mid-run, a lock held by a
client. Every test asserts that no client session was cancelled or terminated."""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import structlog
from prometheus_client import CollectorRegistry
from repack_lab import LEFTOVERS
from testlab.postgres import PgInstance

from agent.core.config import parse
from agent.core.context import Context
from agent.core.events import (
    DcsAvailability,
    FailoverPending,
    LeaderChanged,
    PatroniObserved,
    PostgresAvailability,
    Role,
)
from agent.lab.etcd import Etcd
from agent.lab.procs import await_until, children
from agent.repack import plan
from agent.repack.component import components

_dbs = itertools.count(1)
ROWS = 200_000
ABORT_TIMES: list[float] = []

TRIGGER = "SELECT 1 FROM pg_trigger WHERE tgname = 'repack_trigger'"


def q(pg: PgInstance, db: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with pg.connect(db) as conn, conn.cursor() as cur:
        cur.execute(sql.encode(), params)
        return cur.fetchall() if cur.description is not None else []


@pytest.fixture
def db(pg15: PgInstance) -> Iterator[str]:
    """A database of its own with a bloated table: 200k rows, 70 % deleted, vacuumed."""
    name = f"repack_{next(_dbs)}"
    pg15.psql(f"CREATE DATABASE {name}")
    q(pg15, name, "CREATE EXTENSION pg_repack")
    q(pg15, name, "CREATE EXTENSION pgstattuple")
    q(pg15, name, "CREATE TABLE tbl (id int PRIMARY KEY, payload text, ts timestamptz DEFAULT now())")
    q(pg15, name, "CREATE INDEX ON tbl (ts)")
    q(pg15, name, "CREATE TABLE other (id int)")
    q(pg15, name, f"INSERT INTO tbl (id, payload) SELECT i, md5(i::text) FROM generate_series(1, {ROWS}) i")
    q(pg15, name, "DELETE FROM tbl WHERE id % 10 < 7")
    q(pg15, name, "VACUUM ANALYZE tbl")
    yield name
    with pg15.connect() as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


def make_ctx(pg: PgInstance, etcd: Etcd, db: str, state_dir: Path, *, window: dict[str, Any] | None = None,
             **repack: Any) -> Context:
    """An agent context whose one window is open now over `db` (`window` overrides its keys)."""
    cfg = parse({
        "node": {"name": "n1", "state_dir": str(state_dir)},
        "etcd": {"endpoints": [etcd.url], "scope": db},
        "postgres": {"host": str(pg.socket_dir), "port": pg.port, "dbname": db},
        "repack": {"enabled": True, "wait_timeout": "2s", "grace": "1s", **repack,
                   "windows": [{"cron": "0 * * * *", "duration": "2h", "databases": [db],
                                "min_table_bytes": 0, "bloat_ratio": 0.3, **(window or {})}]},
    })
    return Context.create(cfg, CollectorRegistry())


async def logged(logs: Sequence[Mapping[str, Any]], *events: str, within: float = 60) -> Mapping[str, Any]:
    """The first of these events in logs a `structlog.testing.capture_logs` is filling, waited for."""
    with anyio.fail_after(within):
        while not (found := [e for e in logs if e["event"] in events]):
            await anyio.sleep(0.05)
    return found[0]


def confirm_primary(ctx: Context) -> None:
    ctx.publish(DcsAvailability(up=True, endpoint="lab"))
    ctx.publish(LeaderChanged(leader="n1", previous=None, revision=1))
    ctx.publish(PatroniObserved(up=True, role=Role.PRIMARY))
    ctx.publish(PostgresAvailability(up=True, in_recovery=False))
    assert ctx.state.current.confirmed_primary


async def recent(ctx: Context, within: float) -> dict[str, Any]:
    def first() -> dict[str, Any] | None:
        r = ctx.status_sections["repack"]()["recent"]
        return r[0] if r else None

    with anyio.fail_after(within):
        while (got := first()) is None:
            await anyio.sleep(0.05)
    return got


def client_killed(pg: PgInstance, pid: int, log_from: int) -> list[str]:
    text = pg.log_path.read_bytes()[log_from:].decode(errors="replace")
    pat = re.compile(r"canceling statement due to user request|terminating connection due to administrator")
    return [ln for ln in text.splitlines() if f"[{pid}]" in ln and pat.search(ln)]


@pytest.fixture
def ctx(pg15: PgInstance, etcd: Etcd, db: str, tmp_path: Path) -> Context:
    return make_ctx(pg15, etcd, db, tmp_path)


@asynccontextmanager
async def started(ctx: Context) -> AsyncIterator[Context]:
    """The repack component in a task group of the test's own task, cancelled on the way out
    (which is also how the agent's SIGTERM reaches it)."""
    (comp,) = components(ctx)
    async with anyio.create_task_group() as tg:
        await tg.start(comp.run, ctx)  # type: ignore[arg-type]
        yield ctx
        tg.cancel_scope.cancel()


def any_client_killed(pg: PgInstance, log_from: int) -> list[str]:
    """Any session terminated at all (pg_repack's own cancel after SIGINT is not a client's)."""
    text = pg.log_path.read_bytes()[log_from:].decode(errors="replace")
    return [ln for ln in text.splitlines() if "terminating connection due to administrator" in ln]


def filenode(pg: PgInstance, db: str) -> tuple[int, int]:
    (row,) = q(pg, db, "SELECT pg_relation_filenode('tbl'), pg_total_relation_size('tbl')")
    return int(row[0]), int(row[1])


async def test_bloated_table_in_a_window_on_the_primary_is_repacked(pg15: PgInstance, db: str,
                                                                      ctx: Context) -> None:
    log_from = pg15.log_path.stat().st_size
    node_before, size_before = filenode(pg15, db)
    async with started(ctx):
        confirm_primary(ctx)
        out = await recent(ctx, 60)
    node_after, size_after = filenode(pg15, db)
    assert out["result"] == "success", out
    assert node_after != node_before
    assert size_after < size_before * 0.6
    assert out["reclaimed_bytes"] == size_before - size_after
    assert q(pg15, db, LEFTOVERS)[0][0] == 0
    reg = ctx.registry
    assert reg.get_sample_value("pgnode_repack_runs_total", {"result": "success"}) == 1
    assert reg.get_sample_value("pgnode_repack_reclaimed_bytes_total") == size_before - size_after
    assert reg.get_sample_value("pgnode_repack_running") == 0
    assert (ctx.config.state_dir / "repack.json").exists()
    assert not any_client_killed(pg15, log_from)
    print(f"reclaimed: {size_before} -> {size_after} bytes ({size_before - size_after})")  # noqa: T201


async def test_nothing_starts_on_a_node_that_is_not_a_confirmed_primary(pg15: PgInstance, db: str,
                                                                         ctx: Context) -> None:
    node_before, _ = filenode(pg15, db)
    async with started(ctx):
        ctx.publish(DcsAvailability(up=True, endpoint="lab"))
        ctx.publish(LeaderChanged(leader="n2", previous=None, revision=1))
        ctx.publish(PatroniObserved(up=True, role=Role.REPLICA))
        with anyio.fail_after(10):
            while "confirmed_primary" not in ctx.status_sections["repack"]()["waiting_for"]:
                await anyio.sleep(0.05)
        assert filenode(pg15, db)[0] == node_before
        assert ctx.status_sections["repack"]()["recent"] == []
        assert not q(pg15, db, "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_repack'")


@pytest.mark.parametrize("attempt", range(5))
async def test_failover_key_mid_run_stops_pg_repack_and_cleans_up_within_2s(
        pg15: PgInstance, db: str, ctx: Context, attempt: int) -> None:
    log_from = pg15.log_path.stat().st_size
    # An open transaction (on another table) makes pg_repack wait after its copy, "forever":
    # the run is reliably still going when the trigger exists, whatever the machine's speed.
    blocker = psycopg.connect(pg15.conninfo.replace("dbname=postgres", f"dbname={db}"))
    blocker.execute("INSERT INTO other VALUES (1)")
    blocker_pid = blocker.info.backend_pid
    try:
        async with started(ctx):
            confirm_primary(ctx)
            await await_until(lambda: q(pg15, db, TRIGGER),
                              30, "repack_trigger on tbl", interval=0.02)
            t0 = time.monotonic()
            ctx.publish(FailoverPending(pending=True, candidate="n2", revision=2))
            await await_until(lambda: q(pg15, db, LEFTOVERS)[0][0] == 0 and not q(
                pg15, db, "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_repack'"),
                5, "pg_repack stopped and cleaned", interval=0.02)
            elapsed = time.monotonic() - t0
            ABORT_TIMES.append(elapsed)
            out = await recent(ctx, 10)
        assert elapsed < 2.0
        assert out["result"] == "aborted" and out["guard"] == "failover_pending", out
        assert out["leftovers"] == 0
        trips = ctx.registry.get_sample_value("pgnode_repack_guard_trips_total",
                                              {"guard": "failover_pending"})
        assert trips == 1
        blocker.commit()  # the client's transaction survived
        assert not client_killed(pg15, blocker_pid, log_from)
    finally:
        blocker.close()
        if ABORT_TIMES:
            s = sorted(ABORT_TIMES)
            print(f"abort-to-clean: n={len(s)} p50={s[len(s) // 2]:.3f}s max={s[-1]:.3f}s "  # noqa: T201
                  f"all={[round(x, 3) for x in s]} stop_to_clean={out.get('stop_to_clean_seconds')}")


async def test_client_holding_a_lock_is_never_killed_and_the_run_is_skipped(
        pg15: PgInstance, db: str, ctx: Context) -> None:
    log_from = pg15.log_path.stat().st_size
    node_before, _ = filenode(pg15, db)
    client = psycopg.connect(pg15.conninfo.replace("dbname=postgres", f"dbname={db}"))
    client.execute("SELECT count(*) FROM tbl")  # holds ACCESS SHARE until commit
    pid = client.info.backend_pid
    try:
        async with started(ctx):
            confirm_primary(ctx)
            out = await recent(ctx, 60)
        assert out["result"] == "skipped_lock_timeout", out
        assert filenode(pg15, db)[0] == node_before
        assert q(pg15, db, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,))
        client.commit()
        assert client.execute("SELECT 1").fetchone() == (1,)
        assert not client_killed(pg15, pid, log_from)
        assert not any_client_killed(pg15, log_from)
        assert q(pg15, db, LEFTOVERS)[0][0] == 0
    finally:
        client.close()


def _pg_repack_pid() -> int | None:
    for pid in children(os.getpid()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "pg_repack":
                return pid
        except OSError:
            continue
    return None


async def test_kill_9_of_pg_repack_mid_copy_leaves_nothing_behind(pg15: PgInstance, db: str,
                                                                   ctx: Context) -> None:
    log_from = pg15.log_path.stat().st_size
    blocker = psycopg.connect(pg15.conninfo.replace("dbname=postgres", f"dbname={db}"))
    blocker.execute("INSERT INTO other VALUES (1)")  # keeps pg_repack in its run after the trigger exists
    try:
        async with started(ctx):
            confirm_primary(ctx)
            await await_until(lambda: q(pg15, db, TRIGGER),
                              30, "repack_trigger on tbl", interval=0.02)
            pid = _pg_repack_pid()
            assert pid is not None
            t0 = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            out = await recent(ctx, 10)
            elapsed = time.monotonic() - t0
        assert q(pg15, db, LEFTOVERS)[0][0] == 0
        assert out["leftovers"] == 0 and out["result"] == "failed", out
        assert elapsed < 2.0
        blocker.commit()
        assert not any_client_killed(pg15, log_from)
    finally:
        blocker.close()


async def test_agent_stop_mid_run_stops_pg_repack_with_sigint_and_cleans_up(pg15: PgInstance, db: str,
                                                                            ctx: Context) -> None:
    blocker = psycopg.connect(pg15.conninfo.replace("dbname=postgres", f"dbname={db}"))
    blocker.execute("INSERT INTO other VALUES (1)")
    try:
        with structlog.testing.capture_logs() as logs:
            async with started(ctx):  # leaving it cancels the component, like SIGTERM does
                confirm_primary(ctx)
                await await_until(lambda: q(pg15, db, TRIGGER),
                                  30, "repack_trigger on tbl", interval=0.02)
        # the cleanup ran shielded before the task group let go: nothing left, nothing running
        assert q(pg15, db, LEFTOVERS)[0][0] == 0
        assert not q(pg15, db, "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_repack'")
        assert any(e["event"] == "repack_stopping" and e["reason"] == "agent_stopping" for e in logs)
        blocker.commit()
    finally:
        blocker.close()


def test_plan_lists_candidates_and_refusals_and_names_the_guard_that_would_stop_a_run(
        pg15: PgInstance, db: str, ctx: Context, capsys: pytest.CaptureFixture[str]) -> None:
    node_before, _ = filenode(pg15, db)
    rc = plan.main(ctx.config)  # no Patroni answers here, so this node is not a confirmed primary
    out = capsys.readouterr().out
    assert rc == 1
    assert re.search(r"public\.tbl .* bloat .*pgstattuple_approx.*WOULD REPACK", out), out
    assert re.search(r"public\.other .*REFUSED \(no_primary_key\)", out), out
    assert "guard would stop a run now: guard=confirmed_primary" in out
    assert filenode(pg15, db)[0] == node_before  # changed nothing


@pytest.mark.parametrize("namespace", ["/service", "service", "/service/"])
def test_plan_reads_the_leader_and_lock_keys_where_patroni_and_the_agent_write_them(
        pg15: PgInstance, etcd: Etcd, db: str, ctx: Context, namespace: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Patroni writes `/service/<scope>/leader` however its namespace is spelled; so does the
    leader watch (agent.cluster.keys). `repack plan` must read the same keys, not its own."""
    cfg = dataclasses.replace(ctx.config, etcd=dataclasses.replace(ctx.config.etcd, namespace=namespace))
    etcd.put(f"/service/{db}/leader", "n1")
    etcd.put(f"/service/{db}/pg-node-agent/repack-lock", "n2")
    try:
        plan.main(cfg)
        out = capsys.readouterr().out
    finally:
        etcd.delete(f"/service/{db}/leader")
        etcd.delete(f"/service/{db}/pg-node-agent/repack-lock")
    assert " leader=n1 " in out, out
    assert f"repack lock /service/{db}/pg-node-agent/repack-lock held by n2" in out, out
