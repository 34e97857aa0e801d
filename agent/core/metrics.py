"""The agent's registry and the collector that renders NodeState at scrape time.

What the node *is* (role, leader, up/down) is read from NodeState on every scrape, so /metrics
and /status cannot disagree; what the agent *does* (restarts, feeds) are instruments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import __version__
from agent.core.events import LeaderView, Role
from agent.core.state import NodeState


class StateCollector(Collector):
    def __init__(self, current: Callable[[], NodeState], up: Callable[[], dict[str, bool]]) -> None:
        self._current = current
        self._up = up

    def collect(self) -> Iterator[Metric]:
        s = self._current()
        role = GaugeMetricFamily("pgnode_role", "1 for the role this node holds now.", labels=["role"])
        for r in Role:
            role.add_metric([r.value], 1.0 if s.role is r else 0.0)
        yield role
        view = GaugeMetricFamily("pgnode_leader_view", "1 for whose the etcd leader key is: me, other, unknown.",
                                 labels=["view"])
        for v in LeaderView:
            view.add_metric([v.value], 1.0 if s.leader_view is v else 0.0)
        yield view
        leader = GaugeMetricFamily("pgnode_leader", "1 for the member named by the etcd leader key.",
                                   labels=["member"])
        if s.leader is not None and s.dcs_up:
            leader.add_metric([s.leader], 1.0)
        yield leader
        yield _gauge("pgnode_confirmed_primary",
                     "1 when etcd leader key, Patroni REST and pg_is_in_recovery() all say primary.",
                     s.confirmed_primary)
        dis = GaugeMetricFamily("pgnode_role_disagreement", "1 while the role sources disagree (reason label).",
                                labels=["reason"])
        if s.disagreement:
            dis.add_metric([s.disagreement], 1.0)
        yield dis
        yield _gauge("pgnode_dcs_up", "1 while an etcd member with a leader answers and the watch is caught up.",
                     s.dcs_up)
        yield _gauge("pgnode_postgres_up", "1 while the local PostgreSQL answers.", s.postgres_up)
        yield _gauge("pgnode_patroni_up", "1 while the local Patroni REST API answers.", s.patroni_up)
        yield _gauge("pgnode_failover_pending", "1 while Patroni's failover key exists.", s.failover_pending)
        yield _gauge("pgnode_cluster_paused", "1 while the Patroni cluster is in maintenance mode.", s.paused)
        changes = CounterMetricFamily("pgnode_leader_changes",
                                      "Leader key changes observed by this agent (one per change).")
        changes.add_metric([], float(s.leader_changes))
        yield changes
        yield gauge_if_known("pgnode_leader_change_observed_timestamp_seconds",
                             "Wall-clock time this agent observed the last leader change.", s.leader_changed_at)
        if s.timeline is not None:
            yield GaugeMetricFamily("pgnode_timeline", "PostgreSQL timeline reported by Patroni.", value=s.timeline)
        up = GaugeMetricFamily("pgnode_up", "1 while the agent component runs.", labels=["component"])
        for name, ok in sorted(self._up().items()):
            up.add_metric([name], 1.0 if ok else 0.0)
        yield up


def gauge_if_known(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    """The family always (so it is described), its one sample only once the value is known."""
    g = GaugeMetricFamily(name, doc)
    if value is not None:
        g.add_metric([], float(value))
    return g


def _gauge(name: str, doc: str, v: bool) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=1.0 if v else 0.0)


class CoreMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.restarts = Counter("pgnode_component_restarts", "Restarts of an agent component after a crash.",
                                ["component"], registry=registry)
        self.build = Gauge("pgnode_build_info", "Agent version (always 1).", ["version"], registry=registry)
        self.build.labels(__version__).set(1)
        self.reloads = Counter("pgnode_config_reloads", "SIGHUP reloads by result.", ["result"], registry=registry)
        for r in ("success", "failure"):
            self.reloads.labels(r)
