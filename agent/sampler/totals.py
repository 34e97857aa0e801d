"""The counters the sampler owns, and how increments fold into bounded series.

Every increment (a finished pg_stat_monitor bucket, or a pg_stat_statements delta) is added
here; nothing from the source is ever exported directly, so a source reset cannot make an
exported value go down.

Folding, and why it never decreases a series: a queryid is *promoted* to its own series when it
is in a batch's top-N by execution time and a slot is free (fewer than `top_n` queryids hold
one). Once promoted it keeps its series for good: increments never move between series, and a
series is never dropped or merged into `other`, because moving an accumulated value would make
`other` jump (a false rate spike) and dropping it would break `sum by (...)`. Everything not
promoted is added to `queryid="other"`, so a sum over queryid always equals the totals. The
price is stickiness: a queryid that stops running keeps its (flat) series and its slot. A hard
`max_series` cap bounds label combinations too: a new label set beyond it goes to the series
whose labels are all "other". Both kinds of fold are counted in `series_folded`.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from agent.core.slices import Slices, drain

OTHER = "other"
# Aggregates handled between two pauses of a fold run in slices (agent/core/slices.py): a few
# microseconds each, so well under a slice.
STRIDE = 128

# (field, metric name without pgnode_query_ / _total, help: what one unit is)
FIELDS: tuple[tuple[str, str, str], ...] = (
    ("calls", "calls", "Statements executed (one per call)."),
    ("exec_seconds", "exec_seconds", "Seconds spent executing statements."),
    ("plan_seconds", "plan_seconds", "Seconds spent planning statements."),
    ("rows", "rows", "Rows returned or affected."),
    ("shared_blks_hit", "shared_blocks_hit", "Shared buffer hits (one per block)."),
    ("shared_blks_read", "shared_blocks_read", "Shared blocks read (one per block)."),
    ("shared_blks_dirtied", "shared_blocks_dirtied", "Shared blocks dirtied (one per block)."),
    ("shared_blks_written", "shared_blocks_written", "Shared blocks written (one per block)."),
    ("local_blks_hit", "local_blocks_hit", "Local buffer hits (one per block)."),
    ("local_blks_read", "local_blocks_read", "Local blocks read (one per block)."),
    ("temp_blks_read", "temp_blocks_read", "Temp blocks read (one per block)."),
    ("temp_blks_written", "temp_blocks_written", "Temp blocks written (one per block)."),
    ("blk_read_seconds", "block_read_seconds", "Seconds reading blocks (needs track_io_timing)."),
    ("blk_write_seconds", "block_write_seconds", "Seconds writing blocks (needs track_io_timing)."),
    ("wal_records", "wal_records", "WAL records generated."),
    ("wal_fpi", "wal_fpi", "WAL full-page images generated."),
    ("wal_bytes", "wal_bytes", "WAL bytes generated."),
    ("cpu_user_seconds", "cpu_user_seconds", "User CPU seconds (pg_stat_monitor only)."),
    ("cpu_sys_seconds", "cpu_system_seconds", "System CPU seconds (pg_stat_monitor only)."),
)
NFIELDS = len(FIELDS)
CALLS, EXEC = 0, 1


@dataclass(slots=True)
class QueryRow:
    """One source row, already in base units. `resp_calls` is the per-bin latency count or None."""

    queryid: str
    labels: tuple[str, ...]
    values: list[float]
    resp_calls: list[float] | None = None


class Batch:
    """One batch of increments (a finished bucket, or one delta read) summed per (queryid,
    labels) as rows arrive, in first-seen order: the values of all aggregates in one array of
    doubles, resp_calls one array each (None once a row of that aggregate had none). Columnar,
    so 10k aggregates cost ~0.3 KB each instead of a list of boxed floats. Sums are made in row
    order, so the totals do not depend on how rows were chunked.

    `add` finds a row's aggregate through an index; a producer that sums its rows itself (the
    pgss merge: a queryid's entries are adjacent) uses `append`/`add_to` instead, and the batch
    keeps no index: at 10k aggregates that is ~0.9 MB less at the peak of a read (a key tuple,
    a position and a dict slot per aggregate; bench/README.md)."""

    __slots__ = ("_index", "labels", "qids", "resp", "vals")

    def __init__(self) -> None:
        self._index: dict[tuple[str, tuple[str, ...]], int] | None = {}  # None once append() was used
        self.qids: list[str] = []
        self.labels: list[tuple[str, ...]] = []
        self.vals: array[float] = array("d")
        self.resp: list[array[float] | None] = []

    @classmethod
    def of(cls, rows: Iterable[QueryRow]) -> Batch:
        b = cls()
        for r in rows:
            b.add(r.queryid, r.labels, r.values, r.resp_calls)
        return b

    def add(self, qid: str, labels: tuple[str, ...], vals: Sequence[float], resp: Sequence[float] | None) -> None:
        if self._index is None:
            raise RuntimeError("add() on a batch filled by append(): its aggregates are not indexed")
        k = (qid, labels)
        i = self._index.get(k)
        if i is None:
            self._index[k] = self._push(qid, labels, vals, resp)
            return
        self.add_to(i, vals)
        a = self.resp[i]
        if a is not None and resp is not None:
            if len(a) != len(resp):
                raise ValueError(f"resp_calls of queryid {qid} changed length within a batch")
            for j, x in enumerate(resp):
                a[j] += x
        else:
            self.resp[i] = None

    def append(self, qid: str, labels: tuple[str, ...], vals: Sequence[float]) -> int:
        """A new aggregate (no resp_calls) that the caller knows is not in the batch; its position."""
        self._index = None
        return self._push(qid, labels, vals, None)

    def add_to(self, i: int, vals: Sequence[float]) -> None:
        base, v = i * NFIELDS, self.vals
        for j, x in enumerate(vals):
            v[base + j] += x

    def _push(self, qid: str, labels: tuple[str, ...], vals: Sequence[float], resp: Sequence[float] | None) -> int:
        self.qids.append(qid)
        self.labels.append(labels)
        self.vals.extend(vals)
        self.resp.append(array("d", resp) if resp is not None else None)
        return len(self.qids) - 1

    def values(self, i: int) -> array[float]:
        return self.vals[i * NFIELDS:(i + 1) * NFIELDS]

    def __len__(self) -> int:
        return len(self.qids)

    def dropping(self) -> Slices[None]:
        """Empties the batch a chunk at a time: freeing 10k aggregates in one go (the last
        reference dropped) holds the loop ~1.5 ms, a read of several buckets many times that."""
        n = STRIDE * 8
        while self._index:
            for _ in range(min(n, len(self._index))):
                self._index.popitem()
            yield None
        while self.qids:
            del self.qids[-n:], self.labels[-n:], self.resp[-n:]
            yield None
        self.vals = array("d")


@dataclass
class Totals:
    """The exported counters. A Totals that the sampler has published (scrapes and the state
    file read it from other threads) is never changed again: a fold works on `copy()`."""

    label_names: tuple[str, ...]
    series: dict[tuple[str, ...], list[float]] = field(default_factory=dict)  # (queryid, *labels)
    le: tuple[float, ...] = ()
    hist: dict[tuple[str, ...], list[float]] = field(default_factory=dict)  # labels -> bins + [sum]
    errors: dict[tuple[str, str], float] = field(default_factory=dict)  # (elevel, sqlcode), ERROR and above
    warnings: dict[str, float] = field(default_factory=dict)  # sqlcode -> pg_stat_monitor WARNING rows
    kept: dict[str, None] = field(default_factory=dict)  # promoted queryids, insertion-ordered
    buckets_lost: dict[str, int] = field(default_factory=dict)  # reason -> pg_stat_monitor buckets
    series_folded: int = 0

    def relabeled(self, label_names: tuple[str, ...]) -> Totals:
        """For a new label list (SIGHUP), a copy with new series: old ones have other label
        names, so Prometheus sees new series, not a decrease. Self when the list is the same."""
        if label_names == self.label_names:
            return self
        return replace(self.copy(), label_names=label_names, series={}, hist={})

    def copy(self) -> Totals:
        """A copy to change: containers new, lists of values in them too."""
        return replace(self, **{f.name: _copied(getattr(self, f.name)) for f in fields(self)})

    def set_bounds(self, le: tuple[float, ...]) -> bool:
        """Histogram bounds changed (GUCs changed at a server restart): histograms start over."""
        if le == self.le:
            return False
        self.le, self.hist = le, {}
        return True

    def add_lost(self, lost: dict[str, int]) -> None:
        for reason, n in lost.items():
            self.buckets_lost[reason] = self.buckets_lost.get(reason, 0) + n

    def add_errors(self, errors: Iterable[tuple[str, str, float]]) -> None:
        for elevel, sqlcode, calls in errors:
            k = (elevel, sqlcode)
            self.errors[k] = self.errors.get(k, 0.0) + calls

    def add_warnings(self, warnings: Iterable[tuple[str, float]]) -> None:
        for sqlcode, calls in warnings:
            self.warnings[sqlcode] = self.warnings.get(sqlcode, 0.0) + calls

    def add(self, batch: Batch, top_n: int, max_series: int) -> int:
        return drain(self.adding(batch, top_n, max_series))

    def adding(self, batch: Batch, top_n: int, max_series: int) -> Slices[int]:
        """Adds one batch, already summed over everything not exported (user, db, client, plan,
        toplevel...), never overwritten: two users running the same queryid in one bucket both
        count. Returns the folded aggregates; pauses every STRIDE aggregates."""
        yield from self._promote(batch, top_n)
        folded = 0
        all_other = (OTHER,) * (1 + len(self.label_names))
        vals = batch.vals
        for i, (qid, labels) in enumerate(zip(batch.qids, batch.labels, strict=True)):
            if i % STRIDE == STRIDE - 1:
                yield None
            key = (qid if qid in self.kept else OTHER, *labels)
            if key not in self.series and len(self.series) >= max_series:
                key = all_other
            if key[0] != qid or key[1:] != labels:
                folded += 1
            cur = self.series.get(key)
            if cur is None:
                cur = self.series[key] = [0.0] * NFIELDS
            base = i * NFIELDS
            for j in range(NFIELDS):
                cur[j] += vals[base + j]
            self._observe(key[1:], batch.resp[i], vals[base + EXEC])
        self.series_folded += folded
        return folded

    def added(self, batch: Batch, top_n: int, max_series: int) -> Slices[Totals]:
        """A copy with `batch` added; self is left as it was (readers may hold it meanwhile)."""
        t = self.copy()
        yield from t.adding(batch, top_n, max_series)
        return t

    def _promote(self, batch: Batch, top_n: int) -> Slices[None]:
        if len(self.kept) >= top_n:
            return
        exec_by_q: dict[str, float] = {}
        for i, qid in enumerate(batch.qids):
            if i % STRIDE == STRIDE - 1:
                yield None
            exec_by_q[qid] = exec_by_q.get(qid, 0.0) + batch.vals[i * NFIELDS + EXEC]
        # the top_n by execution time (ties by queryid), a chunk at a time: one sort of 10k
        # queryids would be ~7 ms in one piece
        items = iter(exec_by_q.items())
        top: list[tuple[float, str]] = []
        while chunk := [(-e, q) for q, e in itertools.islice(items, STRIDE)]:
            top = heapq.nsmallest(top_n, top + chunk)
            yield None
        for _, q in top:
            if len(self.kept) >= top_n:
                break
            self.kept.setdefault(q, None)

    def _observe(self, labels: tuple[str, ...], resp: array[float] | None, exec_s: float) -> None:
        if resp is None or not self.le or len(resp) != len(self.le):
            return
        h = self.hist.get(labels)
        if h is None:
            h = self.hist[labels] = [0.0] * (len(self.le) + 1)
        for i, c in enumerate(resp):
            h[i] += c
        h[-1] += exec_s

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "label_names": list(self.label_names),
            "series": [[list(k), v] for k, v in self.series.items()],
            "le": ["+Inf" if b == float("inf") else b for b in self.le],
            "hist": [[list(k), v] for k, v in self.hist.items()],
            "errors": [[list(k), v] for k, v in self.errors.items()],
            "warnings": self.warnings,
            "kept": list(self.kept),
            "buckets_lost": self.buckets_lost,
            "series_folded": self.series_folded,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Totals:
        t = cls(label_names=tuple(d["label_names"]))
        t.series = {tuple(k): [float(x) for x in v] for k, v in d["series"] if len(v) == NFIELDS}
        t.le = tuple(float("inf") if b == "+Inf" else float(b) for b in d["le"])
        t.hist = {tuple(k): [float(x) for x in v] for k, v in d["hist"]}
        t.errors = {(str(k[0]), str(k[1])): float(v) for k, v in d["errors"]}
        t.warnings = {str(k): float(v) for k, v in (d.get("warnings") or {}).items()}
        t.kept = dict.fromkeys(d["kept"])
        lost = d.get("buckets_lost")
        # files written before the reasons existed counted expired buckets only
        t.buckets_lost = ({str(k): int(v) for k, v in lost.items()} if isinstance(lost, dict)
                          else {"expired": int(d.get("buckets_missed", 0))})
        t.series_folded = int(d["series_folded"])
        return t


def _copied(x: Any) -> Any:
    """A field of Totals as `added` needs it: containers new, lists of values in them too."""
    if isinstance(x, dict):
        return {k: v.copy() if isinstance(v, list) else v for k, v in x.items()}
    return x
