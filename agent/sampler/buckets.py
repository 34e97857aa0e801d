"""pg_stat_monitor bucket arithmetic: which finished buckets to read, which expired unread.

Pure functions on epoch seconds. Buckets are keyed by their start time, never by the `bucket`
slot id: slot ids wrap every `max_buckets` and skip over idle time, start times do neither.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any


def aligned(t: float, bucket_time: int) -> int:
    """Start of the bucket holding instant t (pg_stat_monitor aligns starts to the epoch)."""
    return math.floor(t / bucket_time) * bucket_time


def newest_ready_start(now: float, bucket_time: int, grace: float) -> int:
    """Newest bucket that is finished for sure: it ended at least `grace` ago on the server clock.

    Completeness by time, not `bucket_done`: rotation is lazy, so on an idle server the last bucket
    keeps `bucket_done = false` forever, while any store after its end rotates first.
    """
    return aligned(now - bucket_time - grace, bucket_time)


def seconds_until_next_ready(now: float, bucket_time: int, grace: float) -> float:
    nxt = newest_ready_start(now, bucket_time, grace) + bucket_time
    return max(0.0, nxt + bucket_time + grace - now)


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Read buckets with lo < bucket_start_time <= hi; `prime` means take the watermark only."""

    lo: int
    hi: int
    prime: bool = False


def plan_read(watermark: int | None, now: float, bucket_time: int, grace: float) -> ReadPlan | None:
    """None when nothing new is finished (or the clock stepped back behind the watermark).

    Without a watermark (no state file, or a new server) the first read only primes it to the
    newest finished bucket: the buckets before it were never counted, and counting them now
    could double what an earlier agent life already exported.
    """
    hi = newest_ready_start(now, bucket_time, grace)
    if watermark is None:
        return ReadPlan(lo=hi, hi=hi, prime=True)
    if hi <= watermark:
        return None
    return ReadPlan(lo=watermark, hi=hi)


def oldest_visible_start(now: float, bucket_time: int, max_buckets: int) -> int:
    """Oldest bucket the view can still show: the current one and max_buckets-1 before it."""
    return aligned(now, bucket_time) - (max_buckets - 1) * bucket_time


@dataclass(frozen=True)
class Watch:
    """What the extension's memory held at the last read, to tell a quiet server from a wiped one.

    `seen`: bucket start -> (calls summed over its rows, oldest `stats_since` of its rows or None)
    for every retained bucket at the last read, consumed or unfinished. `restart_at` and `reset_by`
    are a restart and a reset seen but not yet charged to the buckets they destroyed (the bucket
    unfinished then is charged when it is read).
    """

    seen: dict[int, tuple[float, float | None]] = field(default_factory=dict)
    read_at: float | None = None  # server time of the last read
    restart_at: float | None = None
    reset_by: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"seen": [[b, c, s] for b, (c, s) in sorted(self.seen.items())], "read_at": self.read_at,
                "restart_at": self.restart_at, "reset_by": self.reset_by}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Watch:
        return cls(seen={int(b): (float(c), None if s is None else float(s)) for b, c, s in d.get("seen", [])},
                   read_at=d.get("read_at"), restart_at=d.get("restart_at"), reset_by=d.get("reset_by"))


def reset_bound(read_at: float | None, now: float, oldest_since: float | None) -> float:
    """When the reset seen now ran, as late as can be said. It ran after the last read
    (`read_at`) and before every entry alive now was created (`oldest_since`, 2.1+). Without
    stats_since the last read is taken: exact when the reset hit the bucket then unfinished,
    one bucket short when it ran in the grace second after that bucket ended."""
    if oldest_since is not None:
        return max(read_at or 0.0, min(now, oldest_since))
    return read_at if read_at is not None else now


def reset_evidence(before: dict[int, tuple[float, float | None]], after: dict[int, tuple[float, float | None]],
                   now: float, bucket_time: int, max_buckets: int, since: int | None = None) -> int | None:
    """The first bucket showing that pg_stat_monitor_reset() ran between two reads, or None.

    Within one bucket entries are only ever added (a bucket's rows go only when its slot is reused,
    max_buckets x bucket_time later), so a bucket still retained with fewer calls than before, gone
    altogether, or with an entry newer than its oldest one before (`stats_since`, 2.1+: entries
    were recreated) was emptied. One bucket of margin keeps a slot the extension may be recycling
    right now out of the comparison, and buckets before `since` are not in `after` (the read
    summarises buckets from the watermark on). Only valid when the server did not restart in between.
    """
    safe = oldest_visible_start(now, bucket_time, max_buckets) + bucket_time
    if since is not None:
        safe = max(safe, since)
    for b, (calls, oldest) in sorted(before.items()):
        if b < safe or calls <= 0:
            continue
        got = after.get(b)
        if got is None or got[0] < calls:
            return b
        if oldest is not None and got[1] is not None and got[1] > oldest:
            return b
    return None


def lost_buckets(plan: ReadPlan, now: float, bucket_time: int, max_buckets: int, seen: set[int], *,
                 restart_at: float | None = None, reset_by: float | None = None) -> dict[str, int]:
    """Buckets in the plan's range whose content was destroyed, wholly or in part, before this
    read, per reason:

    - `restart`: the server restarted at `restart_at` while the bucket was unread and still
      retained (pg_stat_monitor keeps nothing across a restart; the bucket holding the restart
      keeps only what ran after it);
    - `reset`: `pg_stat_monitor_reset()` ran at or before `reset_by` while the bucket was unread
      (the reset empties every bucket, the unfinished one included);
    - `expired`: not seen, and older than the view's retention now (the agent was down or slow).

    `expired` buckets may have been empty: this counts buckets not observed, not rows lost. A
    bucket still inside retention that returned no rows was observed empty, so it is not lost.
    """
    out: dict[str, int] = {}
    if plan.prime:
        return out
    oldest_now = oldest_visible_start(now, bucket_time, max_buckets)
    for s in range(plan.lo + bucket_time, plan.hi + bucket_time, bucket_time):
        reason = None
        for why, t in (("restart", restart_at), ("reset", reset_by)):
            if t is not None and s <= aligned(t, bucket_time):
                # already expired when it happened: the loss is the agent's absence, not the event
                reason = why if s >= oldest_visible_start(t, bucket_time, max_buckets) else "expired"
                break
        if reason is None and s not in seen and s < oldest_now:
            reason = "expired"
        if reason is not None:
            out[reason] = out.get(reason, 0) + 1
    return out


_RANGE = re.compile(r"[\[({]\s*([0-9.]+)\s*-\s*([0-9.]+|\.\.\.)\s*[\])}]")


def parse_histogram_timings(text: str) -> tuple[float, ...]:
    """`le` bounds in seconds from `get_histogram_timings()` ("{{0.000 - 1.000}, (1.000 - 2.778}, ...").

    One bound per `resp_calls` element; an open last range ("(100000.000 - ...}") is +Inf (without
    it, with histogram_max >= 5e7, the renderer adds +Inf itself).
    Read from the server, not recomputed from the GUCs: the extension silently reduces the bin
    count when ranges would overlap.
    """
    bounds: list[float] = []
    for _lo, hi in _RANGE.findall(text):
        bounds.append(math.inf if hi == "..." else float(hi) / 1000.0)
    return tuple(bounds)
