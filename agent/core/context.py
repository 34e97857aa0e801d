"""What every component gets: the config, the registry, node state, liveness and a PG connector."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry

from agent.core import pg
from agent.core.bus import Bus
from agent.core.config import Config
from agent.core.events import Event
from agent.core.liveness import Liveness
from agent.core.state import StateStore


@dataclass
class CachedMetrics:
    """Series that change only when their job ingests (thousands of query series): rendered once
    per `version()` change, in a worker thread, and served as bytes, so a scrape stays cheap
    whatever their count. Their collectors must read snapshots that nothing changes in place."""

    registry: CollectorRegistry
    version: Callable[[], int]


@dataclass
class Context:
    config: Config  # replaced as a whole on SIGHUP; read it where it is used, don't cache it
    registry: CollectorRegistry
    bus: Bus
    state: StateStore
    liveness: Liveness
    # /status sections by name; each returns the TypedDict declared beside its producer
    status_sections: dict[str, Callable[[], Mapping[str, object]]] = field(default_factory=dict)
    cached_metrics: list[CachedMetrics] = field(default_factory=list)

    def publish(self, ev: Event) -> None:
        self.state.publish(ev)

    async def pg_connect(self, job: str, dbname: str | None = None,
                         autocommit: bool = True) -> psycopg.AsyncConnection[dict[str, Any]]:
        return await pg.connect(self.config.postgres, job, dbname, autocommit)

    @classmethod
    def create(cls, config: Config, registry: CollectorRegistry | None = None) -> Context:
        bus = Bus()
        return cls(config=config, registry=registry or CollectorRegistry(auto_describe=True), bus=bus,
                   state=StateStore(config.node.name, bus), liveness=Liveness(config.watchdog.heartbeat_timeout))
