"""The read paths whose SQL depends on the server version, on PostgreSQL 15, 17 and 18 (the
sampler's pg_stat_statements read is in test_sampler_pgss.py): role, archive, `repack plan`,
and one Patroni cluster on 17. pg_repack is packaged for 15 only, so on 17/18 the plan reads
everything without it and says the extension is missing."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry
from testlab.postgres import PgInstance

from agent.archive import cli as archive_cli
from agent.cluster import pg_role
from agent.core.config import parse
from agent.core.context import Context
from agent.lab.agents import Agents
from agent.lab.cluster import Cluster
from agent.lab.etcd import Etcd
from agent.lab.procs import wait_until
from agent.repack import plan


def make_ctx(pg: PgInstance, state_dir: Path, db: str = "postgres", **extra: object) -> Context:
    cfg = parse({
        "node": {"name": "n1", "state_dir": str(state_dir)},
        "etcd": {"endpoints": ["http://127.0.0.1:1"], "scope": "versions"},
        "postgres": {"host": str(pg.socket_dir), "port": pg.port, "user": "postgres", "dbname": db},
        **extra,
    })
    return Context.create(cfg, CollectorRegistry())


def server_major(pg: PgInstance) -> int:
    return int(pg.psql("SHOW server_version_num")[0][0]) // 10000


async def test_role_is_read_from_pg_is_in_recovery(pg_any: PgInstance, tmp_path: Path) -> None:
    assert server_major(pg_any) == pg_any.version
    ctx = make_ctx(pg_any, tmp_path)
    ctx.liveness.register("pg_role")
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            await tg.start(pg_role.run, ctx)
            while not ctx.state.current.postgres_up:
                await ctx.state.changed()
        tg.cancel_scope.cancel()
    assert ctx.state.current.in_recovery is False


def test_archive_check_reads_the_archiver(pg_any: PgInstance, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pg_any.connect() as c:
        c.execute("CREATE TABLE IF NOT EXISTS archive_probe (t timestamptz)")
        c.execute("INSERT INTO archive_probe VALUES (now())")
        c.execute("SELECT pg_switch_wal()")
    wait_until(lambda: pg_any.psql("SELECT archived_count FROM pg_stat_archiver")[0][0] > 0
               and pg_any.psql("SELECT count(*) FROM pg_ls_archive_statusdir() "
                               "WHERE name LIKE '%.ready'")[0][0] == 0, 30, "segment archived")
    ctx = make_ctx(pg_any, tmp_path, archive={"max_ready_age": "1h"})
    assert archive_cli.main(ctx.config) == 0
    assert "archive: HEALTHY" in capsys.readouterr().out


@pytest.fixture
def bloated_db(pg_any: PgInstance) -> Iterator[str]:
    name = "plan_versions"
    with pg_any.connect() as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
        c.execute(f"CREATE DATABASE {name}".encode())
    with pg_any.connect(name) as c:
        c.execute("CREATE EXTENSION pgstattuple")
        if c.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_repack'").fetchone():
            c.execute("CREATE EXTENSION pg_repack")
        c.execute("CREATE TABLE tbl (id int PRIMARY KEY, payload text)")
        c.execute("CREATE TABLE other (id int)")
        c.execute("INSERT INTO tbl SELECT i, md5(i::text) FROM generate_series(1, 50000) i")
        c.execute("DELETE FROM tbl WHERE id % 10 < 7")
        c.execute("VACUUM ANALYZE tbl")
    yield name
    with pg_any.connect() as c:
        c.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


def test_repack_plan_reads_tables_bloat_and_guards(pg_any: PgInstance, bloated_db: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    ctx = make_ctx(pg_any, tmp_path, bloated_db, repack={
        "enabled": True, "windows": [{"cron": "0 * * * *", "duration": "2h", "databases": [bloated_db],
                                      "min_table_bytes": 0, "bloat_ratio": 0.3}]})
    assert plan.main(ctx.config) == 1  # no etcd or Patroni here: not a confirmed primary
    out = capsys.readouterr().out
    has_repack = bool(pg_any.psql("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_repack'"))
    verdict = "WOULD REPACK" if has_repack else r"REFUSED \(extension_missing\)"
    assert re.search(rf"public\.tbl .* bloat +[1-9][0-9.]*% \(\w+\).*{verdict}", out), out
    assert re.search(r"public\.other .*no_primary_key", out), out
    assert "cannot read" not in out, out
    assert "guard would stop a run now: guard=confirmed_primary" in out


@pytest.mark.slow
def test_patroni_cluster_on_pg17_with_agents(run_dir: Path, etcd: Etcd,
                                             pg_other: Callable[[int], PgInstance]) -> None:
    """Patroni runs PostgreSQL 17 from the wheel's bin_dir; the agents see the roles."""
    pg_other(17)  # skips visibly when the wheel is missing
    c = Cluster(run_dir, etcd.url, scope="pg17", nodes=2, pg_version=17)
    try:
        c.start()
        leader = c.leader()
        assert int(c.psql(leader, "SHOW server_version_num")[0][0]) // 10000 == 17
        (replica,) = c.replicas()
        assert c.psql(replica, "SELECT pg_is_in_recovery()") == [(True,)]
        agents = Agents(run_dir, c, [etcd.url])
        try:
            agents.start()

            def roles() -> dict[str, object]:
                return {a.name: ((a.status() or {}).get("state") or {}).get("role") for a in agents}

            want = {leader.name: "primary", replica.name: "replica"}
            wait_until(lambda: roles() == want, 20, f"agents report {want}", detail=roles)
        finally:
            agents.stop()
    finally:
        c.stop()
