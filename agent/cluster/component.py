"""Job 1: cluster watch (etcd), Patroni REST, pg_is_in_recovery(), watchdog feeding and hooks."""

from __future__ import annotations

import functools

from agent.cluster import hooks, patroni_api, pg_role
from agent.cluster.watch import ClusterWatch
from agent.cluster.watchdog.feeder import Feeder, WatchdogMetrics
from agent.core.context import Context
from agent.core.events import DcsAvailability, PatroniObserved, PostgresAvailability, Role
from agent.core.supervisor import Component
from agent.etcd.client import Etcd
from agent.etcd.keys import Keys


def components(ctx: Context) -> list[Component]:
    cfg = ctx.config
    etcd = Etcd.from_config(cfg.etcd)
    watch = ClusterWatch(ctx, etcd, Keys(cfg.etcd.namespace, cfg.etcd.scope))
    ctx.status_sections["cluster_watch"] = watch.status
    feeder = Feeder(ctx, WatchdogMetrics(ctx.registry))
    ctx.status_sections["watchdog"] = feeder.status
    comps = [
        Component("cluster_watch", watch.run,
                  on_stop=(DcsAvailability(up=False, endpoint="", reason="cluster_watch not running"),)),
        Component("patroni_api", patroni_api.run, on_stop=(PatroniObserved(up=False, role=Role.UNKNOWN),)),
        Component("pg_role", pg_role.run,
                  on_stop=(PostgresAvailability(up=False, reason="pg_role not running"),)),
        Component("watchdog", feeder.run),
    ]
    if cfg.hooks:
        hm = hooks.HookMetrics(ctx.registry)
        comps.append(Component("hooks", functools.partial(hooks.run, m=hm), heartbeat_timeout=float("inf")))
    return comps
