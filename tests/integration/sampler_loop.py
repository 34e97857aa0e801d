"""The sampler's real run loop (supervised task, backoff and all), driven by a test until a condition."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from agent.core.context import Context
from agent.sampler.component import Sampler, components


async def run_sampler_until(ctx: Context, done: Callable[[Sampler], bool], limit: float = 10) -> Sampler:
    """Run the sampler component in a task group of the test until `done(sampler)` (`limit` s at most)."""
    (comp,) = components(ctx)
    sampler: Sampler = comp.run.__self__  # type: ignore[attr-defined]
    ctx.liveness.register("sampler")
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            await tg.start(comp.run, ctx)
        with anyio.fail_after(limit):
            while not done(sampler):
                await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    return sampler
