"""A flood of one log cause writes a few lines, says how many it dropped, and leaves other
causes alone; the standard library's records (asyncio's) take the same path as JSON."""

from __future__ import annotations

import io
import json
import logging
import math
import time
from collections.abc import Iterator

import pytest
import structlog

from agent.core import logging as logmod
from agent.core.logthrottle import BURST, WINDOW, ToStructlog


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    logmod.setup("info", "json", buf)
    yield buf
    logging.getLogger().handlers = [h for h in logging.getLogger().handlers if not isinstance(h, ToStructlog)]
    structlog.reset_defaults()


def allowed(t0: float) -> int:
    """Lines a cause may write since t0: BURST per window begun (whatever the machine's load)."""
    return BURST * (math.ceil((time.monotonic() - t0) / WINDOW) + 1)


def lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(x) for x in buf.getvalue().splitlines()]


def test_one_cause_in_a_loop_writes_a_few_lines_then_counts_the_rest(out: io.StringIO) -> None:
    log = structlog.get_logger("t").bind(component="cluster_watch")
    t0 = time.monotonic()
    for i in range(20_000):
        log.error("component_failed", attempt=i)
    first = lines(out)
    assert BURST <= len(first) <= allowed(t0) < 200
    time.sleep(WINDOW)
    log.error("component_failed", attempt=-1)
    every = lines(out)
    assert every[-1]["attempt"] == -1 and every[-1]["suppressed"] > 0
    assert sum(int(x.get("suppressed", 0)) for x in every) == 20_000 - len(first)  # every drop counted


def test_distinct_causes_are_not_merged(out: io.StringIO) -> None:
    log = structlog.get_logger("t")
    for comp in ("cluster_watch", "sampler", "repack"):
        for ev in ("a", "b", "c"):
            log.bind(component=comp).warning(ev)
    assert len(lines(out)) == 9


def test_asyncio_accept_errors_become_few_json_lines(out: io.StringIO) -> None:
    alog = logging.getLogger("asyncio")
    t0 = time.monotonic()
    for fd in range(5_000):
        try:
            raise OSError(24, "Too many open files")
        except OSError:
            alog.error("socket.accept() out of system resource\nsocket: <socket fd=%d>", fd, exc_info=True)
    got = lines(out)
    assert BURST <= len(got) <= allowed(t0) < 500
    assert got[0]["logger"] == "asyncio" and got[0]["event"].startswith("socket.accept() out of system resource")
    assert "Too many open files" in json.dumps(got[0]["exception"])
