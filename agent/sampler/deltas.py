"""pg_stat_statements: cumulative counters per entry into increments, with reset detection.

Pure: the caller streams the view's rows into `Entries` and reads `pg_stat_statements_info`;
this decides what is new. An entry is keyed by the view's own identity, as (userid, dbid,
queryid, toplevel). The previous read is kept as it was read (`Entries`: one array of doubles
for all values), so the state between reads costs ~0.35 KB an entry, not boxed floats.
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
_U64 = (1 << 64) - 1
APPLY_STRIDE = 64  # entries between two pauses: ~13 us each when every entry ran (bench/)


def pack_key(key: Key) -> int:
    """One int per entry instead of a 4-tuple: ints are never tracked by the garbage collector,
    whose full collections (which hold the GIL, so the event loop) would otherwise scan 10k
    fresh tuples a read at 10k statements."""
    user, db, qid, top = key
    return ((qid & _U64) << 65) | (db << 33) | (user << 1) | int(top)


def unpack_key(k: int) -> Key:
    qid = k >> 65
    return (k >> 1) & 0xFFFFFFFF, (k >> 33) & 0xFFFFFFFF, qid - (1 << 64) if qid >> 63 else qid, bool(k & 1)

# Row layout of pg_stat_statements' read: dbid, userid, queryid, toplevel, datname, username,
# then the NFIELDS values in the order of totals.FIELDS, then stats_since (epoch s, or None
# before pgss 1.11; a shorter row has none either).
FIRST_VALUE = 6
SINCE = FIRST_VALUE + NFIELDS
NO_SINCE = float("nan")


class Entries:
    """One read of pg_stat_statements: queryids as ints, label tuples shared, values of entry i
    at vals[i * NFIELDS:(i + 1) * NFIELDS]."""

    __slots__ = ("_label_cache", "_names", "index", "labels", "qids", "since", "vals")

    def __init__(self, label_names: tuple[str, ...] = ()) -> None:
        self._names = label_names
        self._label_cache: dict[tuple[str, str], tuple[str, ...]] = {}
        self.index: dict[int, int] = {}  # pack_key(key) -> entry number
        self.qids: array[int] = array("q")
        self.labels: list[tuple[str, ...]] = []
        self.vals: array[float] = array("d")
        self.since: array[float] = array("d")  # per entry: stats_since, NaN when unknown

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
        k = pack_key(key)
        i = self.index.get(k)
        if i is None:
            self.index[k] = len(self.labels)
            self.qids.append(key[2])
            self.labels.append(labels)
            self.vals.extend(values)
            self.since.append(since)
        else:  # a duplicate key replaces the earlier row, as a dict would
            self.labels[i] = labels
            self.vals[i * NFIELDS:(i + 1) * NFIELDS] = array("d", values)
            self.since[i] = since

    def values(self, i: int) -> array[float]:
        return self.vals[i * NFIELDS:(i + 1) * NFIELDS]

    def __len__(self) -> int:
        return len(self.index)


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
        (agent/core/slices.py).

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
        res = DeltaResult(PgssDeltas(cur, stats_reset, dealloc))
        prev = self.prev
        if prev is None:
            res.primed = True
        else:
            res.reset = stats_reset != self.stats_reset
            if dealloc is not None and self.dealloc is not None and dealloc > self.dealloc:
                res.dealloc = dealloc - self.dealloc
            pidx, pv, cv, ps, cs = prev.index, prev.vals, cur.vals, prev.since, cur.since
            for n, (key, i) in enumerate(cur.index.items()):
                if n % APPLY_STRIDE == APPLY_STRIDE - 1:
                    yield None
                a = i * NFIELDS
                j = None if res.reset else pidx.get(key)
                if j is None:
                    d = cv[a:a + NFIELDS].tolist()
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
                    res.batch.add(str(cur.qids[i]), cur.labels[i], d, None)
        return res

    def to_json(self) -> dict[str, Any]:
        """Format 1 of the state file (persist reads it after an upgrade; it writes format 2)."""
        p = self.prev
        prev = None if p is None else [[list(unpack_key(k)), p.values(i).tolist(), _since_json(p.since[i])]
                                       for k, i in p.index.items()]
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
        return cls(prev=prev, stats_reset=d.get("stats_reset"), dealloc=d.get("dealloc"))


def _since_json(x: float) -> float | None:
    return None if x != x else x  # NaN is not JSON
