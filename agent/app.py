"""Assembles the agent: which components run, given the config. Core imports no job; this does."""

from __future__ import annotations

import anyio
import structlog

from agent.core import logging as logmod
from agent.core.config import Config
from agent.core.context import Context
from agent.core.sdnotify import Notifier
from agent.core.supervisor import Component, Supervisor

log = structlog.get_logger("app")


JOBS = ("agent.cluster.component", "agent.sampler.component", "agent.archive.component",
        "agent.repack.component")


def components(ctx: Context) -> list[Component]:
    """Each job module exposes `components(ctx) -> list[Component]`: it builds its metrics once,
    here, so a restarted component reuses them, and returns nothing when the config disables it."""
    import importlib

    comps: list[Component] = []
    for mod in JOBS:
        try:
            job = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        comps += job.components(ctx)
    return comps


def run(cfg: Config) -> int:
    logmod.setup(cfg.logging.level, cfg.logging.format)
    ctx = Context.create(cfg)
    sup = Supervisor(ctx, components(ctx), Notifier())
    return anyio.run(sup.run, backend="asyncio")
