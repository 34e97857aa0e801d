"""agent/core/slices.py: work on the loop a slice at a time, and the query series rendered so."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from agent.core import slices
from agent.core.http import rendering
from agent.sampler.metrics import SamplerCollector
from agent.sampler.totals import NFIELDS, Totals

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def busy(n: int, each: float) -> slices.Slices[int]:
    for _ in range(n):
        t = time.perf_counter()
        while time.perf_counter() - t < each:
            pass
        yield
    return n


async def test_the_loop_turns_between_slices_and_the_result_comes_back() -> None:
    """200 ms of work in 1 ms pieces: a task that wakes every millisecond keeps running while it
    goes on, and is never held for much more than one slice (no timed assertion: it counts)."""
    wakes = 0

    async def ticker() -> None:
        nonlocal wakes
        while True:
            await anyio.lowlevel.checkpoint()
            wakes += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()
        before = wakes
        assert await slices.run(busy(200, 0.001), budget=0.002) == 200
        during = wakes - before
        tg.cancel_scope.cancel()
    # one turn at least every 2 ms of work: ~100 turns; run in one go it would be 0 or 1
    assert during >= 50


async def test_cancelled_work_is_closed() -> None:
    closed = []

    def work() -> slices.Slices[None]:
        try:
            while True:
                yield
        finally:
            closed.append(True)

    with anyio.move_on_after(0.05):
        await slices.run(work())
    assert closed == [True]


def test_drain_runs_to_the_end() -> None:
    assert slices.drain(busy(3, 0.0)) == 3


def totals(n: int = 50) -> Totals:
    t = Totals(label_names=("datname", "username"), le=(0.001, 0.01, float("inf")))
    for i in range(n):
        t.series[(str(i * 7919), f'db"{i % 3}', "u\\ser\nx")] = [float(i + j) for j in range(NFIELDS)]
    t.series[("other", "other", "other")] = [1e300] * NFIELDS
    t.hist[("db", "u")] = [1.0, 2.0, 3.0, 0.5]
    t.errors[("ERROR", "42P01")] = 3.0
    t.warnings["25P01"] = 1.0
    t.buckets_lost["reset"] = 2
    t.series_folded = 4
    return t


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text; version=1.0.0"])
@pytest.mark.parametrize(("series", "size"), [(50, 200), (50, 7), (1001, 200)])
def test_rendering_in_parts_gives_the_encoders_bytes(accept: str, series: int, size: int) -> None:
    reg = CollectorRegistry(auto_describe=True)
    reg.register(SamplerCollector(lambda: totals(series)))
    encoder, _ = choose_encoder(accept)
    whole = encoder(reg)
    work = rendering(reg, encoder, size)
    pauses = 0
    try:
        while True:
            next(work)
            pauses += 1
    except StopIteration as done:
        assert done.value == whole
    # it did pause: a family at a time, and a big family in parts
    assert pauses >= NFIELDS * -(-(series + 1) // size)
    empty = CollectorRegistry()
    assert slices.drain(rendering(empty, encoder)) == encoder(empty)


def offloading() -> slices.Slices[tuple[str, str]]:
    import threading

    got = yield slices.Offload(lambda: threading.current_thread().name)
    try:
        yield slices.Offload(lambda: 1 / 0)
    except ZeroDivisionError:
        return got, "raised where asked"
    return got, "not raised"


async def test_an_offloaded_call_runs_in_a_worker_thread_and_its_error_comes_back() -> None:
    import threading

    name, err = await slices.run(offloading())
    assert name != threading.current_thread().name and err == "raised where asked"
    name, err = slices.drain(offloading())
    assert name == threading.current_thread().name and err == "raised where asked"
