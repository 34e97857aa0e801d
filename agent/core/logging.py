"""structlog chain: JSON lines off a TTY (journald), console on one. Secrets never reach it:
config values holding them are `Secret` (repr hides them) and DSNs are never logged."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from agent.core.logthrottle import Throttle, route_stdlib

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    stream = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        Throttle(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer())
    else:
        processors += [structlog.processors.dict_tracebacks, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    route_stdlib()
