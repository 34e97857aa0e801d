from agent.sampler.deltas import Entry, PgssDeltas
from agent.sampler.totals import NFIELDS

K1 = (10, 5, 111, True)
K2 = (10, 5, 222, True)


def e(q: str, calls: float) -> Entry:
    v = [0.0] * NFIELDS
    v[0] = calls
    return Entry(q, ("db",), v)


def calls(res: object) -> dict[str, float]:
    return {r.queryid: r.values[0] for r in res.rows}  # type: ignore[attr-defined]


def test_first_read_primes_without_increments() -> None:
    d = PgssDeltas()
    res = d.apply({K1: e("111", 50)}, "t0", 0)
    assert res.primed and res.rows == []


def test_increments_are_differences_and_new_entries_count_whole() -> None:
    d = PgssDeltas()
    d.apply({K1: e("111", 50)}, "t0", 0)
    res = d.apply({K1: e("111", 70), K2: e("222", 3)}, "t0", 0)
    assert calls(res) == {"111": 20, "222": 3}


def test_stats_reset_takes_current_values_and_never_goes_negative() -> None:
    d = PgssDeltas()
    d.apply({K1: e("111", 50)}, "t0", 0)
    res = d.apply({K1: e("111", 60)}, "t1", 0)  # reset, then 60 new calls (more than before)
    assert res.reset and calls(res) == {"111": 60}


def test_recreated_entry_after_dealloc_counts_its_current_value() -> None:
    d = PgssDeltas()
    d.apply({K1: e("111", 50)}, "t0", 0)
    res = d.apply({K1: e("111", 4)}, "t0", 7)
    assert res.dealloc == 7 and res.recreated == 1 and calls(res) == {"111": 4}


def test_toplevel_and_nested_entries_are_separate_keys() -> None:
    d = PgssDeltas()
    nested = (10, 5, 111, False)
    d.apply({K1: e("111", 1), nested: e("111", 1)}, "t0", 0)
    res = d.apply({K1: e("111", 2), nested: e("111", 5)}, "t0", 0)
    assert sorted(r.values[0] for r in res.rows) == [1, 4]


def test_deltas_state_round_trips() -> None:
    import json

    d = PgssDeltas()
    d.apply({K1: e("111", 50)}, "t0", 2)
    back = PgssDeltas.from_json(json.loads(json.dumps(d.to_json())))
    assert back.apply({K1: e("111", 55)}, "t0", 2).rows[0].values[0] == 5
