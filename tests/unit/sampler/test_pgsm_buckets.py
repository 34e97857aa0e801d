import json
import math
from pathlib import Path

from agent.sampler.buckets import (
    ReadPlan,
    missed_buckets,
    newest_ready_start,
    parse_histogram_timings,
    plan_read,
    seconds_until_next_ready,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "pg_stat_monitor"


def test_bucket_is_ready_only_grace_after_its_end() -> None:
    assert newest_ready_start(1000 + 5 + 0.99, 5, 1.0) == 995
    assert newest_ready_start(1000 + 5 + 1.0, 5, 1.0) == 1000


def test_without_watermark_the_first_read_only_primes() -> None:
    assert plan_read(None, 1007, 5, 1) == ReadPlan(lo=1000, hi=1000, prime=True)


def test_nothing_due_until_the_next_bucket_finishes() -> None:
    assert plan_read(1000, 1010.5, 5, 1) is None
    assert plan_read(1000, 1011, 5, 1) == ReadPlan(lo=1000, hi=1005)
    assert seconds_until_next_ready(1010.5, 5, 1) == 0.5


def test_clock_stepped_back_reads_nothing() -> None:
    assert plan_read(1000, 900, 5, 1) is None


def test_buckets_missed_while_down_are_counted_not_invented() -> None:
    # watermark 1000; agent back at 1100 with 4 buckets of 5 s: visible are 1085..1100
    plan = plan_read(1000, 1100, 5, 1)
    assert plan == ReadPlan(lo=1000, hi=1090)
    # 1005..1080 expired = 16 buckets; 1085 and 1090 visible (empty or not, they were observed)
    assert missed_buckets(plan, 1100, 5, 4, seen=set()) == 16
    # a bucket seen in the read (start still within the view's floor rule) is not missed
    assert missed_buckets(plan, 1100, 5, 4, seen={1080}) == 15


def test_no_missed_buckets_on_a_regular_read() -> None:
    plan = plan_read(1000, 1011, 5, 1)
    assert plan is not None
    assert missed_buckets(plan, 1011, 5, 4, seen=set()) == 0


def test_histogram_bounds_come_from_the_servers_ranges() -> None:
    text = json.loads((DATA / "server_info.json").read_text())["histogram_timings"]
    le = parse_histogram_timings(text)
    assert len(le) == 22
    assert le[0] == 0.001 and math.isclose(le[1], 0.002778) and le[20] == 100.0 and le[21] == math.inf


def test_histogram_without_overflow_bin_keeps_finite_last_bound() -> None:
    assert parse_histogram_timings("{{0.000 - 3.162}, (3.162 - 10.000}}") == (0.003162, 0.01)
