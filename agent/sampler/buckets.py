"""pg_stat_monitor bucket arithmetic: which finished buckets to read, which expired unread.

Pure functions on epoch seconds. Buckets are keyed by their start time, never by the `bucket`
slot id: slot ids wrap every `max_buckets` and skip over idle time, start times do neither.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


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


def missed_buckets(plan: ReadPlan, now: float, bucket_time: int, max_buckets: int, seen: set[int]) -> int:
    """Buckets in the plan's range that had expired before this read and were not seen in it.

    They may have been empty: this counts buckets not observed, not rows lost. A bucket still
    inside retention that returned no rows was observed empty, so it is not missed.
    """
    if plan.prime:
        return 0
    first = plan.lo + bucket_time
    edge = min(oldest_visible_start(now, bucket_time, max_buckets), plan.hi + bucket_time)
    return sum(1 for s in range(first, edge, bucket_time) if s not in seen)


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
