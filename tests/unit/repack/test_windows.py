from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.core.config import Duration, RepackWindow
from agent.repack import windows


def _w(cron: str, duration: float, tz: str = "UTC") -> RepackWindow:
    return RepackWindow(cron=cron, duration=Duration(duration), timezone=tz)


def test_inside_a_window_gives_its_start_and_end() -> None:
    now = datetime(2026, 3, 7, 2, 30, tzinfo=UTC)
    slot = windows.active([_w("0 2 * * *", 3600)], now)
    assert slot is not None
    assert slot.start == datetime(2026, 3, 7, 2, 0, tzinfo=UTC)
    assert slot.end == datetime(2026, 3, 7, 3, 0, tzinfo=UTC)


def test_the_window_end_is_exclusive() -> None:
    assert windows.active([_w("0 2 * * *", 3600)], datetime(2026, 3, 7, 3, 0, tzinfo=UTC)) is None


def test_the_window_start_is_inclusive() -> None:
    assert windows.active([_w("0 2 * * *", 3600)], datetime(2026, 3, 7, 2, 0, tzinfo=UTC)) is not None


def test_outside_every_window_nothing_is_active_and_the_next_start_is_given() -> None:
    now = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
    ws = [_w("0 2 * * *", 3600), _w("30 22 * * *", 600)]
    assert windows.active(ws, now) is None
    nxt = windows.next_start(ws, now)
    assert nxt is not None and nxt.index == 1
    assert nxt.start == datetime(2026, 3, 7, 22, 30, tzinfo=UTC)


def test_overlapping_occurrences_give_the_one_ending_last() -> None:
    # every 10 minutes, 25 minutes long: 11:50, 12:00 are open at 12:07; 12:00 leaves more time
    now = datetime(2026, 3, 7, 12, 7, tzinfo=UTC)
    slot = windows.active([_w("*/10 * * * *", 1500)], now)
    assert slot is not None and slot.start == datetime(2026, 3, 7, 12, 0, tzinfo=UTC)


def test_time_zone_of_the_cron_expression_is_honoured() -> None:
    # 02:00 in Berlin (CET, UTC+1 in March before DST) is 01:00 UTC
    w = _w("0 2 * * *", 600, "Europe/Berlin")
    assert windows.active([w], datetime(2026, 3, 7, 1, 5, tzinfo=UTC)) is not None
    assert windows.active([w], datetime(2026, 3, 7, 2, 5, tzinfo=UTC)) is None


def test_occurrences_have_distinct_keys() -> None:
    w = [_w("0 2 * * *", 3600)]
    a = windows.active(w, datetime(2026, 3, 7, 2, 30, tzinfo=UTC))
    b = windows.active(w, datetime(2026, 3, 7, 2, 30, tzinfo=UTC) + timedelta(days=1))
    assert a is not None and b is not None and a.key != b.key
