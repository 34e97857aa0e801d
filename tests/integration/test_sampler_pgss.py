"""pg_stat_statements source on a real PostgreSQL 15 under a counted workload."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry
from testlab.postgres import PgInstance

from agent.core import config as config_mod
from agent.core.context import Context
from agent.sampler.component import Sampler, components


def make_ctx(pg: PgInstance, state_dir: Path) -> Context:
    cfg = config_mod.parse(
        {
            "node": {"name": "n1", "state_dir": str(state_dir)},
            "etcd": {"scope": "s"},
            "postgres": {"host": str(pg.socket_dir), "port": pg.port, "user": "postgres", "dbname": "pgss_t"},
            "sampler": {
                "source": "pg_stat_statements",
                "interval": "200ms",
                "top_n": 1000,
                "labels": ["datname"],
            },
        }
    )
    return Context.create(cfg, CollectorRegistry())


@pytest.fixture
def pgss_db(pg15: PgInstance) -> str:
    with pg15.connect() as admin:
        admin.execute("DROP DATABASE IF EXISTS pgss_t WITH (FORCE)")
        admin.execute("CREATE DATABASE pgss_t")
    with pg15.connect("pgss_t") as c:
        c.execute("CREATE EXTENSION pg_stat_statements")
        c.execute("CREATE TABLE sampler_probe (x int)")
    return "pgss_t"


def workload(pg: PgInstance, inserts: int, selects: int) -> tuple[str, str]:
    with pg.connect("pgss_t") as c:
        for i in range(inserts):
            c.execute("INSERT INTO sampler_probe VALUES (%s)", (i,))
        for _ in range(selects):
            c.execute("SELECT count(*) FROM sampler_probe WHERE x > %s", (0,))
        rows = c.execute(
            "SELECT queryid::text, query FROM pg_stat_statements "
            "WHERE query LIKE '%sampler_probe%' AND query NOT LIKE 'CREATE%'"
        ).fetchall()
    ids = {("insert" if q.startswith("INSERT") else "select"): qid for qid, q in rows}
    return ids["insert"], ids["select"]


async def run_sampler_until(ctx: Context, done: Callable[[Sampler], bool]) -> Sampler:
    """The sampler's real run loop, in a task group of the test, until `done(sampler)` (10 s at most)."""
    (comp,) = components(ctx)
    sampler: Sampler = comp.run.__self__  # type: ignore[attr-defined]
    ctx.liveness.register("sampler")
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            await tg.start(comp.run, ctx)
        with anyio.fail_after(10):
            while not done(sampler):
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    return sampler


def calls(ctx: Context, qid: str) -> float:
    return (
        ctx.cached_metrics[0].registry.get_sample_value("pgnode_query_calls_total", {"queryid": qid, "datname": "pgss_t"})
        or 0.0
    )


async def test_counted_statements_increase_counters_exactly_across_reset_and_restart(
    pg15: PgInstance, pgss_db: str, tmp_path: Path
) -> None:
    ctx = make_ctx(pg15, tmp_path)
    (comp,) = components(ctx)
    sampler: Sampler = comp.run.__self__  # type: ignore[attr-defined]
    workload(pg15, 3, 3)  # create the entries; the first read primes on them
    conn = await sampler.open(ctx)
    try:
        await sampler.step(ctx, conn)
        ins, sel = workload(pg15, 137, 41)
        await sampler.step(ctx, conn)
        assert (calls(ctx, ins), calls(ctx, sel)) == (137, 41)
        # global reset, then fewer calls than before: no negative, no lost increments after it
        with pg15.connect("pgss_t") as c:
            c.execute("SELECT pg_stat_statements_reset()")
        workload(pg15, 20, 5)
        await sampler.step(ctx, conn)
        assert (calls(ctx, ins), calls(ctx, sel)) == (157, 46)
        assert sampler.health.source_resets.get("stats_reset") == 1
    finally:
        await conn.close()
    # agent restart: state restored, no double count
    ctx2 = make_ctx(pg15, tmp_path)
    (comp2,) = components(ctx2)
    s2: Sampler = comp2.run.__self__  # type: ignore[attr-defined]
    workload(pg15, 10, 0)
    conn = await s2.open(ctx2)
    try:
        await s2.step(ctx2, conn)
    finally:
        await conn.close()
    assert calls(ctx2, ins) == 167


async def test_run_loop_survives_a_missing_database_and_reports_started(
    pg15: PgInstance, tmp_path: Path
) -> None:
    ctx = make_ctx(pg15, tmp_path)
    ctx.config = config_mod.parse(
        {
            "node": {"name": "n1", "state_dir": str(tmp_path)},
            "etcd": {"scope": "s"},
            "postgres": {
                "host": str(pg15.socket_dir),
                "port": pg15.port,
                "user": "postgres",
                "dbname": "no_such_db",
            },
            "sampler": {"interval": "200ms"},
        }
    )
    sampler = await run_sampler_until(ctx, lambda s: s.health.postgres_outages >= 1)
    assert sampler.health.postgres_outages == 1  # logged and counted once, not per retry


async def test_a_read_refused_by_postgresql_is_not_an_outage_and_shows_why(
    pg15: PgInstance, pgss_db: str, tmp_path: Path
) -> None:
    """A role without the right to read pg_stat_statements_info: PostgreSQL answers, the read fails."""
    pw = tmp_path / "pw"
    pw.write_text("s4mpler\n")
    pw.chmod(0o600)
    with pg15.connect("pgss_t") as c:
        c.execute("DROP ROLE IF EXISTS sampler_ro")
        c.execute("CREATE ROLE sampler_ro LOGIN PASSWORD 's4mpler'")
        c.execute("REVOKE SELECT ON pg_stat_statements_info FROM PUBLIC")
    try:
        ctx = make_ctx(pg15, tmp_path)
        ctx.config = config_mod.parse({
            "node": {"name": "n1", "state_dir": str(tmp_path)}, "etcd": {"scope": "s"},
            "postgres": {"host": "127.0.0.1", "port": pg15.port, "user": "sampler_ro", "dbname": "pgss_t",
                         "password_file": str(pw)},
            "sampler": {"source": "pg_stat_statements", "interval": "200ms"}})
        sampler = await run_sampler_until(ctx, lambda s: bool(s.unavailable))
        assert sampler.unavailable is not None
        assert sampler.unavailable.startswith("InsufficientPrivilege"), sampler.unavailable
        assert "pg_stat_statements_info" in sampler.unavailable
        assert sampler.health.postgres_outages == 0
        assert ctx.status_sections["sampler"]()["unavailable"] == sampler.unavailable
    finally:
        with pg15.connect("pgss_t") as c:
            c.execute("GRANT SELECT ON pg_stat_statements_info TO PUBLIC")
            c.execute("DROP ROLE IF EXISTS sampler_ro")


async def test_an_unwritable_state_file_is_named_not_an_outage(
    pg15: PgInstance, pgss_db: str, tmp_path: Path, logs: list[dict[str, object]]
) -> None:
    """The state file's place is taken by a directory (as good as a permission or a full disk for
    the write; the tests run as root, whom modes do not stop)."""
    (tmp_path / "sampler.json").mkdir()
    ctx = make_ctx(pg15, tmp_path)
    workload(pg15, 2, 2)
    sampler = await run_sampler_until(ctx, lambda s: s.save_error is not None and s.health.reads >= 3)
    events = [e["event"] for e in logs]
    assert "sampler_postgres_lost" not in events and sampler.health.postgres_outages == 0, events
    (err,) = [e for e in logs if e["event"] == "sampler_state_not_saved"]  # once, not per read
    assert "IsADirectoryError" in str(err["error"]) and err["path"] == str(tmp_path / "sampler.json")
    assert sampler.unavailable is None
