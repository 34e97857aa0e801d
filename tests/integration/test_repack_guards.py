"""Guard samples, leftovers and disk/lag guards of the repack component against a real
PostgreSQL 15 and pg_repack 1.4.8 (NodeState driven by the test, as in test_repack.py).

A slow guard sample is made for real: the test puts `pg_sleep` into the sample query for exactly
one call (counted by a sequence in the target database), so the server runs a slow query."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import psycopg
import pytest
import structlog
from repack_lab import LEFTOVERS
from test_repack import (  # fixtures and helpers of the repack tests
    TRIGGER,
    any_client_killed,
    client_killed,
    confirm_primary,
    ctx,
    db,
    filenode,
    logged,
    make_ctx,
    q,
    recent,
    started,
)
from testlab.postgres import PgInstance

from agent.core.config import RepackConfig
from agent.core.context import Context
from agent.core.events import FailoverPending
from agent.lab.etcd import Etcd
from agent.lab.patroni import PG_BIN_DIR
from agent.lab.procs import LAB_USER, await_until, lab_user
from agent.repack import guards, plan

__all__ = ["ctx", "db"]  # fixtures used by name

REPACK_BACKENDS = "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_repack'"


def slow_sample(monkeypatch: pytest.MonkeyPatch, pg: PgInstance, db: str, on_call: int, seconds: float) -> None:
    """The `on_call`-th guard sample of this database sleeps `seconds` on the server."""
    q(pg, db, "CREATE SEQUENCE guard_calls")
    slow = f"(SELECT pg_sleep({seconds}) WHERE nextval('guard_calls') = {on_call}) IS NULL AS slow,\n"
    monkeypatch.setattr(guards, "SAMPLE_SQL", guards.SAMPLE_SQL.replace("SELECT\n", "SELECT\n" + slow, 1))


def calls(pg: PgInstance, db: str) -> int:
    return int(q(pg, db, "SELECT last_value FROM guard_calls")[0][0])


# what every session and server process is doing, and which lock requests wait: a wait for the
# agent that times out names the query it is in and what that query waits on
ACTIVITY = """
SELECT a.pid, a.backend_type, a.application_name, a.state, a.wait_event_type, a.wait_event,
       round(extract(epoch FROM clock_timestamp() - a.query_start)::numeric, 1) AS query_seconds,
       left(a.query, 100) AS query,
       (SELECT array_agg(l.locktype || ':' || l.mode || coalesce(':' || l.relation::regclass::text, ''))
          FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted) AS waiting_for
  FROM pg_stat_activity a
 WHERE a.pid <> pg_backend_pid() AND (a.datname = %s OR a.datname IS NULL)
   AND (a.state IS DISTINCT FROM 'idle' OR a.backend_type <> 'client backend'
        OR a.application_name IN ('pg_repack', 'pg-node-agent/repack'))
"""


def activity(pg: PgInstance, db: str) -> list[tuple[object, ...]]:
    return q(pg, db, ACTIVITY, (db,))


def blocker_on_other(pg: PgInstance, db: str) -> psycopg.Connection[tuple[object, ...]]:
    """An open transaction on another table: pg_repack waits for it after its copy, 'forever'."""
    c = psycopg.connect(pg.conninfo.replace("dbname=postgres", f"dbname={db}"))
    c.execute("INSERT INTO other VALUES (1)")
    return c


# --------------------------------------------------------------------------- 1. guard samples

async def test_a_guard_sample_slower_than_its_bound_fails_alone_and_the_run_goes_on(
        pg15: PgInstance, db: str, ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    slow_sample(monkeypatch, pg15, db, on_call=2, seconds=4)  # call 1 is the check before the start
    blocker = blocker_on_other(pg15, db)
    try:
        with structlog.testing.capture_logs() as logs:
            async with started(ctx):
                confirm_primary(ctx)
                await await_until(lambda: q(pg15, db, TRIGGER), 30, "repack_trigger on tbl", interval=0.02)
                await await_until(lambda: calls(pg15, db) >= 6, 30, "four samples after the slow one")
                assert ctx.status_sections["repack"]()["recent"] == []  # still running, not aborted
                blocker.commit()
                out = await recent(ctx, 30)
        assert out["result"] == "success", out
        failed = [e for e in logs if e["event"] == "repack_guard_sample_failed"]
        assert len(failed) == 1, failed
        assert ctx.registry.get_sample_value("pgnode_repack_guard_trips_total", {"guard": "guard_sample"}) == 0
    finally:
        blocker.close()


async def test_pg_repack_exiting_during_a_sample_is_recorded_as_a_success(
        pg15: PgInstance, db: str, ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sample in flight when pg_repack exits is abandoned; the outcome is read on a fresh
    session, recorded in the history and counted."""
    monkeypatch.setattr(guards, "SAMPLE_TIMEOUT", 20.0, raising=False)  # let the sleep outlive the run
    slow_sample(monkeypatch, pg15, db, on_call=101, seconds=8)
    blocker = blocker_on_other(pg15, db)
    node_before, _ = filenode(pg15, db)
    try:
        async with started(ctx):
            confirm_primary(ctx)
            await await_until(lambda: q(pg15, db, TRIGGER), 30, "repack_trigger on tbl", interval=0.02)
            q(pg15, db, "SELECT setval('guard_calls', 100)")
            await await_until(lambda: q(pg15, db, "SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                                                   " AND application_name = 'pg-node-agent/repack'"),
                              10, "a guard sample in flight", interval=0.02)
            t0 = time.monotonic()
            blocker.commit()  # pg_repack finishes while the sample sleeps
            out = await recent(ctx, 30)
            elapsed = time.monotonic() - t0
        assert out["result"] == "success", out
        assert filenode(pg15, db)[0] != node_before
        assert ctx.registry.get_sample_value("pgnode_repack_runs_total", {"result": "success"}) == 1
        history = json.loads((ctx.config.state_dir / "repack.json").read_text())
        assert history["tables"][f"{db}/public.tbl"]["last_success"] > 0
        print(f"pg_repack exit recorded {elapsed:.2f}s after the blocker committed (sample sleeps 8s)")  # noqa: T201
    finally:
        blocker.close()


# --------------------------------------------------------------------------- 2. leftovers

async def test_cleanup_blocked_by_a_client_lock_is_listed_at_once_and_dropped_once_it_lets_go(
        pg15: PgInstance, etcd: Etcd, db: str, tmp_path: Path) -> None:
    ctx = make_ctx(pg15, etcd, db, tmp_path, cleanup_timeout="3s")
    log_from = pg15.log_path.stat().st_size
    blocker = blocker_on_other(pg15, db)
    client = psycopg.connect(pg15.conninfo.replace("dbname=postgres", f"dbname={db}"))
    try:
        async with started(ctx):
            confirm_primary(ctx)
            await await_until(lambda: q(pg15, db, TRIGGER), 30, "repack_trigger on tbl", interval=0.02)
            client.execute("SELECT count(*) FROM tbl")  # ACCESS SHARE until commit: no cleanup can lock
            ctx.publish(FailoverPending(pending=True, candidate="n2", revision=2))
            out = await recent(ctx, 30)
            assert out["result"] == "aborted" and out["leftovers"] == 1, out
            # the gauge says so the moment the run is recorded, not at the next promotion
            assert ctx.registry.get_sample_value("pgnode_repack_leftovers") == 1
            oid = int(q(pg15, db, "SELECT 'tbl'::regclass::oid")[0][0])
            st = ctx.status_sections["repack"]()
            assert st["leftovers"] == 1 and st["leftover_tables"] == {db: [oid]}
            persisted = json.loads((ctx.config.state_dir / "repack-leftovers.json").read_text())
            assert persisted == {"tables": {db: [oid]}}
            ctx.publish(FailoverPending(pending=False, candidate=None, revision=3))
            q(pg15, db, "INSERT INTO tbl (id, payload) SELECT i, 'x' FROM generate_series(-500, -1) i")
            await await_until(lambda: (ctx.registry.get_sample_value("pgnode_repack_leftover_log_bytes") or 0) > 0,
                              30, "the leftover log table's size on /metrics")
            assert q(pg15, db, LEFTOVERS)[0][0] > 0  # still there: the client holds its lock
            client.commit()
            t0 = time.monotonic()
            await await_until(lambda: ctx.registry.get_sample_value("pgnode_repack_leftovers") == 0,
                              90, "the retry drops the leftovers", detail=lambda: activity(pg15, db))
            elapsed = time.monotonic() - t0
            assert q(pg15, db, LEFTOVERS)[0][0] == 0
            assert ctx.registry.get_sample_value("pgnode_repack_leftover_log_bytes") == 0
        assert json.loads((ctx.config.state_dir / "repack-leftovers.json").read_text()) == {"tables": {}}
        assert client.execute("SELECT 1").fetchone() == (1,)
        blocker.commit()
        for pid in (client.info.backend_pid, blocker.info.backend_pid):
            assert not client_killed(pg15, pid, log_from)
        assert not any_client_killed(pg15, log_from)
        print(f"leftovers dropped {elapsed:.1f}s after the client committed")  # noqa: T201
    finally:
        client.close()
        blocker.close()


def killed_pg_repack(pg: PgInstance, db: str) -> None:
    """A real pg_repack SIGKILLed once its trigger exists (as if the agent had died with it)."""
    blocker = blocker_on_other(pg, db)
    env = {**os.environ, "PGHOST": str(pg.socket_dir), "PGPORT": str(pg.port), "PGUSER": "postgres"}
    p = subprocess.Popen([str(PG_BIN_DIR / "pg_repack"), "--no-kill-backend", "-t", "public.tbl", "-d", db],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not q(pg, db, TRIGGER):
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.02)
        p.kill()
        p.wait()
    finally:
        blocker.rollback()
        blocker.close()
    while q(pg, db, REPACK_BACKENDS):  # its backends notice the lost client at their next read
        q(pg, db, "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'pg_repack'")
        time.sleep(0.1)


async def test_leftovers_found_on_becoming_primary_under_a_client_lock_are_listed_then_dropped(
        pg15: PgInstance, db: str, ctx: Context) -> None:
    log_from = pg15.log_path.stat().st_size
    killed_pg_repack(pg15, db)
    client = psycopg.connect(pg15.conninfo.replace("dbname=postgres", f"dbname={db}"))
    client.execute("SELECT count(*) FROM tbl")  # holds ACCESS SHARE: the sweep cannot lock the table
    try:
        with structlog.testing.capture_logs() as logs:
            async with started(ctx):
                confirm_primary(ctx)
                await await_until(lambda: ctx.registry.get_sample_value("pgnode_repack_leftovers") == 1, 30,
                                  "the sweep lists the leftovers it could not drop")
                assert q(pg15, db, LEFTOVERS)[0][0] > 0
                client.commit()
                await await_until(lambda: ctx.registry.get_sample_value("pgnode_repack_leftovers") == 0, 90,
                                  "a retry drops them", detail=lambda: activity(pg15, db))
                assert q(pg15, db, LEFTOVERS)[0][0] == 0
        assert any(e["event"] == "repack_leftovers_found" for e in logs)
        assert not client_killed(pg15, client.info.backend_pid, log_from)
    finally:
        client.close()


# --------------------------------------------------------------------------- 4. disk and lag

@pytest.fixture
def small_tablespace(pg15: PgInstance) -> Iterator[tuple[str, Path]]:
    """A 6 MiB tmpfs of the test's own, as a tablespace (beside the data directory: the lab user
    must reach it)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = pg15.dir / f"small-{os.getpid()}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(mnt)], check=True)
    name = f"small_{os.getpid()}"
    try:
        pw = pwd.getpwnam(LAB_USER)
        os.chown(mnt, pw.pw_uid, pw.pw_gid)
        pg15.psql(f"CREATE TABLESPACE {name} LOCATION '{mnt}'")
        yield name, mnt
    finally:
        pg15.psql(f"DROP TABLESPACE IF EXISTS {name}")
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        mnt.rmdir()


async def test_a_table_in_a_tablespace_too_small_for_the_copy_is_refused_at_selection_not_started(
        pg15: PgInstance, etcd: Etcd, small_tablespace: tuple[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The data directory has room, the tablespace does not: the pre-check at selection measures
    the same file systems as the run's disk guard, so the table is refused there (and in
    `repack plan`), naming the tablespace's path, and no run starts."""
    spc, mnt = small_tablespace
    name = f"repack_spc_{os.getpid()}"
    pg15.psql(f"CREATE DATABASE {name}")
    try:
        q(pg15, name, "CREATE EXTENSION pg_repack")
        q(pg15, name, "CREATE EXTENSION pgstattuple")
        q(pg15, name, f"CREATE TABLE tbl (id int PRIMARY KEY USING INDEX TABLESPACE {spc}, payload text)"
                      f" TABLESPACE {spc}")
        q(pg15, name, "INSERT INTO tbl SELECT i, md5(i::text) FROM generate_series(1, 50000) i")
        q(pg15, name, "DELETE FROM tbl WHERE id % 10 < 4")
        q(pg15, name, "VACUUM ANALYZE tbl")
        st = os.statvfs(mnt)
        total = int(q(pg15, name, "SELECT pg_total_relation_size('tbl')")[0][0])
        data = os.statvfs(pg15.data_dir)
        assert data.f_bavail * data.f_frsize > 3 * total  # the data directory alone would let it run
        print(f"tablespace free {st.f_bavail * st.f_frsize} bytes, table {total} bytes")  # noqa: T201
        ctx = make_ctx(pg15, etcd, name, tmp_path)
        node_before = q(pg15, name, "SELECT pg_relation_filenode('tbl')")[0][0]

        assert await anyio.to_thread.run_sync(plan.main, ctx.config) == 1
        out = capsys.readouterr().out
        assert re.search(r"public\.tbl .*REFUSED \(insufficient_disk\)", out), out
        assert f"disk_path: {mnt}\n" in out, out

        with structlog.testing.capture_logs() as logs:
            async with started(ctx):
                confirm_primary(ctx)
                await logged(logs, "repack_window_done")
        refused = next(e for e in logs if e["event"] == "repack_table_refused")
        assert refused["reasons"] == ["insufficient_disk"], refused
        assert refused["disk_path"] == str(mnt), refused
        assert refused["disk_free_bytes"] < refused["disk_needed_bytes"], refused
        assert ctx.status_sections["repack"]()["recent"] == []
        assert not any(e["event"] in ("repack_guard_tripped", "repack_started") for e in logs)
        assert q(pg15, name, "SELECT pg_relation_filenode('tbl')")[0][0] == node_before
        assert not q(pg15, name, REPACK_BACKENDS)
    finally:
        with pg15.connect() as c:
            c.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


def test_pg_wal_symlinked_to_its_own_small_file_system_is_a_volume_of_its_own(tmp_path: Path) -> None:
    """How a data directory with `initdb --waldir` looks: the guard statvfs's through the link."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    data, walfs = tmp_path / "data", tmp_path / "walfs"
    data.mkdir()
    walfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(walfs)], check=True)
    try:
        (walfs / "pg_wal").mkdir()
        (data / "pg_wal").symlink_to(walfs / "pg_wal")
        vols = guards.volumes(str(data), [("", 10 * 1024 * 1024)])
        assert len(vols) == 2
        wal = next(v for v in vols if v.wal)
        assert wal.table_bytes == 0 and wal.free_bytes <= 4 * 1024 * 1024
        trips = guards.sample_trips(RepackConfig(), guards.Sample(0, 0, 0.0, 0, vols), 10 * 1024 * 1024, running=False)
        assert [t.path for t in trips] == [str(data / "pg_wal")]
    finally:
        subprocess.run(["umount", "-l", str(walfs)], check=False)


@pytest.fixture
def receivewal(pg15: PgInstance, tmp_path: Path, receivewal_role: None) -> Iterator[None]:
    """A real pg_receivewal streaming from pg15 (replay_lsn stays NULL: it replays nothing)."""
    out = tmp_path / "wal"
    out.mkdir()
    p = subprocess.Popen([str(PG_BIN_DIR / "pg_receivewal"), "-h", "127.0.0.1", "-p", str(pg15.port), "-U", "walrcv",
                          "-D", str(out), "--no-password"],
                         env={**os.environ, "PGPASSWORD": "walrcv"}, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not pg15.psql("SELECT 1 FROM pg_stat_replication WHERE application_name = 'pg_receivewal'"):
            assert p.poll() is None, p.stderr.read() if p.stderr else b""
            assert time.monotonic() < deadline, "pg_receivewal did not connect"
            time.sleep(0.1)
        yield
    finally:
        p.terminate()
        p.wait(10)


async def test_a_pg_receivewal_streaming_beside_the_cluster_does_not_block_repack(
        pg15: PgInstance, etcd: Etcd, db: str, tmp_path: Path, receivewal: None) -> None:
    (row,) = pg15.psql("SELECT replay_lsn IS NULL, pg_current_wal_lsn() - '0/0'::pg_lsn FROM pg_stat_replication"
                       " WHERE application_name = 'pg_receivewal'")
    assert row[0] is True and row[1] > 1024 * 1024  # what the old guard read as a lag of the whole WAL
    ctx = make_ctx(pg15, etcd, db, tmp_path, max_replication_lag_bytes=1024 * 1024)
    async with started(ctx):
        confirm_primary(ctx)
        out = await recent(ctx, 60)
    assert out["result"] == "success", out
    assert ctx.registry.get_sample_value("pgnode_repack_guard_trips_total", {"guard": "replication_lag"}) == 0


@pytest.fixture
def delayed_standby(pg15: PgInstance, run_dir: Path, receivewal_role: None) -> Iterator[PgInstance]:
    """A real physical standby of pg15 (pg_basebackup -R) that applies WAL an hour late."""
    sb = PgInstance(run_dir, "delayed")
    user = lab_user()
    subprocess.run([str(PG_BIN_DIR / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(pg15.port), "-U", "walrcv",
                    "-D", str(sb.data_dir), "-R", "-X", "stream", "-c", "fast", "--no-password"],
                   env={"PATH": "/usr/bin:/bin", "PGPASSWORD": "walrcv"}, user=user, group=user,
                   extra_groups=[] if user else None, check=True, timeout=120, capture_output=True)
    with (sb.data_dir / "postgresql.auto.conf").open("a") as f:
        f.write(f"port = {sb.port}\nunix_socket_directories = '{sb.socket_dir}'\nlisten_addresses = ''\n"
                "archive_mode = off\ncluster_name = 'delayed'\nrecovery_min_apply_delay = '1h'\n")
    sb.start()
    try:
        yield sb
    finally:
        sb.stop()


@pytest.fixture
def receivewal_role(pg15: PgInstance) -> None:
    pg15.psql("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'walrcv') THEN "
              "CREATE ROLE walrcv REPLICATION LOGIN PASSWORD 'walrcv'; END IF; END$$")


async def test_a_delayed_standby_blocks_repack_unless_excluded_by_config(
        pg15: PgInstance, etcd: Etcd, db: str, tmp_path: Path, delayed_standby: PgInstance,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the delay holds back commit records: replay stops at the first one, so all WAL after it lags
    q(pg15, db, "INSERT INTO other VALUES (0)")
    q(pg15, db, "INSERT INTO other SELECT generate_series(1, 200000)")
    lag_sql = ("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn) FROM pg_stat_replication"
               " WHERE application_name = 'delayed' AND replay_lsn IS NOT NULL")
    await await_until(lambda: (pg15.psql(lag_sql) or [(0,)])[0][0] > 2 * 1024 * 1024, 30,
                      "the delayed standby 2 MiB behind in replay")
    strict = make_ctx(pg15, etcd, db, tmp_path / "strict", max_replication_lag_bytes=1024 * 1024)
    lenient = make_ctx(pg15, etcd, db, tmp_path / "lenient", max_replication_lag_bytes=1024 * 1024,
                       lag_excluded_standbys=["delayed"])
    # `repack plan` evaluates the guards as a run would: the same trip, the same exclusion
    await anyio.to_thread.run_sync(plan.main, strict.config)
    assert "guard would stop a run now: guard=replication_lag" in capsys.readouterr().out
    await anyio.to_thread.run_sync(plan.main, lenient.config)
    said = capsys.readouterr().out
    assert "guard would stop a run now: guard=confirmed_primary" in said  # it does evaluate the guards
    assert "guard=replication_lag" not in said, said

    async with started(strict):
        confirm_primary(strict)
        with anyio.fail_after(60):
            while not strict.registry.get_sample_value("pgnode_repack_guard_trips_total",
                                                       {"guard": "replication_lag"}):
                await anyio.sleep(0.1)
    assert strict.status_sections["repack"]()["recent"] == []

    async with started(lenient):
        confirm_primary(lenient)
        out = await recent(lenient, 60)
    assert out["result"] == "success", out
