"""Assembles the agent: which components run, given the config. Core imports no job; this does."""

from __future__ import annotations

import gc
import sys

import anyio

from agent.archive import component as archive
from agent.cluster import component as cluster
from agent.core import conns, malloc
from agent.core import logging as logmod
from agent.core.config import Config
from agent.core.context import Context
from agent.core.sdnotify import Notifier
from agent.core.supervisor import Component, Supervisor
from agent.sampler import component as sampler


def components(ctx: Context) -> list[Component]:
    """Each job builds its metrics once, here, so a restarted component reuses them, and returns
    nothing when the config disables it."""
    jobs = [cluster, sampler, archive]
    if ctx.config.repack.enabled:  # off by default: pg_repack's modules and APScheduler stay unloaded
        from agent.repack import component as repack

        jobs.append(repack)
    return [c for job in jobs for c in job.components(ctx)]


def run(cfg: Config) -> int:
    logmod.setup(cfg.logging.level, cfg.logging.format)
    conns.raise_nofile()
    ctx = Context.create(cfg)
    sup = Supervisor(ctx, components(ctx), Notifier())
    tune_runtime()
    return anyio.run(sup.run, backend="asyncio")


# How long a worker thread may keep the GIL while the event loop's thread waits for it. Work
# moved off the loop (the sampler's deltas and folds at 10k statements: tens of ms of Python)
# still holds the GIL; at Python's default 5 ms every wake-up of the loop during it waits up to
# 5 ms. Switches are forced only while another thread waits, so an idle loop costs nothing.
SWITCH_INTERVAL = 0.0005


def tune_runtime() -> None:
    """Process-wide settings for a responsive event loop, applied once before it starts."""
    # What start-up loaded (modules, config, a restored sampler state) lives as long as the
    # process: out of the collector's sight, a full collection, which holds the GIL and so the
    # event loop, scans only what the jobs made since (32 -> ~10 ms at 10k statements, bench/).
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL)
    malloc.fix_mmap_threshold()  # large per-read buffers go back to the kernel when freed
