"""pg_stat_statements: cumulative counters per entry into increments, with reset detection.

Pure: the caller streams the view's rows into `Entries` and reads `pg_stat_statements_info`;
this decides what is new. An entry is keyed by the view's own identity, as (userid, dbid,
queryid, toplevel). The previous read is kept as it was read (`Entries`: arrays of machine
numbers, one array of doubles for all values), so the state between reads costs ~0.2 KB an
entry and no Python object per entry: a read is in key order (the read's ORDER BY, checked
here), and a delta is a merge of two sorted reads instead of a lookup in an index.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.core.slices import Slices, drain
from agent.sampler.totals import CALLS, NFIELDS, Batch

log = structlog.get_logger("sampler")

Key = tuple[int, int, int, bool]  # (userid, dbid, queryid, toplevel)
APPLY_STRIDE = 64  # entries between two pauses: ~13 us each when every entry ran (bench/)

# Row layout of pg_stat_statements' read: dbid, userid, queryid, toplevel, datname, username,
# then the NFIELDS values in the order of totals.FIELDS, then stats_since (epoch s, or None
# before pgss 1.11; a shorter row has none either).
FIRST_VALUE = 6
SINCE = FIRST_VALUE + NFIELDS
NO_SINCE = float("nan")


class Entries:
    """One read of pg_stat_statements: entry i's key in qids/dbs/users/tops[i], its values at
    vals[i * NFIELDS:(i + 1) * NFIELDS], label tuples shared.

    Entries are merged in the order (queryid, dbid, userid, toplevel), the order of the read's
    ORDER BY (both sides compare signed 64-bit queryids, unsigned oids, false before true).
    `put` notes whether what came stays in that order without a repeated key; `in_order()`
    sorts only when it did not (a reordered source, a state file of an older agent): the delta
    never depends on the server's sort, only the memory does. Per entry: ~0.2 KB of arrays and
    no Python object (a dict index cost ~0.1 KB more in three objects per entry, 20k objects
    between reads at 10k statements, and fragmented the heap)."""

    __slots__ = ("_label_cache", "_last", "_names", "dbs", "labels", "ordered", "qids", "since", "tops",
                 "users", "vals")

    def __init__(self, label_names: tuple[str, ...] = ()) -> None:
        self._names = label_names
        self._label_cache: dict[tuple[str, str], tuple[str, ...]] = {}
        self.qids: array[int] = array("q")
        self.dbs: array[int] = array("I")  # oids: unsigned 32-bit
        self.users: array[int] = array("I")
        self.tops: array[int] = array("B")
        self.labels: list[tuple[str, ...]] = []
        self.vals: array[float] = array("d")
        self.since: array[float] = array("d")  # per entry: stats_since, NaN when unknown
        self.ordered = True  # every key so far greater than the one before
        self._last: tuple[int, int, int, int] | None = None

    def add_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        names, cache = self._names, self._label_cache
        for r in rows:
            raw = (r[4], r[5])
            labels = cache.get(raw)
            if labels is None:
                found = {"datname": r[4], "username": r[5]}
                labels = cache[raw] = tuple(found.get(n, "") for n in names)
            since = r[SINCE] if len(r) > SINCE and r[SINCE] is not None else NO_SINCE
            self.put((int(r[1]), int(r[0]), int(r[2]), bool(r[3])), labels, r[FIRST_VALUE:SINCE], since)

    def put(self, key: Key, labels: tuple[str, ...], values: Sequence[float], since: float = NO_SINCE) -> None:
        """Appends an entry; a repeated key replaces the earlier one (in `in_order()`), as a dict would."""
        user, db, qid, top = key
        k = (qid, db, user, 1 if top else 0)
        if self.ordered and self._last is not None and k <= self._last:
            self.ordered = False
        self._last = k
        self.qids.append(qid)
        self.dbs.append(db)
        self.users.append(user)
        self.tops.append(k[3])
        self.labels.append(labels)
        self.vals.extend(values)
        self.since.append(since)

    def key(self, i: int) -> Key:
        return self.users[i], self.dbs[i], self.qids[i], bool(self.tops[i])

    def values(self, i: int) -> array[float]:
        return self.vals[i * NFIELDS:(i + 1) * NFIELDS]

    def __len__(self) -> int:
        return len(self.qids)

    def in_order(self) -> Entries:
        """Self when in key order without a repeated key, else a sorted copy holding the last
        row of each key."""
        if self.ordered:
            return self
        q, d, u, t = self.qids, self.dbs, self.users, self.tops
        order = sorted(range(len(self)), key=lambda i: (q[i], d[i], u[i], t[i]))  # stable: last row last
        out = Entries(self._names)
        for n, i in enumerate(order):
            if n + 1 < len(order) and (q[i], d[i], u[i], t[i]) == (q[order[n + 1]], d[order[n + 1]],
                                                                  u[order[n + 1]], t[order[n + 1]]):
                continue  # a later row of the same key replaces this one
            out.put(self.key(i), self.labels[i], self.values(i), self.since[i])
        return out


@dataclass
class DeltaResult:
    baseline: PgssDeltas  # what the next read is compared with
    batch: Batch = field(default_factory=Batch)  # the increments, summed per (queryid, labels)
    primed: bool = False
    reset: bool = False  # stats_reset moved: every entry restarted from zero
    dealloc: int = 0  # entries evicted since the last read (pgss.max reached)
    recreated: int = 0  # entries whose counters went down: evicted and recreated


@dataclass(frozen=True)
class PgssDeltas:
    """The baseline: the last read as it was read, never changed (`apply` returns the next)."""

    prev: Entries | None = None
    stats_reset: str | None = None
    dealloc: int | None = None

    def apply(self, cur: Entries, stats_reset: str | None, dealloc: int | None) -> DeltaResult:
        return drain(self.applying(cur, stats_reset, dealloc))

    def applying(self, cur: Entries, stats_reset: str | None, dealloc: int | None) -> Slices[DeltaResult]:
        """Increments since the last read, and the baseline for the next (`cur`, which the
        caller hands over: it must not change after this). Pauses every STRIDE entries
        (agent/core/slices.py); a read out of key order (never from the read's ORDER BY) is
        sorted first, in one piece.

        - First read (no state): prime only; counting the whole history would double what an
          earlier life of the agent exported.
        - `stats_reset` changed: every present entry was created after the reset, so its whole
          value is new. What ran between our last read and the reset is lost, not guessed.
        - `stats_since` changed (pgss 1.11+, PG17): the entry was evicted and recreated since
          the last read; its current value is all new, even when it is above the old one.
        - Any counter lower than before: the same, recreated; before 1.11 this is the only sign,
          and an entry recreated *above* its old value is undetectable there.
        - A key not seen before: new since the last read (it would have been in `prev`).
        """
        cur = cur.in_order()
        res = DeltaResult(PgssDeltas(cur, stats_reset, dealloc))
        prev = None if self.prev is None else self.prev.in_order()  # self when made here or loaded
        if prev is None:
            res.primed = True
        else:
            res.reset = stats_reset != self.stats_reset
            if dealloc is not None and self.dealloc is not None and dealloc > self.dealloc:
                res.dealloc = dealloc - self.dealloc
            pv, cv, ps, cs = prev.vals, cur.vals, prev.since, cur.since
            pq, pd, pu, pt = prev.qids, prev.dbs, prev.users, prev.tops
            cq, cd, cu, ct = cur.qids, cur.dbs, cur.users, cur.tops
            j, m = 0, 0 if res.reset else len(prev)
            run_q: int | None = None  # the queryid whose entries are being summed, as str too
            qs = ""
            run: dict[tuple[str, ...], int] = {}  # its aggregates' positions in the batch, by label set
            for i in range(len(cur)):
                if i % APPLY_STRIDE == APPLY_STRIDE - 1:
                    yield None
                a = i * NFIELDS
                # both in key order: prev's cursor only moves forward, to this key or past it
                q = cq[i]
                while j < m and pq[j] < q:
                    j += 1
                while j < m and pq[j] == q and (pd[j], pu[j], pt[j]) < (cd[i], cu[i], ct[i]):
                    j += 1
                if j >= m or pq[j] != q or pd[j] != cd[i] or pu[j] != cu[i] or pt[j] != ct[i]:
                    d = cv[a:a + NFIELDS].tolist()  # not in the last read: new since then
                else:
                    b = j * NFIELDS
                    moved = cs[i] != ps[j] and cs[i] == cs[i] and ps[j] == ps[j]  # both known: NaN != NaN
                    if not moved and cv[a + CALLS] == pv[b + CALLS] and cv[a:a + NFIELDS] == pv[b:b + NFIELDS]:
                        continue  # the common case: an entry that did not run
                    d = [c - o for c, o in zip(cv[a:a + NFIELDS], pv[b:b + NFIELDS], strict=True)]
                    if moved or any(x < 0 for x in d):
                        res.recreated += 1
                        d = cv[a:a + NFIELDS].tolist()
                if d[CALLS] > 0:
                    # a queryid's entries are adjacent: its aggregates (one per label set) are
                    # summed here, so the batch needs no index over all of them
                    if q != run_q:
                        run_q, qs = q, str(q)
                        run.clear()
                    labels = cur.labels[i]
                    pos = run.get(labels)
                    if pos is None:
                        run[labels] = res.batch.append(qs, labels, d)
                    else:
                        res.batch.add_to(pos, d)
        return res

    def to_json(self) -> dict[str, Any]:
        """Format 1 of the state file (persist reads it after an upgrade; it writes format 2)."""
        p = self.prev
        prev = None if p is None else [[list(p.key(i)), p.values(i).tolist(), _since_json(p.since[i])]
                                       for i in range(len(p))]
        return {"stats_reset": self.stats_reset, "dealloc": self.dealloc, "prev": prev}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PgssDeltas:
        prev: Entries | None = None
        if d.get("prev") is not None:
            prev = Entries()
            for k, v, *since in d["prev"]:  # labels are not kept: only the current read's are exported
                if len(v) != NFIELDS:  # another version's fields: re-prime, keep the counters
                    log.warning("sampler_pgss_state_reprimed", values=len(v), expected=NFIELDS)
                    prev = None
                    break
                s = since[0] if since and since[0] is not None else NO_SINCE
                prev.put((int(k[0]), int(k[1]), int(k[2]), bool(k[3])), (), v, float(s))
        return cls(prev=None if prev is None else prev.in_order(), stats_reset=d.get("stats_reset"),
                   dealloc=d.get("dealloc"))


def _since_json(x: float) -> float | None:
    return None if x != x else x  # NaN is not JSON
