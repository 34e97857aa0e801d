"""structlog chain: JSON lines off a TTY (journald), console on one. Secrets never reach it:
config values holding them are `Secret` (repr and str hide them), DSNs are never logged, and
tracebacks carry no local variables (structlog renders locals by default, and a connect call's
locals hold the password it sends)."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

from agent.core.logthrottle import Throttle, route_stdlib

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _NamedPrintLogger(structlog.PrintLogger):
    """A PrintLogger that keeps the name given to `structlog.get_logger(name)` (PrintLogger drops it)."""

    def __init__(self, file: TextIO, name: str) -> None:
        super().__init__(file)
        self.name = name


def add_component(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Every line names the part of the agent it comes from: the logger's name, unless a
    `component` is bound already (the supervisor binds the component it runs)."""
    name = getattr(logger, "name", "")
    if name:
        event_dict.setdefault("component", name)
    return event_dict


def setup(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    out: TextIO = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_component,
        structlog.processors.add_log_level,
        Throttle(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if console:
        # Explicitly plain: the default turns to rich's traceback, with locals, when rich is installed.
        processors.append(structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback))
    else:
        tracebacks = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        processors += [structlog.processors.ExceptionRenderer(tracebacks), structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *args: _NamedPrintLogger(out, str(args[0]) if args else ""),
        cache_logger_on_first_use=False,
    )
    route_stdlib()
