import pytest

from agent.sampler.totals import FIELDS, NFIELDS, OTHER, Batch, QueryRow, Totals


def row(
    q: str,
    calls: float,
    exec_s: float,
    labels: tuple[str, ...] = ("db", "u"),
    resp: list[float] | None = None,
) -> QueryRow:
    v = [0.0] * NFIELDS
    v[0], v[1] = calls, exec_s
    return QueryRow(q, labels, v, resp)


def calls(t: Totals) -> dict[tuple[str, ...], float]:
    return {k: v[0] for k, v in t.series.items()}


def test_two_users_with_the_same_query_in_one_bucket_are_both_counted() -> None:
    t = Totals(("datname",))
    t.add(Batch.of([row("1", 3, 0.1, ("db",)), row("1", 4, 0.1, ("db",))]), top_n=10, max_series=100)
    assert calls(t) == {("1", "db"): 7}


def test_top_n_keep_their_queryid_and_the_rest_fold_into_other() -> None:
    t = Totals(("d", "u"))
    folded = t.add(Batch.of([row("a", 1, 3.0), row("b", 1, 2.0), row("c", 5, 1.0)]), top_n=2, max_series=100)
    assert calls(t) == {("a", "db", "u"): 1, ("b", "db", "u"): 1, (OTHER, "db", "u"): 5}
    assert folded == 1 and t.series_folded == 1


def test_a_promoted_queryid_keeps_its_series_and_never_decreases() -> None:
    t = Totals(("d", "u"))
    t.add(Batch.of([row("a", 1, 3.0), row("b", 1, 2.0)]), top_n=2, max_series=100)
    before = calls(t)
    # c now dominates but there is no free slot: a and b keep accumulating, c goes to other
    t.add(Batch.of([row("a", 1, 0.0), row("c", 9, 99.0)]), top_n=2, max_series=100)
    after = calls(t)
    assert all(after[k] >= v for k, v in before.items())
    assert after[("a", "db", "u")] == 2 and after[(OTHER, "db", "u")] == 9


def test_ten_thousand_statements_fold_to_max_series_with_sums_preserved() -> None:
    t = Totals(("d", "u"))
    rows = [row(str(i), i % 7 + 1, float(i % 13), labels=("db", f"user{i % 50}")) for i in range(10_000)]
    t.add(Batch.of(rows), top_n=100, max_series=300)
    assert len(t.series) <= 301  # the all-"other" series may be the one beyond the cap
    assert sum(v[0] for v in t.series.values()) == sum(r.values[0] for r in rows)


def test_histogram_count_equals_calls_per_label_set() -> None:
    t = Totals(("d", "u"))
    t.set_bounds((0.001, 0.01, float("inf")))
    t.add(Batch.of([row("a", 3, 0.002, resp=[2, 1, 0]), row("b", 2, 0.5, resp=[0, 0, 2])]), top_n=1, max_series=100)
    h = t.hist[("db", "u")]
    assert sum(h[:-1]) == sum(v[0] for v in t.series.values()) == 5
    assert h[-1] == 0.502


def test_relabel_starts_new_series_and_keeps_errors() -> None:
    t = Totals(("d", "u"))
    t.add(Batch.of([row("a", 1, 1.0)]), top_n=1, max_series=10)
    t.add_errors([("21", "22012", 3)])
    assert t.relabeled(("d", "u")) is t  # the same labels: nothing to do
    r = t.relabeled(("d",))
    assert r.label_names == ("d",) and r.series == {} and r.errors == {("21", "22012"): 3}
    assert t.label_names == ("d", "u") and len(t.series) == 1  # a published Totals is left as it was


def test_state_round_trips_through_json() -> None:
    import json

    t = Totals(("d", "u"))
    t.set_bounds((0.001, float("inf")))
    t.add(Batch.of([row("a", 1, 1.0, resp=[1, 0])]), top_n=1, max_series=10)
    t.add_errors([("21", "42P01", 2)])
    t.add_warnings([("25P01", 1)])
    t.add_lost({"expired": 4, "reset": 1})
    back = Totals.from_json(json.loads(json.dumps(t.to_json())))
    assert back == t
    assert len(FIELDS) == NFIELDS


def test_state_written_before_loss_reasons_keeps_its_missed_buckets_as_expired() -> None:
    d = Totals(("d",)).to_json()
    del d["buckets_lost"], d["warnings"]
    d["buckets_missed"] = 3
    assert Totals.from_json(d).buckets_lost == {"expired": 3}


def test_a_batch_filled_by_append_refuses_an_unindexed_add() -> None:
    """append() keeps no index (its producer sums its own rows): a later add() could not find
    the aggregate and would count it twice, so it is refused."""
    b = Batch()
    i = b.append("1", ("db",), [1.0] * NFIELDS)
    b.add_to(i, [2.0] * NFIELDS)
    assert len(b) == 1 and b.values(0)[0] == 3.0
    with pytest.raises(RuntimeError):
        b.add("1", ("db",), [1.0] * NFIELDS, None)


def test_a_batch_is_emptied_in_slices() -> None:
    from agent.sampler.totals import STRIDE

    b = Batch()
    n = STRIDE * 8 * 3 + 5
    for i in range(n):
        b.add(str(i), ("db",), [1.0] * NFIELDS, [1.0, 2.0])
    pauses = sum(1 for _ in b.dropping())
    assert len(b) == 0 and not b.qids and not b.labels and not b.resp and len(b.vals) == 0
    assert pauses >= 6  # 4 chunks of the index, 4 of the lists: never all at once
