"""pg_stat_statements source on real PostgreSQL 15, 17 and 18 (pgss 1.10, 1.11, 1.12) under a
counted workload."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry
from psycopg import sql
from sampler_loop import run_sampler_until
from structlog.testing import capture_logs
from testlab.postgres import PgInstance

from agent.core import config as config_mod
from agent.core import malloc, slices
from agent.core.context import Context
from agent.sampler import deltas as deltas_mod
from agent.sampler import persist
from agent.sampler import totals as totals_mod
from agent.sampler.component import Sampler, components
from agent.sampler.pg_stat_statements import PgssRead, PgStatStatements
from agent.sampler.source import CHUNK_ROWS, Limits
from agent.sampler.totals import NFIELDS


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


def make_db(pg: PgInstance) -> str:
    with pg.connect() as admin:
        admin.execute("DROP DATABASE IF EXISTS pgss_t WITH (FORCE)")
        admin.execute("CREATE DATABASE pgss_t")
    with pg.connect("pgss_t") as c:
        c.execute("CREATE EXTENSION pg_stat_statements")
        c.execute("CREATE TABLE sampler_probe (x int)")
    return "pgss_t"


@pytest.fixture
def pgss_db(pg15: PgInstance) -> str:
    return make_db(pg15)


def workload(pg: PgInstance, inserts: int, selects: int) -> tuple[str, str]:
    with pg.connect("pgss_t") as c:
        for i in range(inserts):
            c.execute("INSERT INTO sampler_probe VALUES (%s)", (i,))
        for _ in range(selects):
            c.execute("SELECT count(*) FROM sampler_probe WHERE x > %s", (0,))
        rows = c.execute(
            "SELECT queryid::text, query FROM pg_stat_statements "
            "WHERE query LIKE '%sampler_probe%' AND query NOT LIKE 'CREATE%' "
            "AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    ids = {("insert" if q.startswith("INSERT") else "select"): qid for qid, q in rows}
    return ids["insert"], ids.get("select", "")


def calls(ctx: Context, qid: str) -> float:
    return (
        ctx.cached_metrics[0].registry.get_sample_value("pgnode_query_calls_total", {"queryid": qid, "datname": "pgss_t"})
        or 0.0
    )


async def test_counted_statements_increase_counters_exactly_across_reset_and_restart(
    pg_any: PgInstance, tmp_path: Path
) -> None:
    pg15 = pg_any  # the same statements on 15, 17 and 18: the read is built from each one's columns
    make_db(pg15)
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


async def test_an_entry_recreated_above_its_old_count_is_seen_by_stats_since(
    pg_other: Callable[[int], PgInstance], tmp_path: Path
) -> None:
    """pgss 1.11+ (PG17/18): one entry removed and recreated between two reads, with more calls
    than it had. Counters alone read that as a small increase; stats_since says it is all new."""
    pg = pg_other(17)
    make_db(pg)
    ctx = make_ctx(pg, tmp_path)
    (comp,) = components(ctx)
    sampler: Sampler = comp.run.__self__  # type: ignore[attr-defined]
    ins, _ = workload(pg, 3, 1)
    conn = await sampler.open(ctx)
    try:
        await sampler.step(ctx, conn)  # primes at 3 calls
        workload(pg, 5, 0)
        await sampler.step(ctx, conn)
        assert calls(ctx, ins) == 5
        with pg.connect("pgss_t") as c:  # the entry (now 8 calls) goes, then comes back with 12
            c.execute("SELECT pg_stat_statements_reset(0, 0, %s::bigint)", (int(ins),))
        workload(pg, 12, 0)
        await sampler.step(ctx, conn)
        assert calls(ctx, ins) == 17  # 5 + 12, not 5 + (12 - 8)
        assert sampler.health.source_resets.get("recreated") == 1
        assert "stats_reset" not in sampler.health.source_resets
    finally:
        await conn.close()


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


async def test_a_state_file_that_cannot_be_written_is_named_and_survived(
    pg15: PgInstance, pgss_db: str, tmp_path: Path
) -> None:
    """The state directory is unusable (here a regular file where the directory should be): the
    sampler keeps reading and counting, says what is wrong, and writes once it can again."""
    state_dir = tmp_path / "state"
    state_dir.write_text("not a directory")
    ctx = make_ctx(pg15, state_dir)
    ins, _ = workload(pg15, 2, 0)
    with capture_logs() as logs:
        sampler = await run_sampler_until(ctx, lambda s: s.health.reads >= 3)
    events = [e["event"] for e in logs]
    assert "sampler_postgres_lost" not in events and "sampler_read_failed" not in events
    assert events.count("sampler_state_not_saved") == 1  # once per streak, not per read
    assert sampler.health.postgres_outages == 0 and sampler.health.state_write_errors >= 3
    err = ctx.status_sections["sampler"]()["save_error"]
    assert err is not None and err.startswith("FileExistsError") and str(state_dir) in err, err
    assert sampler.unavailable is None
    state_dir.unlink()  # fixed: the next read's write succeeds, with the counts so far
    workload(pg15, 4, 0)
    conn = await sampler.open(ctx)
    try:
        with capture_logs() as logs:
            await sampler.step(ctx, conn)
    finally:
        await conn.close()
    assert "sampler_state_saved_again" in [e["event"] for e in logs]
    assert ctx.status_sections["sampler"]()["save_error"] is None
    assert calls(ctx, ins) == 4
    s2: Sampler = components(make_ctx(pg15, state_dir))[0].run.__self__  # type: ignore[attr-defined]
    assert s2.state.totals.series[(ins, "pgss_t")][0] == 4


async def test_reads_between_writes_are_not_lost_or_doubled_after_a_crash(
    pg15: PgInstance, pgss_db: str, tmp_path: Path
) -> None:
    """Writes are rate-bounded, so a crash (no clean stop) restores an older snapshot: the next
    read counts everything since that snapshot's baseline, once."""
    ctx = make_ctx(pg15, tmp_path)
    (comp,) = components(ctx)
    sampler: Sampler = comp.run.__self__  # type: ignore[attr-defined]
    ins, _ = workload(pg15, 3, 0)
    conn = await sampler.open(ctx)
    try:
        await sampler.step(ctx, conn)  # primes; the snapshot is written (the budget has room)
        written = sampler.health.state_bytes_written
        assert written > 0
        sampler.writer.tokens = -1e12  # from here the budget holds every write back
        for n in (5, 7, 11):
            workload(pg15, n, 0)
            await sampler.step(ctx, conn)
        assert calls(ctx, ins) == 23 and sampler.health.state_bytes_written == written
    finally:
        await conn.close()
    # the process dies here: no clean-stop write. A new one starts from the primed snapshot.
    workload(pg15, 2, 0)
    ctx2 = make_ctx(pg15, tmp_path)
    s2: Sampler = components(ctx2)[0].run.__self__  # type: ignore[attr-defined]
    conn = await s2.open(ctx2)
    try:
        await s2.step(ctx2, conn)
    finally:
        await conn.close()
    assert calls(ctx2, ins) == 25  # 23 + 2: nothing lost, nothing doubled


async def test_a_clean_stop_writes_what_the_budget_held_back(
    pg15: PgInstance, pgss_db: str, tmp_path: Path
) -> None:
    ctx = make_ctx(pg15, tmp_path)
    ins, _ = workload(pg15, 1, 0)
    stop_after = {"reads": 2}

    def done(s: Sampler) -> bool:
        if s.health.reads == 1:
            s.writer.tokens = -1e12  # primed and written; nothing more until the stop
        return s.health.reads >= stop_after["reads"] and calls(ctx, ins) > 0

    async def load() -> None:
        while True:
            await anyio.to_thread.run_sync(workload, pg15, 3, 0)
            await anyio.sleep(0.1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(load)
        sampler = await run_sampler_until(ctx, done)
        tg.cancel_scope.cancel()
    counted = calls(ctx, ins)
    s2: Sampler = components(make_ctx(pg15, tmp_path))[0].run.__self__  # type: ignore[attr-defined]
    assert s2.state.totals.series[(ins, "pgss_t")][0] == counted
    assert sampler.health.state_bytes_written > 0


async def test_the_heavy_work_of_a_step_runs_on_the_loop_in_slices(
    pg15: PgInstance, pgss_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storing rows, deltas, folding and encoding the state are ~70 ms of Python a step at 10k
    entries: they run in the loop's thread, never in a worker's (whose GIL a preempted worker
    would keep), and never in one piece: other tasks run between their slices. Only zlib, which
    releases the GIL, runs in a worker thread (agent/core/slices.py; speed is in bench/). So does
    giving the read's freed heap pages back (malloc_trim releases the GIL and walks every arena)."""
    where: dict[str, set[int]] = {}

    def record(owner: object, name: str) -> None:
        real = getattr(owner, name)

        def wrapped(*a: object, **kw: object) -> object:
            where.setdefault(name, set()).add(threading.get_ident())
            return real(*a, **kw)

        monkeypatch.setattr(owner, name, wrapped)

    record(deltas_mod.Entries, "add_rows")
    record(deltas_mod.PgssDeltas, "applying")
    record(totals_mod.Totals, "adding")
    record(persist, "packing")
    record(persist.zlib, "compress")
    record(malloc, "trim")
    monkeypatch.setattr(slices, "SLICE", 0.0)  # every pause turns the loop: countable
    turns = 0
    during: dict[str, int] = {}  # loop turns while each phase ran

    def counted_async(phase: str, real: Callable[..., Any]) -> Callable[..., Any]:
        async def wrapped(*a: Any) -> Any:
            t = turns
            try:
                return await real(*a)
            finally:
                during[phase] = turns - t

        return wrapped

    real_fold = PgssRead.fold

    def fold(*a: Any) -> Any:
        t = turns
        try:
            return (yield from real_fold(*a))
        finally:
            during["fold"] = turns - t

    monkeypatch.setattr(PgStatStatements, "read", counted_async("read", PgStatStatements.read))
    monkeypatch.setattr(PgssRead, "fold", fold)
    monkeypatch.setattr(persist.Writer, "save", counted_async("save", persist.Writer.save))
    ctx = make_ctx(pg15, tmp_path)
    sampler: Sampler = components(ctx)[0].run.__self__  # type: ignore[attr-defined]
    with pg15.connect("pgss_t") as c:  # 300 statements of distinct shapes: 300 queryids
        for k in range(300):
            c.execute("SELECT x" + " + 1" * k + " FROM sampler_probe")
    workload(pg15, 2, 1)
    loop_thread = threading.get_ident()

    async def ticker() -> None:
        nonlocal turns
        while True:
            await anyio.lowlevel.checkpoint()
            turns += 1

    conn = await sampler.open(ctx)
    try:
        await sampler.step(ctx, conn)
        with pg15.connect("pgss_t") as c:  # each of them ran again: 300 deltas to fold
            for k in range(300):
                c.execute("SELECT x" + " + 1" * k + " FROM sampler_probe")
        ins, _ = workload(pg15, 3, 1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.lowlevel.checkpoint()
            await sampler.step(ctx, conn)
            await sampler.writer.save(sampler.state)
            tg.cancel_scope.cancel()
    finally:
        await conn.close()
    assert calls(ctx, ins) == 3
    assert set(where) == {"add_rows", "applying", "adding", "packing", "compress", "trim"}
    python = {n: t for n, t in where.items() if n not in ("compress", "trim")}
    assert all(threads == {loop_thread} for threads in python.values()), where
    assert loop_thread not in where["compress"] and loop_thread not in where["trim"], where
    # 300+ entries: the rows come in chunks, the deltas pause every 64 entries, the encoding
    # at every column and around zlib
    assert during["read"] >= 300 // CHUNK_ROWS, during
    assert during["fold"] >= 300 // 64, during
    assert during["save"] >= NFIELDS, during


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


async def test_a_read_arrives_in_the_key_order_the_delta_merges(pg15: PgInstance, pgss_db: str) -> None:
    """The read's ORDER BY gives entries in deltas.Entries' order (signed queryids, then dbid,
    userid, toplevel), so the agent never sorts a read again (memory: bench/README.md)."""
    for db in ("pgss_t", "postgres"):
        with pg15.connect(db) as c:
            for i in range(1, 41):  # distinct shapes, so distinct queryids (of both signs)
                c.execute(sql.SQL("SELECT {} FROM (SELECT 1 AS x) t").format(sql.SQL(", ").join([sql.SQL("x")] * i)))
    ctx = make_ctx(pg15, Path("/nonexistent"))
    src = PgStatStatements()
    conn = await ctx.pg_connect("sampler")
    try:
        await src.connected(conn)
        got = await src.read(conn, persist.SamplerState(totals=totals_mod.Totals(("datname",))), 0.0,
                             Limits(0.2, 1.0, 1000, 1000))
    finally:
        await conn.close()
    e = got.entries
    assert len({e.dbs[i] for i in range(len(e))}) >= 2 and len(e) >= 80
    assert min(e.qids) < 0 < max(e.qids)
    assert e.ordered and e.in_order() is e
