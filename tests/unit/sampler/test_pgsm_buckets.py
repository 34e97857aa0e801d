import json
import math
from pathlib import Path

from agent.sampler.buckets import (
    ReadPlan,
    lost_buckets,
    newest_ready_start,
    parse_histogram_timings,
    plan_read,
    reset_bound,
    reset_evidence,
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
    assert lost_buckets(plan, 1100, 5, 4, seen=set()) == {"expired": 16}
    # a bucket seen in the read (start still within the view's floor rule) is not missed
    assert lost_buckets(plan, 1100, 5, 4, seen={1080}) == {"expired": 15}


def test_no_missed_buckets_on_a_regular_read() -> None:
    plan = plan_read(1000, 1011, 5, 1)
    assert plan is not None
    assert lost_buckets(plan, 1011, 5, 4, seen=set()) == {}


def test_histogram_bounds_come_from_the_servers_ranges() -> None:
    text = json.loads((DATA / "server_info.json").read_text())["histogram_timings"]
    le = parse_histogram_timings(text)
    assert len(le) == 22
    assert le[0] == 0.001 and math.isclose(le[1], 0.002778) and le[20] == 100.0 and le[21] == math.inf


def test_histogram_without_overflow_bin_keeps_finite_last_bound() -> None:
    assert parse_histogram_timings("{{0.000 - 3.162}, (3.162 - 10.000}}") == (0.003162, 0.01)


def test_restart_charges_the_unread_buckets_up_to_the_one_it_hit() -> None:
    # last read at 1011 consumed 1005; restart at 1013.5 (bucket 1010, unfinished then); read at 1021
    plan = plan_read(1005, 1021, 5, 1)
    assert plan == ReadPlan(lo=1005, hi=1015)
    assert lost_buckets(plan, 1021, 5, 10, seen={1015}, restart_at=1013.5) == {"restart": 1}
    # the agent was down too: buckets that expired before the restart are "expired"
    plan = plan_read(900, 1021, 5, 1)
    lost = lost_buckets(plan, 1021, 5, 4, seen=set(), restart_at=1013.5)
    assert lost == {"expired": len(range(905, 995, 5)), "restart": len(range(995, 1015, 5))}


def test_reset_charges_buckets_up_to_its_bound() -> None:
    plan = plan_read(1005, 1016, 5, 1)
    assert lost_buckets(plan, 1016, 5, 10, seen={1010}, reset_by=1011.0) == {"reset": 1}


def quiet(b: int, calls: float, since: float | None = None) -> dict[int, tuple[float, float | None]]:
    return {b: (calls, since)}


def test_a_reset_is_told_from_a_quiet_server() -> None:
    before = {995: (40.0, 995.2), 1000: (12.0, 1000.1), 1005: (3.0, 1005.3)}
    # nothing new ran: every bucket as it was (a late write may add)
    assert reset_evidence(before, {995: (40.0, 995.2), 1000: (13.0, 1000.1), 1005: (3.0, 1005.3)},
                          1011, 5, 10) is None
    # the reset emptied the retained buckets; the unfinished one restarted from zero
    assert reset_evidence(before, {1005: (1.0, 1007.0)}, 1011, 5, 10) == 995
    # ... or only the unfinished one is comparable, and ran more after the reset than before:
    # its entries were created again (stats_since)
    assert reset_evidence({1005: (3.0, 1005.3)}, {1005: (9.0, 1007.0)}, 1011, 5, 10) == 1005
    # an empty bucket and one whose slot may be recycled now prove nothing
    assert reset_evidence({995: (0.0, None)}, {}, 1011, 5, 10) is None
    assert reset_evidence({975: (5.0, None)}, {}, 1011, 5, 4) is None
    # a read summarises buckets from its watermark on: an older one is absent, not vanished
    assert reset_evidence(before, {1000: (12.0, 1000.1), 1005: (3.0, 1005.3)}, 1011, 5, 10, since=1000) is None


def test_reset_bound_is_the_last_read_or_the_oldest_entry_after_it() -> None:
    assert reset_bound(1006.0, 1011.0, None) == 1006.0
    assert reset_bound(1006.0, 1011.0, 1008.5) == 1008.5
    assert reset_bound(1006.0, 1011.0, 1004.0) == 1006.0  # an entry from before the last read
    assert reset_bound(None, 1011.0, None) == 1011.0
