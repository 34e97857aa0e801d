import json

import pytest

from agent.sampler.deltas import DeltaResult, Entries, Key, PgssDeltas
from agent.sampler.totals import NFIELDS

K1 = (10, 5, 111, True)
K2 = (10, 5, 222, True)


def read(*entries: tuple[Key, float]) -> Entries:
    """One read as pg_stat_statements.READ rows: dbid, userid, queryid, toplevel, datname, username, values."""
    e = Entries(("datname",))
    rows = []
    for (user, db, qid, top), calls in entries:
        v = [0.0] * NFIELDS
        v[0], v[1] = calls, calls / 100
        rows.append((db, user, qid, top, "db", "u", *v))
    e.add_rows(rows)
    return e


class Chain:
    """Successive reads, each compared with the baseline the previous one returned."""

    def __init__(self, d: PgssDeltas | None = None) -> None:
        self.d = d or PgssDeltas()

    def apply(self, cur: Entries, stats_reset: str | None, dealloc: int | None) -> DeltaResult:
        before = self.d
        res = before.apply(cur, stats_reset, dealloc)
        assert self.d is before  # the old baseline is left as it was
        assert res.baseline.prev is cur or not cur.ordered  # a read in key order is kept as it was read
        self.d = res.baseline
        return res

    def to_json(self) -> dict[str, object]:
        return self.d.to_json()


def calls(res: DeltaResult) -> dict[str, float]:
    b = res.batch
    return {qid: b.values(i)[0] for i, qid in enumerate(b.qids)}


def test_first_read_primes_without_increments() -> None:
    d = Chain()
    res = d.apply(read((K1, 50)), "t0", 0)
    assert res.primed and len(res.batch) == 0


def test_increments_are_differences_and_new_entries_count_whole() -> None:
    d = Chain()
    d.apply(read((K1, 50), (K2, 7)), "t0", 0)
    res = d.apply(read((K1, 70), (K2, 7), ((10, 5, 333, True), 3)), "t0", 0)
    assert calls(res) == {"111": 20, "333": 3}   # 222 did not run: no row
    assert (res.batch.qids[0], res.batch.labels[0]) == ("111", ("db",))
    assert res.batch.values(0)[1] == pytest.approx(0.2)


def test_stats_reset_takes_current_values_and_never_goes_negative() -> None:
    d = Chain()
    d.apply(read((K1, 50)), "t0", 0)
    res = d.apply(read((K1, 60)), "t1", 0)  # reset, then 60 new calls (more than before)
    assert res.reset and calls(res) == {"111": 60}


def test_recreated_entry_after_dealloc_counts_its_current_value() -> None:
    d = Chain()
    d.apply(read((K1, 50)), "t0", 0)
    res = d.apply(read((K1, 4)), "t0", 7)
    assert res.dealloc == 7 and res.recreated == 1 and calls(res) == {"111": 4}


def test_toplevel_and_nested_entries_are_separate_keys() -> None:
    d = Chain()
    nested = (10, 5, 111, False)
    d.apply(read((K1, 1), (nested, 1)), "t0", 0)
    res = d.apply(read((K1, 2), (nested, 5)), "t0", 0)
    assert calls(res) == {"111": 5}   # both increments, summed into one aggregate: 1 + 4


def test_a_duplicate_key_in_one_read_replaces_the_earlier_row() -> None:
    d = Chain()
    d.apply(read((K1, 10)), "t0", 0)
    assert calls(d.apply(read((K1, 12), (K1, 15)), "t0", 0)) == {"111": 5}


def test_deltas_state_round_trips() -> None:
    d = Chain()
    d.apply(read((K1, 50)), "t0", 2)
    back = Chain(PgssDeltas.from_json(json.loads(json.dumps(d.to_json()))))
    assert calls(back.apply(read((K1, 55)), "t0", 2)) == {"111": 5}


def test_state_of_another_field_count_reprimes_without_losing_the_rest() -> None:
    back = PgssDeltas.from_json({"prev": [[list(K1), [1.0, 2.0]]], "stats_reset": "t0", "dealloc": 3})
    assert back.prev is None and back.stats_reset == "t0"
    assert back.apply(read((K1, 5)), "t0", 3).primed   # the next read primes: nothing double counted


def read_since(key: Key, calls: float, since: float | None) -> Entries:
    e = Entries(("datname",))
    v = [0.0] * NFIELDS
    v[0] = calls
    user, db, qid, top = key
    e.add_rows([(db, user, qid, top, "db", "u", *v, since)])
    return e


def test_a_new_stats_since_means_recreated_even_when_counters_went_up() -> None:
    d = Chain()
    d.apply(read_since(K1, 8, 1000.0), "t0", 0)
    res = d.apply(read_since(K1, 12, 2000.0), "t0", 0)
    assert res.recreated == 1 and calls(res) == {"111": 12}
    assert calls(d.apply(read_since(K1, 15, 2000.0), "t0", 0)) == {"111": 3}


def test_stats_since_survives_the_state_file() -> None:
    d = Chain()
    d.apply(read_since(K1, 8, 1000.0), "t0", 0)
    back = Chain(PgssDeltas.from_json(json.loads(json.dumps(d.to_json()))))
    assert calls(back.apply(read_since(K1, 12, 2000.0), "t0", 0)) == {"111": 12}


@pytest.mark.parametrize("key", [(10, 5, 111, True), (0, 0, 0, False), (2**32 - 1, 2**32 - 1, -(2**63), True),
                                 (4294967295, 1, 2**63 - 1, False), (16384, 5, -8639341098027464141, True)])
def test_an_extreme_key_survives_the_state_file_and_meets_the_next_read(key: Key) -> None:
    d = Chain()
    d.apply(read((K1, 1), (key, 2), (K2, 1)), "t0", 0)
    back = Chain(PgssDeltas.from_json(json.loads(json.dumps(d.to_json()))))
    assert calls(back.apply(read((K1, 1), (key, 7), (K2, 1)), "t0", 0)) == {str(key[2]): 5}


KEYS = [(10, 5, 111, True), (10, 5, 111, False), (11, 5, 111, True), (10, 6, 111, True), (10, 5, -(2**63), True),
        (2**32 - 1, 0, 2**63 - 1, False), (0, 2**32 - 1, 2**63 - 1, False), (10, 5, 222, True)]


def test_reads_in_any_row_order_give_the_same_increments() -> None:
    """The read's ORDER BY only saves sorting here: a read that arrives in another order (or a
    state file of an older agent, in row order) is merged the same."""
    first = [(k, 10.0 + i) for i, k in enumerate(KEYS)]
    second = [(k, 10.0 + i + (i % 3)) for i, k in enumerate(KEYS)] + [((1, 2, 333, True), 4.0)]
    want = None
    for order in (sorted, lambda xs: list(reversed(sorted(xs))), lambda xs: xs[3:] + xs[:3]):
        d = Chain()
        d.apply(read(*order(first)), "t0", 0)
        res = d.apply(read(*order(second)), "t0", 0)
        got = sorted((qid, tuple(res.batch.values(i))) for i, qid in enumerate(res.batch.qids))
        assert want is None or got == want
        want = got
    assert want is not None and dict((q, v[0]) for q, v in want) == {"111": 0 + 1 + 2 + 0, str(-(2**63)): 1,
                                                                      str(2**63 - 1): 2 + 0, "222": 1, "333": 4}


def test_a_read_in_key_order_is_not_copied() -> None:
    e = read(*[(k, 1.0) for k in sorted(KEYS, key=lambda k: (k[2], k[1], k[0], k[3]))])
    assert e.ordered and e.in_order() is e
    assert not read((K2, 1), (K1, 1)).ordered


def test_a_queryid_run_by_two_users_in_two_databases_sums_per_label_set() -> None:
    """Labelled by user only, a queryid's entries (in key order: by database, then user) make
    one aggregate per user, whatever lies between that user's entries."""
    def by_user(calls: dict[tuple[int, str], float]) -> Entries:
        e = Entries(("username",))
        rows = []
        for (db, user), n in calls.items():
            v = [0.0] * NFIELDS
            v[0] = n
            rows.append((db, 10 if user == "a" else 11, 111, True, f"db{db}", user, *v))
        e.add_rows(rows)
        return e

    d = Chain()
    d.apply(by_user({(1, "a"): 1, (1, "b"): 1, (2, "a"): 1, (2, "b"): 1}), "t0", 0)
    res = d.apply(by_user({(1, "a"): 2, (1, "b"): 4, (2, "a"): 9, (2, "b"): 1}), "t0", 0)
    got = {(res.batch.qids[i], res.batch.labels[i]): res.batch.values(i)[0] for i in range(len(res.batch))}
    assert got == {("111", ("a",)): 1 + 8, ("111", ("b",)): 3 + 0}
