from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from agent.core.config import Duration, RepackConfig, RepackWindow
from agent.repack.candidates import (
    Assessment,
    DatabaseFacts,
    TableFacts,
    assess,
    estimate_bloat,
    matches,
    order,
    to_measure,
)
from agent.repack.guards import Volume
from agent.repack.history import History
from agent.repack.trust import PublicSchema

MiB = 1024 * 1024
W = RepackWindow(cron="0 2 * * *", duration=Duration(3600), include=["public.*", "app.*"],
                 exclude=["app.audit_*"], min_table_bytes=10 * MiB, max_table_bytes=1000 * MiB,
                 bloat_ratio=0.3, min_interval=Duration(86400))
CFG = RepackConfig(min_free_disk_ratio=2.2)
DB = DatabaseFacts(extension_version="1.4.8", binary_version="1.4.8")
# 100 MiB heap holding 200k rows of 100 + 28 bytes: ~25.7 MB expected, 75 % bloat
T = TableFacts(database="db", oid=1, schema="public", table="t", heap_bytes=100 * MiB, total_bytes=120 * MiB,
               reltuples=200_000, row_width=100.0, dead_tuples=0, live_tuples=200_000,
               owner="postgres", owner_trusted=True)


def _assess(t: TableFacts = T, db: DatabaseFacts = DB, free: int = 10**12,
            last: float | None = None) -> Assessment:
    """`free`: bytes free on the one file system holding the data directory, the table and pg_wal."""
    t = dataclasses.replace(t, volumes=(Volume("/data", free, t.total_bytes, True),))
    return assess(t, db, W, CFG, last_success=last, now=1_000_000.0)


def test_bloated_table_with_a_key_is_eligible() -> None:
    a = _assess()
    assert a.eligible and a.method == "statistics" and 0.7 < a.bloat < 0.8


def test_pgstattuple_approx_figure_wins_over_statistics() -> None:
    bloat, method = estimate_bloat(dataclasses.replace(T, approx_bloat=0.42))
    assert (bloat, method) == (0.42, "pgstattuple_approx")


def test_statistics_estimate_of_a_tight_table_is_low() -> None:
    # 200k rows x 128 bytes = ~25.6 MB: a 26 MiB heap is hardly bloated
    bloat, _ = estimate_bloat(dataclasses.replace(T, heap_bytes=26 * MiB))
    assert bloat < 0.1


def test_never_analyzed_table_falls_back_to_dead_tuple_ratio() -> None:
    bloat, method = estimate_bloat(dataclasses.replace(T, reltuples=-1, row_width=None, dead_tuples=70,
                                                       live_tuples=30))
    assert (round(bloat, 2), method) == (0.7, "dead_tuples")


@pytest.mark.parametrize(("name", "ok"), [("public.t", True), ("app.orders", True), ("app.audit_2024", False),
                                          ("other.t", False)])
def test_include_and_exclude_globs(name: str, ok: bool) -> None:
    assert matches(name, W.include, W.exclude) is ok


@pytest.mark.parametrize(("change", "skip"), [
    ({"schema": "other"}, "excluded"),
    ({"total_bytes": 5 * MiB}, "too_small"),
    ({"total_bytes": 2000 * MiB}, "too_large"),
    ({"heap_bytes": 3 * MiB}, "below_bloat_ratio"),
])
def test_window_filters_skip_without_refusing(change: dict[str, object], skip: str) -> None:
    a = _assess(dataclasses.replace(T, **change))  # type: ignore[arg-type]
    assert a.skip == skip and not a.eligible


@pytest.mark.parametrize(("change", "reason"), [
    ({"has_key": False}, "no_primary_key"),
    ({"persistent": False}, "unlogged"),
    ({"invalid_index": True}, "invalid_index"),
    ({"deferrable_unique": True}, "deferrable_unique"),
    ({"vacuum_running": True}, "vacuum_running"),
    ({"xid_age": 190_000_000}, "relfrozenxid_age"),
])
def test_table_refusals_are_named(change: dict[str, object], reason: str) -> None:
    a = _assess(dataclasses.replace(T, **change))  # type: ignore[arg-type]
    assert a.refusals == [reason]


def test_a_table_of_an_owner_not_trusted_is_refused_unless_listed() -> None:
    app = dataclasses.replace(T, owner="app_owner", owner_trusted=False)
    a = _assess(app)
    assert a.refusals == ["untrusted_owner"] and a.details == {"owner": "app_owner"}
    trusting = dataclasses.replace(CFG, trusted_owners=["app_owner"])
    assert assess(app, DB, W, trusting, last_success=None, now=0.0).refusals == []


def test_a_table_whose_indexes_run_user_code_is_refused_even_for_a_trusted_owner() -> None:
    code = ("function public.f(integer)",)
    t = dataclasses.replace(T, owner="app_owner", owner_trusted=False, index_code=code)
    trusting = dataclasses.replace(CFG, trusted_owners=["app_owner"])
    a = assess(t, DB, W, trusting, last_success=None, now=0.0)
    assert a.refusals == ["index_user_code"] and a.details == {"index_code": list(code)}


def test_user_code_in_public_refuses_every_table_of_the_database_unless_its_owner_is_trusted() -> None:
    code = (("function public.pg_try_advisory_lock(text, integer)", "mallory"),
            ("operator public.=(character varying,character varying)", "app_owner"))
    a = _assess(db=dataclasses.replace(DB, public=PublicSchema(code=code)))
    assert a.refusals == ["public_user_code"]
    assert a.details == {"public_code": [code[0][0], code[1][0]]}
    trusting = dataclasses.replace(CFG, trusted_owners=["app_owner"])
    b = assess(T, dataclasses.replace(DB, public=PublicSchema(code=code)), W, trusting,
               last_success=None, now=0.0)
    assert b.details == {"public_code": [code[0][0]]}
    trusting_both = dataclasses.replace(CFG, trusted_owners=["app_owner", "mallory"])
    assert assess(T, dataclasses.replace(DB, public=PublicSchema(code=code)), W, trusting_both,
                  last_success=None, now=0.0).refusals == []


def test_a_database_whose_public_schema_a_role_not_trusted_may_write_is_refused() -> None:
    db = dataclasses.replace(DB, public=PublicSchema(writers=("app_owner", "mallory")))
    a = _assess(db=db)
    assert a.refusals == ["public_writable"] and a.details == {"public_writers": ["app_owner", "mallory"]}
    trusting = dataclasses.replace(CFG, trusted_owners=["app_owner", "mallory"])
    assert assess(T, db, W, trusting, last_success=None, now=0.0).refusals == []


def test_table_facts_without_an_owner_fail_closed() -> None:
    bare = TableFacts(database="db", oid=1, schema="public", table="t", heap_bytes=1, total_bytes=1,
                      reltuples=1, row_width=1.0, dead_tuples=0, live_tuples=1)
    assert "untrusted_owner" in _assess(bare).refusals


@pytest.mark.parametrize(("db", "reason"), [
    (DatabaseFacts(extension_version=None, binary_version="1.4.8"), "extension_missing"),
    (DatabaseFacts(extension_version="1.4.7", binary_version="1.4.8"), "version_mismatch"),
    (DatabaseFacts(extension_version="1.4.8", binary_version="1.4.8", all_tables_publication=True),
     "all_tables_publication"),
    (DatabaseFacts(extension_version="1.4.8", binary_version="1.4.8", logical_slot=True), "logical_slot"),
])
def test_database_refusals_are_named(db: DatabaseFacts, reason: str) -> None:
    assert _assess(db=db).refusals == [reason]


def test_not_enough_free_disk_is_refused() -> None:
    a = _assess(free=int(2.1 * T.total_bytes))
    assert a.refusals == ["insufficient_disk"]
    assert a.details == {"disk_path": "/data", "disk_free_bytes": int(2.1 * T.total_bytes),
                         "disk_needed_bytes": int(2.2 * T.total_bytes)}
    assert _assess(free=int(2.3 * T.total_bytes)).refusals == []


def test_a_tablespace_short_of_space_is_refused_by_its_path_though_the_data_directory_has_room() -> None:
    # the measure of the run's disk guard before a start: the copy where the table lives, WAL in pg_wal
    t = dataclasses.replace(T, volumes=(Volume("/data", 10**12, 0, True), Volume("/spc", T.total_bytes, T.total_bytes, False)))
    a = assess(t, DB, W, CFG, last_success=None, now=1_000_000.0)
    assert a.refusals == ["insufficient_disk"] and a.details["disk_path"] == "/spc"
    roomy = dataclasses.replace(t, volumes=(t.volumes[0], Volume("/spc", int(1.2 * T.total_bytes), T.total_bytes, False)))
    assert assess(roomy, DB, W, CFG, last_success=None, now=1_000_000.0).refusals == []


def test_repacked_recently_is_refused_until_the_interval_has_passed() -> None:
    assert _assess(last=1_000_000.0 - 3600).refusals == ["repacked_recently"]
    assert _assess(last=1_000_000.0 - 90_000).refusals == []


def test_most_reclaimable_bytes_first() -> None:
    small = _assess(dataclasses.replace(T, table="small", heap_bytes=20 * MiB))
    big = _assess()
    assert [a.facts.table for a in order([small, big])] == ["t", "small"]


def test_a_table_the_rest_of_the_window_cannot_hold_is_refused() -> None:
    # 120 MiB at this node's 2 MiB/s is 60 s, x 1.5 margin = 90 s
    def refusals(seconds_left: float, throughput: float | None = 2 * MiB) -> list[str]:
        return assess(T, DB, W, CFG, last_success=None, now=1_000_000.0,
                      throughput=throughput, seconds_left=seconds_left).refusals

    assert refusals(89) == ["window_too_short"]
    assert refusals(91) == []
    assert refusals(1, throughput=None) == []   # no earlier run: nothing to estimate with


def test_throughput_is_the_median_of_recent_big_enough_runs(tmp_path: Path) -> None:
    h = History.load(tmp_path / "repack.json")
    assert h.throughput() is None
    h.record("db/public.a", "success", 1.0, total_bytes=100 * MiB, duration=10.0)    # 10 MiB/s
    h.record("db/public.b", "success", 2.0, total_bytes=100 * MiB, duration=50.0)    # 2 MiB/s
    h.record("db/public.c", "success", 3.0, total_bytes=60 * MiB, duration=10.0)     # 6 MiB/s
    h.record("db/public.d", "success", 4.0, total_bytes=1024, duration=10.0)         # too small to say
    h.record("db/public.e", "aborted", 5.0, total_bytes=100 * MiB, duration=1.0)     # not a success
    back = History.load(tmp_path / "repack.json")
    assert back.throughput() == 6 * MiB
    for i in range(10):
        back.record(f"db/public.s{i}", "success", 10.0 + i, total_bytes=1 * MiB, duration=1.0)    # 1 MiB/s
    for i in range(6):
        back.record(f"db/public.f{i}", "success", 30.0 + i, total_bytes=10 * MiB, duration=1.0)   # 10 MiB/s
    # only the last 10 runs count: 4 slow, 6 fast -> 10 MiB/s (all 19 would give 1 MiB/s)
    assert History.load(tmp_path / "repack.json").throughput() == 10 * MiB


def test_a_damaged_rates_list_keeps_the_tables_history(tmp_path: Path) -> None:
    path = tmp_path / "repack.json"
    path.write_text('{"tables": {"db/public.a": {"last_success": 5.0}}, "rates": null}')
    h = History.load(path)
    assert h.last_success("db/public.a") == 5.0 and h.throughput() is None


def test_dead_tuples_since_the_last_analyze_raise_the_statistics_estimate() -> None:
    # reltuples says tight, but 70 % of the tuples counted since are dead
    bloat, method = estimate_bloat(dataclasses.replace(T, heap_bytes=26 * MiB, dead_tuples=70, live_tuples=30))
    assert (round(bloat, 2), method) == (0.7, "statistics")


def test_a_failed_measurement_keeps_the_statistics_estimate_and_says_so() -> None:
    bloat, method = estimate_bloat(dataclasses.replace(T, approx_failed="timeout"))
    assert 0.7 < bloat < 0.8 and method == "statistics; pgstattuple_approx timeout"
    assert _assess(dataclasses.replace(T, approx_failed="timeout")).eligible


def test_only_the_best_ranked_tables_in_the_filters_are_measured() -> None:
    def t(name: str, heap_mib: int, **kw: object) -> Assessment:
        return _assess(dataclasses.replace(T, table=name, heap_bytes=heap_mib * MiB, **kw))  # type: ignore[arg-type]

    items = [t("a", 100), t("b", 200), t("c", 150), t("d", 400), t("refused", 900, has_key=False),
             t("tiny", 100, total_bytes=1), t("stale", 26), t("tried", 800)]
    items[-1] = dataclasses.replace(items[-1], skip="tried")
    assert [a.facts.table for a in to_measure(items, 3)] == ["d", "b", "c"]
    # a statistics estimate under the ratio may be stale: such a table is still worth measuring
    assert [a.facts.table for a in to_measure(items, 10)] == ["d", "b", "c", "a", "stale"]


def test_a_table_under_an_exclusive_lock_is_refused_by_that_name_alone() -> None:
    a = _assess(dataclasses.replace(T, locked=True, heap_bytes=0, total_bytes=0))
    assert a.refusals == ["locked"] and not a.skip
    assert _assess(dataclasses.replace(T, locked=True, schema="other")).skip == "excluded"
