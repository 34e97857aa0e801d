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


def components(cfg: Config) -> list[Component]:
    comps: list[Component] = []
    try:
        from agent.cluster.component import components as cluster_components
    except ImportError:
        pass
    else:
        comps += cluster_components(cfg)
    if cfg.sampler.enabled:
        try:
            from agent.sampler.component import run as sampler_run
        except ImportError:
            pass
        else:
            comps.append(Component("sampler", sampler_run, heartbeat_timeout=max(60.0, 6 * cfg.sampler.interval)))
    if cfg.archive.enabled:
        try:
            from agent.archive.component import run as archive_run
        except ImportError:
            pass
        else:
            comps.append(Component("archive", archive_run, heartbeat_timeout=max(60.0, 6 * cfg.archive.interval)))
    if cfg.repack.enabled:
        try:
            from agent.repack.component import run as repack_run
        except ImportError:
            pass
        else:
            comps.append(Component("repack", repack_run))
    return comps


def run(cfg: Config) -> int:
    logmod.setup(cfg.logging.level, cfg.logging.format)
    ctx = Context.create(cfg)
    sup = Supervisor(ctx, components(cfg), Notifier())
    return anyio.run(sup.run, backend="asyncio")
