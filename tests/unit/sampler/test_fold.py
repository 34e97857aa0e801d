"""The sampler's seam: a read's fold gives the next state and what to count, and leaves the state
it was given as it was (a scrape or the state file's writer may be reading it meanwhile)."""

from __future__ import annotations

from dataclasses import replace

from agent.core.slices import drain
from agent.sampler import persist
from agent.sampler.buckets import ReadPlan, Watch
from agent.sampler.deltas import Entries, PgssDeltas
from agent.sampler.pg_stat_monitor import Batches, PgsmRead, PgsmSettings
from agent.sampler.pg_stat_statements import PgssRead
from agent.sampler.source import Idle, Limits, identity_seen
from agent.sampler.totals import NFIELDS, Totals

LIMITS = Limits(interval=10.0, grace=1.0, top_n=10, max_series=100)
LABELS = ("datname",)


def entries(*calls: tuple[int, float]) -> Entries:
    e = Entries(LABELS)
    rows = []
    for qid, n in calls:
        v = [0.0] * NFIELDS
        v[0], v[1] = n, n / 100
        rows.append((5, 10, qid, True, "db", "u", *v))
    e.add_rows(rows)
    return e


def pgss_read(e: Entries, stats_reset: str = "t0") -> PgssRead:
    return PgssRead(e, stats_reset, 0, rows=len(e), duration=0.01, wait=LIMITS.interval)


def test_a_pgss_fold_counts_increments_into_a_new_state_and_leaves_the_old_one() -> None:
    st = persist.SamplerState(totals=Totals(LABELS))
    primed = drain(pgss_read(entries((1, 5), (2, 3))).fold(st, LIMITS))
    assert primed.state.pgss.prev is not None and primed.state.totals.series == {}
    assert [e[1] for e in primed.events] == ["sampler_pgss_primed"] and primed.resets == ()
    before = persist.encode(primed.state)
    f = drain(pgss_read(entries((1, 9), (2, 3))).fold(primed.state, LIMITS))
    assert persist.encode(primed.state) == before  # the state folded from is unchanged
    assert {k: v[0] for k, v in f.state.totals.series.items()} == {("1", "db"): 4.0}
    reset = drain(pgss_read(entries((1, 2)), stats_reset="t1").fold(f.state, LIMITS))
    assert reset.resets == (("stats_reset", 1),)  # counted by the component, from here only
    assert {k: v[0] for k, v in reset.state.totals.series.items()} == {("1", "db"): 6.0}


def pgsm_row(bucket: int, qid: str | None, elevel: int, sqlcode: str, calls: float) -> tuple[object, ...]:
    resp = ",".join([str(int(calls)), "0"]) if qid is not None else None
    return (float(bucket), qid, elevel, sqlcode, resp, None, "db", calls, *([0.0] * (NFIELDS - 1)))


def test_a_pgsm_fold_moves_the_watermark_counts_errors_and_losses_in_a_new_state() -> None:
    settings = PgsmSettings("2.3.2", "2.3", bucket_time=60, max_buckets=10, le=(0.001, float("inf")))
    b = Batches(len(LABELS))
    b.add_rows([pgsm_row(1200, "7", 0, "", 4), pgsm_row(1200, "8", 21, "22012", 2)])
    st = persist.SamplerState(totals=Totals(LABELS), watermark=1140, pgsm=Watch(read_at=1200.0))
    before = persist.encode(st)
    # read at 2000: buckets 1200..1320 are in the plan, 1260 and 1320 were not seen and have
    # expired (retention then starts at 1980 - 9 x 60 = 1440)
    f = drain(PgsmRead(settings, ReadPlan(lo=1140, hi=1320), 2000.0, b, duration=0.05, wait=5.0).fold(st, LIMITS))
    assert persist.encode(st) == before
    t = f.state.totals
    assert f.state.watermark == 1320 and f.ingested_bucket == 1320 and t.le == settings.le
    assert {k: v[0] for k, v in t.series.items()} == {("7", "db"): 4.0}
    assert t.errors == {("21", "22012"): 2.0} and t.buckets_lost == {"expired": 2}
    assert sum(t.hist[("db",)][:-1]) == 4.0
    assert f.state.pgsm.seen == b.summary and f.state.pgsm.read_at == 2000.0
    assert [e[1] for e in f.events] == ["sampler_histogram_bounds_set", "sampler_buckets_lost"]


def test_nothing_due_leaves_the_state_and_says_why() -> None:
    st = persist.SamplerState(totals=Totals(LABELS), watermark=1320)
    f = drain(Idle(3.0, resets=(("clock_stepped_back", 1),)).fold(st, LIMITS))
    assert f.state is st and not f.changed and f.resets == (("clock_stepped_back", 1),)


def test_identity_changes_are_new_states_with_their_resets() -> None:
    st = persist.SamplerState(totals=Totals(LABELS), watermark=1320,
                              pgss=PgssDeltas(entries((1, 5)), "t0", 0), pgsm=Watch(seen={1320: (4.0, None)}))
    first = identity_seen(replace(st, identity=persist.Identity()), {"system_identifier": "s1",
                                                                       "postmaster_start": 100.0})
    assert first is not None and first.resets == () and first.state.identity == persist.Identity("s1", 100.0)
    st = first.state
    assert identity_seen(st, {"system_identifier": "s1", "postmaster_start": 100.0}) is None
    before = persist.encode(st)
    restart = identity_seen(st, {"system_identifier": "s1", "postmaster_start": 200.0})
    assert restart is not None and restart.resets == (("server_restart", 1),)
    assert restart.state.pgsm.restart_at == 200.0 and restart.state.pgsm.seen == {}
    assert restart.state.watermark == 1320  # buckets after it are new data
    other = identity_seen(st, {"system_identifier": "s2", "postmaster_start": 100.0})
    assert other is not None and other.resets == (("server_changed", 1),)
    assert other.state.watermark is None and other.state.pgss.prev is None
    assert persist.encode(st) == before
