"""Repeated identical log events are rate-limited: a flood with one cause (asyncio's accept
errors at a descriptor limit, a component failing in a loop) writes a few lines a second, and
the next line let through for that cause says how many were dropped (`suppressed`).

Also forwards the standard library's logging (asyncio, urllib3, psycopg) into structlog, so
those lines are JSON like ours and pass through the same limit, instead of going raw to stderr
through logging's last-resort handler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import Any

import structlog

BURST = 5          # lines per cause and window
WINDOW = 1.0       # seconds
MAX_CAUSES = 1000  # distinct causes remembered; older ones are forgotten


class Throttle:
    """structlog processor. A cause is the level, the event's first line and the component."""

    def __init__(self, burst: int = BURST, window: float = WINDOW) -> None:
        self.burst = burst
        self.window = window
        self._seen: dict[tuple[str, str, str], list[float]] = {}  # cause -> [window start, lines, dropped]

    def __call__(self, _logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event = str(event_dict.get("event", ""))
        cause = (method, event.split("\n", 1)[0][:200], str(event_dict.get("component", event_dict.get("logger", ""))))
        now = time.monotonic()
        slot = self._seen.get(cause)
        if slot is None:
            if len(self._seen) >= MAX_CAUSES:
                self._seen.clear()
            slot = self._seen[cause] = [now, 0.0, 0.0]
        if now - slot[0] >= self.window:
            slot[0], slot[1] = now, 0.0
        slot[1] += 1
        if slot[1] > self.burst:
            slot[2] += 1
            raise structlog.DropEvent
        if slot[2]:
            event_dict["suppressed"] = int(slot[2])
            slot[2] = 0.0
        return event_dict


class ToStructlog(logging.Handler):
    """Standard-library records as structlog events (level, logger name, traceback kept)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger().bind(logger=record.name)
            level = record.levelname.lower() if record.levelname.lower() in ("debug", "info", "warning", "error") \
                else ("error" if record.levelno >= logging.ERROR else "warning")
            getattr(log, level)(record.getMessage(), exc_info=record.exc_info or None)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def route_stdlib(level: int = logging.WARNING) -> None:
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, ToStructlog)] + [ToStructlog()]
    root.setLevel(level)
