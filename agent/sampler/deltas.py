"""pg_stat_statements: cumulative counters per entry into increments, with reset detection.

Pure: the caller reads the view and `pg_stat_statements_info`, this decides what is new.
An entry is keyed by (dbid, userid, queryid, toplevel), the view's own identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.sampler.totals import CALLS, QueryRow

Key = tuple[int, int, int, bool]


@dataclass(slots=True)
class Entry:
    queryid: str
    labels: tuple[str, ...]
    values: list[float]


@dataclass
class DeltaResult:
    rows: list[QueryRow]
    primed: bool = False
    reset: bool = False  # stats_reset moved: every entry restarted from zero
    dealloc: int = 0  # entries evicted since the last read (pgss.max reached)
    recreated: int = 0  # entries whose counters went down: evicted and recreated


@dataclass
class PgssDeltas:
    prev: dict[Key, list[float]] | None = None
    stats_reset: str | None = None
    dealloc: int | None = None

    def apply(self, cur: dict[Key, Entry], stats_reset: str | None, dealloc: int | None) -> DeltaResult:
        """Increments since the last read.

        - First read (no state): prime only; counting the whole history would double what an
          earlier life of the agent exported.
        - `stats_reset` changed: every present entry was created after the reset, so its whole
          value is new. What ran between our last read and the reset is lost, not guessed.
        - Any counter lower than before: the entry was evicted (dealloc) and recreated; its
          current value is all new. An entry recreated *above* its old value is undetectable
          before pgss 1.11's `stats_since` (PG17).
        - A key not seen before: new since the last read (it would have been in `prev`).
        """
        res = DeltaResult(rows=[])
        if self.prev is None:
            res.primed = True
        else:
            res.reset = stats_reset != self.stats_reset
            if dealloc is not None and self.dealloc is not None and dealloc > self.dealloc:
                res.dealloc = dealloc - self.dealloc
            for k, e in cur.items():
                p = None if res.reset else self.prev.get(k)
                if p is None:
                    d = list(e.values)
                else:
                    d = [c - o for c, o in zip(e.values, p, strict=True)]
                    if any(x < 0 for x in d):
                        res.recreated += 1
                        d = list(e.values)
                if d[CALLS] > 0:
                    res.rows.append(QueryRow(e.queryid, e.labels, d))
        self.prev = {k: list(e.values) for k, e in cur.items()}
        self.stats_reset, self.dealloc = stats_reset, dealloc
        return res

    def to_json(self) -> dict[str, Any]:
        return {"stats_reset": self.stats_reset, "dealloc": self.dealloc,
                "prev": None if self.prev is None else [[list(k), v] for k, v in self.prev.items()]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PgssDeltas:
        prev = d.get("prev")
        return cls(prev=None if prev is None else {(int(k[0]), int(k[1]), int(k[2]), bool(k[3])): v
                                                    for k, v in prev},
                   stats_reset=d.get("stats_reset"), dealloc=d.get("dealloc"))
