"""Repack windows: a cron start plus a duration. APScheduler supplies only the fire-time arithmetic;
the component sleeps in its own task, so there are no scheduler threads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

from agent.core.config import RepackWindow


@dataclass(frozen=True, slots=True)
class Slot:
    index: int          # position in repack.windows
    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        """Identifies one occurrence of a window (tables are tried at most once per occurrence)."""
        return f"{self.index}@{self.start.isoformat()}"


def _trigger(w: RepackWindow) -> CronTrigger:
    return CronTrigger.from_crontab(w.cron, timezone=ZoneInfo(w.timezone))


def _first_fire_at_or_after(w: RepackWindow, t: datetime) -> datetime | None:
    fire: datetime | None = _trigger(w).get_next_fire_time(None, t)
    return fire


def active(windows: list[RepackWindow], now: datetime) -> Slot | None:
    """The open window occurrence that ends last, if any. Occurrences that started after
    now - duration are the open ones; when they overlap (a window longer than its period), the
    latest start leaves a run the most time."""
    best: Slot | None = None
    for i, w in enumerate(windows):
        dur = timedelta(seconds=float(w.duration))
        fire = _first_fire_at_or_after(w, now - dur + timedelta(microseconds=1))
        latest: datetime | None = None
        for _ in range(10_000):  # bounded: a per-minute cron with a week-long window
            if fire is None or fire > now:
                break
            latest = fire
            fire = _first_fire_at_or_after(w, fire + timedelta(microseconds=1))
        if latest is not None and (best is None or latest + dur > best.end):
            best = Slot(i, latest, latest + dur)
    return best


def next_start(windows: list[RepackWindow], now: datetime) -> Slot | None:
    """The next window occurrence starting after `now` (the open one is not included)."""
    best: Slot | None = None
    for i, w in enumerate(windows):
        fire = _first_fire_at_or_after(w, now + timedelta(microseconds=1))
        if fire is not None and (best is None or fire < best.start):
            best = Slot(i, fire, fire + timedelta(seconds=float(w.duration)))
    return best
