"""pg_stat_monitor source against the stand-in on a real PostgreSQL 15 (what CI runs).

The stand-in replays the real 2.3.2 captures, so the sampler's own SQL reads what the extension
showed, tick by tick, on the capture's clock. The same workloads against the real extension, and
the check that the stand-in shows what the real one shows, are in test_sampler_pgsm_real.py.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sampler_loop import run_sampler_until
from testlab.postgres import PgInstance

from agent.core import config as config_mod
from agent.core.context import Context
from agent.sampler.buckets import aligned, oldest_visible_start
from agent.sampler.component import Sampler, components
from tests.integration.pgsm_standin import loader

GT = json.loads((loader.DATA / "ground_truth.json").read_text())
QID = {s["id"]: str(s["queryid"][0]) for s in GT["statements"]}
GRACE = 1.0
BT, MB = 5, 4


def make_ctx(pg: PgInstance, db: str, state_dir: Path, **sampler: Any) -> Context:
    cfg = config_mod.parse(
        {
            "node": {"name": "n1", "state_dir": str(state_dir)},
            "etcd": {"scope": "s"},
            "postgres": {"host": str(pg.socket_dir), "port": pg.port, "user": "postgres", "dbname": db},
            "sampler": {"grace": "1s", "top_n": 20, "labels": ["datname"], **sampler},
        }
    )
    return Context.create(cfg, CollectorRegistry())


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("+00", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def capture() -> loader.Capture:
    return loader.Capture()


@pytest.fixture
def replay_db(pg15: PgInstance) -> str:
    with pg15.connect() as admin:
        loader.install(admin, "pgsm_replay", bucket_time=BT, max_buckets=MB)
    return "pgsm_replay"


RESTART_AT = epoch("2026-11-24 05:51:20.906681+00")


async def feed(
    ctx: Context,
    sampler: Sampler,
    admin: psycopg.Connection[Any],
    capture: loader.Capture,
    ticks: list[loader.Tick],
    snaps: list[dict[tuple[str, ...], float]],
    *,
    sysid: int = 1,
    marks: dict[str, dict[str, float]] | None = None,
) -> None:
    """Each tick: the stand-in shows that tick's rows on that tick's clock, then one sampler step."""
    conn = await sampler.open(ctx)
    try:
        for t in ticks:
            now = epoch(t.sampled_at)
            start = "2026-11-24 05:51:20.82032+00" if now > RESTART_AT else "2026-11-24 05:48:37.4+00"
            loader.set_fake(admin, postmaster_start=start, system_identifier=sysid)
            if marks is not None:
                marks[t.sampled_at[:19]] = dict(per_queryid(sampler))
            capture.load(admin, t)
            with anyio.fail_after(10):
                await sampler.step(ctx, conn)
            snaps.append({k: v[0] for k, v in sampler.state.totals.series.items()})
    finally:
        await conn.close()


def admin_conn(pg: PgInstance, db: str) -> psycopg.Connection[Any]:
    return psycopg.connect(host=str(pg.socket_dir), port=pg.port, user="postgres", dbname=db, autocommit=True)


def expected(
    capture: loader.Capture, fed: list[loader.Tick], wm: float
) -> tuple[dict[str, float], dict[str, float]]:
    """Independent of the sampler: each bucket after the first watermark, as shown by the first fed
    tick at or after its end + grace (the finished bucket); calls per queryid and errors per sqlcode."""
    by_tick: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in capture.rows():
        by_tick[r["sampled_at"]].append(r)
    starts = sorted({epoch(r["bucket_start_time"]) for t in fed for r in by_tick[t.sampled_at]})
    calls: dict[str, float] = defaultdict(float)
    errors: dict[str, float] = defaultdict(float)
    for b in starts:
        if b <= wm:
            continue
        first = next((t for t in fed if epoch(t.sampled_at) >= b + BT + GRACE), None)
        if first is None:
            continue
        for r in by_tick[first.sampled_at]:
            if epoch(r["bucket_start_time"]) != b:
                continue
            if int(r["elevel"]) > 0:
                errors[r["sqlcode"]] += int(r["calls"])
            else:
                calls[r["queryid"]] += int(r["calls"])
    return calls, errors


def per_queryid(s: Sampler) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for k, v in s.state.totals.series.items():
        out[k[0]] += v[0]
    return out


def assert_monotonic(snaps: list[dict[tuple[str, ...], float]]) -> None:
    for a, b in itertools.pairwise(snaps):
        for k, v in a.items():
            assert b.get(k, 0.0) >= v, (k, v, b.get(k))


async def test_replayed_capture_counts_equal_finished_buckets_and_ground_truth(
    pg15: PgInstance, replay_db: str, capture: loader.Capture, tmp_path: Path
) -> None:
    ctx = make_ctx(pg15, replay_db, tmp_path)
    (sampler_comp,) = components(ctx)
    sampler: Sampler = sampler_comp.run.__self__  # type: ignore[attr-defined]
    snaps: list[dict[tuple[str, ...], float]] = []
    marks: dict[str, dict[str, float]] = {}
    with admin_conn(pg15, replay_db) as admin:
        assert (
            admin.execute("SELECT get_histogram_timings()").fetchone()[0]
            == json.loads(  # type: ignore[index]
                (loader.DATA / "server_info.json").read_text()
            )["histogram_timings"]
        )
        await feed(ctx, sampler, admin, capture, capture.ticks, snaps, marks=marks)

    t0 = epoch(capture.ticks[0].sampled_at)
    exp_calls, exp_err = expected(capture, capture.ticks, aligned(t0 - BT - GRACE, BT))
    got = per_queryid(sampler)
    for sid, q in QID.items():
        if not sid.startswith("error"):
            assert got[q] == exp_calls[q], sid
    got_err = {k[1]: v for k, v in sampler.state.totals.errors.items()}
    assert got_err == {k: v for k, v in exp_err.items() if v}
    # ground truth per phase: exact in phases 1 and 3 (no reset there)
    p1, p2 = marks["2026-11-24 05:50:38"], marks["2026-11-24 05:51:26"]
    stmts = {s["id"]: s for s in GT["statements"]}
    for sid in QID:
        if sid.startswith("error"):
            continue
        q, exp = QID[sid], stmts[sid]["expected_calls_by_phase"]
        assert p1[q] == exp["phase1"], sid
        assert got[q] - p2[q] == exp["phase3"], sid
        loss = exp["phase2"] - (p2[q] - p1[q])
        # phase 2: pg_stat_monitor_reset() wiped the unfinished bucket's first part (3697 SELECTs)
        # and what ran between the last read and the reset; lost, never doubled
        assert 0 < loss < 5000, (sid, loss)
        print(  # noqa: T201

            f"\n{sid}: phase1={p1[q]:.0f} phase2={p2[q] - p1[q]:.0f} (reset loss {loss:.0f}) "
            f"phase3={got[q] - p2[q]:.0f} total={got[q]:.0f} of {stmts[sid]['expected_calls_total']}"
        )
    print(  # noqa: T201
        f"errors by sqlcode: {got_err} (sent 22012: 470, 42P01: 235)")
    # every lost bucket with its reason: from the last bucket consumed before each event (the
    # newest one finished GRACE before the tick preceding it) to the bucket the event hit
    events = {r["event"]: float(r["epoch"]) for r in csv.DictReader((loader.DATA / "events.csv").open())}

    def hit(t: float) -> int:
        before = max(epoch(k.sampled_at) for k in capture.ticks if epoch(k.sampled_at) < t)
        consumed = (before - BT - GRACE) // BT * BT
        return int((t // BT * BT - consumed) // BT)

    lost = {"reset": hit(events["pre_workload_reset"]) + hit(events["phase2_pgsm_reset"]),
            "restart": hit(events["restart_begin"])}
    assert lost == {"reset": 2, "restart": 2}
    assert sampler.state.totals.buckets_lost == lost
    assert sampler.health.histogram_mismatches == 0
    assert sampler.health.source_resets.get("server_restart") == 1
    assert_monotonic(snaps)
    calls_by_labels: dict[tuple[str, ...], float] = defaultdict(float)
    for k, v in sampler.state.totals.series.items():
        calls_by_labels[k[1:]] += v[0]
    for labels, h in sampler.state.totals.hist.items():
        assert sum(h[:-1]) == calls_by_labels[labels]  # histogram _count == calls
    reg = ctx.cached_metrics[0].registry  # the query series (rendered once per ingest)
    q = QID["select_accounts"]
    assert reg.get_sample_value("pgnode_query_calls_total", {"datname": "bench", "queryid": q}) == got[q]
    assert (
        reg.get_sample_value("pgnode_query_latency_seconds_count", {"datname": "bench"})
        == calls_by_labels[("bench",)]
    )
    assert reg.get_sample_value("pgnode_query_errors_total", {"elevel": "21", "sqlcode": "22012"}) == 464
    assert b'pgnode_sampler_source{source="pg_stat_monitor"} 1.0' in generate_latest(ctx.registry)


def totals_of(s: Sampler) -> dict[tuple[str, ...], list[float]]:
    return {k: list(v) for k, v in s.state.totals.series.items()}


async def test_agent_restart_mid_capture_continues_from_state_without_double_count(
    pg15: PgInstance, replay_db: str, capture: loader.Capture, tmp_path: Path
) -> None:
    half = len(capture.ticks) // 2
    snaps: list[dict[tuple[str, ...], float]] = []
    with admin_conn(pg15, replay_db) as admin:
        ctx = make_ctx(pg15, replay_db, tmp_path / "once")
        whole = Sampler(ctx)
        await feed(ctx, whole, admin, capture, capture.ticks, [])
        ctx1 = make_ctx(pg15, replay_db, tmp_path / "twice")
        await feed(ctx1, Sampler(ctx1), admin, capture, capture.ticks[:half], snaps)
        assert (tmp_path / "twice" / "sampler.json").exists()
        ctx2 = make_ctx(pg15, replay_db, tmp_path / "twice")
        second = Sampler(ctx2)  # a new agent process: everything comes from the state file
        await feed(ctx2, second, admin, capture, capture.ticks[half:], snaps)
    assert totals_of(second) == totals_of(whole)
    assert second.state.totals.errors == whole.state.totals.errors
    assert_monotonic(snaps)


async def test_buckets_missed_while_down_past_retention_are_counted_not_invented(
    pg15: PgInstance, replay_db: str, capture: loader.Capture, tmp_path: Path
) -> None:
    # agent down for 15 ticks (30 s) in the middle of phase 1; retention is 20 s
    down = next(i for i, t in enumerate(capture.ticks) if t.sampled_at.startswith("2026-11-24 05:49:20"))
    fed = capture.ticks[:down] + capture.ticks[down + 15 :]
    snaps: list[dict[tuple[str, ...], float]] = []
    with admin_conn(pg15, replay_db) as admin:
        ctx = make_ctx(pg15, replay_db, tmp_path)
        s = Sampler(ctx)
        await feed(ctx, s, admin, capture, capture.ticks[:down], snaps)
        wm = s.state.watermark
        assert wm is not None
        resume = capture.ticks[down + 15]
        await feed(ctx, Sampler(ctx), admin, capture, capture.ticks[down + 15 :], snaps)
        s = Sampler(ctx)  # reload the final state
    t0 = epoch(capture.ticks[0].sampled_at)
    exp_calls, _ = expected(capture, fed, aligned(t0 - BT - GRACE, BT))
    got = per_queryid(s)
    for sid, q in QID.items():
        if not sid.startswith("error"):
            assert got[q] == exp_calls[q], sid
    now = epoch(resume.sampled_at)
    visible = {epoch(r.split(",")[1]) for r in resume.records}
    expected_missed = sum(
        1 for b in range(wm + BT, oldest_visible_start(now, BT, MB), BT) if b not in visible
    )
    assert expected_missed >= 2
    # the capture's two resets and its restart are fed too (as in the replay test)
    assert s.state.totals.buckets_lost == {"expired": expected_missed, "reset": 2, "restart": 2}
    assert_monotonic(snaps)
    print(  # noqa: T201
        f"\nmissed buckets: {expected_missed}; select calls ingested {got[QID['select_accounts']]:.0f}")


async def test_new_system_identifier_reprimes_without_negative_or_doubled_increments(
    pg15: PgInstance, replay_db: str, capture: loader.Capture, tmp_path: Path
) -> None:
    cut = next(i for i, t in enumerate(capture.ticks) if t.sampled_at.startswith("2026-11-24 05:49:20"))
    snaps: list[dict[tuple[str, ...], float]] = []
    with admin_conn(pg15, replay_db) as admin:
        ctx = make_ctx(pg15, replay_db, tmp_path)
        s = Sampler(ctx)
        await feed(ctx, s, admin, capture, capture.ticks[:cut], snaps, sysid=1)
        before = per_queryid(s)[QID["select_accounts"]]
        await feed(ctx, s, admin, capture, capture.ticks[cut : cut + 1], snaps, sysid=2)
        # the new server's first read only primes: nothing added
        assert per_queryid(s)[QID["select_accounts"]] == before
        await feed(ctx, s, admin, capture, capture.ticks[cut + 1 :], snaps, sysid=2)
    assert s.health.source_resets.get("server_changed") == 1
    assert_monotonic(snaps)
    t0 = epoch(capture.ticks[0].sampled_at)
    full, _ = expected(capture, capture.ticks, aligned(t0 - BT - GRACE, BT))
    assert per_queryid(s)[QID["select_accounts"]] <= full[QID["select_accounts"]]  # never doubled


@pytest.mark.parametrize("source", ["auto", "pg_stat_monitor"])
async def test_pgsm_not_preloaded_is_a_read_failure_and_auto_falls_back_to_pgss(
    pg15: PgInstance, tmp_path: Path, source: str
) -> None:
    """Created but not in shared_preload_libraries: the real extension then has no settings in
    pg_settings (its _PG_init returns early) and every read raises; the stand-in shows the same."""
    with pg15.connect() as admin:
        loader.install(admin, "pgsm_unloaded", loaded=False)
    with admin_conn(pg15, "pgsm_unloaded") as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    ctx = make_ctx(pg15, "pgsm_unloaded", tmp_path, source=source, interval="200ms")
    if source == "auto":
        s = await run_sampler_until(ctx, lambda s: s.health.source == "pg_stat_statements" and s.health.reads >= 1, limit=15)
        assert s.health.fallback is not None and "shared_preload_libraries" in s.health.fallback
        assert s.unavailable is None
    else:
        s = await run_sampler_until(ctx, lambda s: s.health.read_failures["error"] >= 2, limit=15)  # retried, not crashed
        assert s.unavailable is not None and "shared_preload_libraries" in s.unavailable
        assert s.health.source is None or s.health.source == "pg_stat_monitor"
    status = ctx.status_sections["sampler"]()
    assert status["read_failures"]["error"] >= 1 and status["fallback"] == s.health.fallback
    assert s.health.postgres_outages == 0
    assert ctx.registry.get_sample_value("pgnode_sampler_read_failures_total", {"reason": "error"}) >= 1


async def test_a_read_past_statement_timeout_is_a_timeout_not_an_outage(
    pg15: PgInstance, replay_db: str, tmp_path: Path
) -> None:
    ctx = make_ctx(pg15, replay_db, tmp_path, interval="200ms")
    ctx.config = config_mod.parse({
        "node": {"name": "n1", "state_dir": str(tmp_path)}, "etcd": {"scope": "s"},
        "postgres": {"host": str(pg15.socket_dir), "port": pg15.port, "user": "postgres", "dbname": replay_db,
                     "statement_timeout": "1s", "lock_timeout": "30s"},
        "sampler": {"grace": "1s", "interval": "200ms", "labels": ["datname"]}})
    with admin_conn(pg15, replay_db) as blocker:
        blocker.autocommit = False
        blocker.execute("LOCK TABLE pgsm_standin.entries IN ACCESS EXCLUSIVE MODE")  # the read waits
        s = await run_sampler_until(ctx, lambda s: s.health.read_failures["timeout"] >= 1, limit=15)
        blocker.rollback()
    assert s.unavailable is not None and s.unavailable.startswith("read timed out (statement_timeout)")
    assert s.health.postgres_outages == 0
    assert ctx.registry.get_sample_value("pgnode_sampler_read_failures_total", {"reason": "timeout"}) >= 1
    assert s.health.source == "pg_stat_monitor"  # a slow read is retried, not a reason to switch source
