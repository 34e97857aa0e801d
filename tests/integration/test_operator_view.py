"""What an operator sees: every Grafana panel's PromQL against a real Prometheus scraping the lab.

Debian's Prometheus scrapes the session cluster's agents (and Patroni's own /metrics) every
second with the shipped alert rules loaded (lab copy, shortened `for:`). After a little SQL on the
leader, every `targets[].expr` of `config/grafana/pg-node-agent.json` must parse and return data.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent.lab.agents import Agents
from agent.lab.cluster import Cluster
from agent.lab.prometheus import AGENT_JOB, PATRONI_JOB, Prometheus, PromQLError, lab_jobs

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "pg-node-agent.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
DEADLINE = 35.0


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"{p['title']} [{t['refId']}]", t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]


def substitute(expr: str, cluster: str) -> str:
    """Grafana's variables, as Grafana would expand them for a 5-minute view."""
    return (expr.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$__interval", "15s")
            .replace("$cluster", cluster))


def test_dashboard_is_current_grafana_json_over_existing_metrics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["cluster"]["type"] == "query"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    documented = set(re.findall(r"^\| `(pgnode_\w+)`", METRICS_DOC.read_text(), re.M))
    for title, expr in exprs(dash):
        assert "$cluster" in expr, f"{title}: not filtered by cluster: {expr}"
        for name in re.findall(r"\bpgnode_\w+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in documented or base in documented, f"{title}: {name} is not in docs/metrics.md"
    for p in panels(dash):
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]


def test_every_panel_query_returns_data_from_real_prometheus(
    run_dir: Path, cluster: Cluster, agents: Agents
) -> None:
    dash = json.loads(DASHBOARD.read_text())
    queries = {title: substitute(expr, cluster.scope) for title, expr in exprs(dash)}
    annotations = [substitute(a["expr"], cluster.scope) for a in dash["annotations"]["list"] if "expr" in a]
    prom = Prometheus(run_dir, lab_jobs(agents, cluster))
    try:
        prom.start()
        n = len(cluster.nodes)
        prom.wait_targets_up(AGENT_JOB, n, timeout=20)
        prom.wait_targets_up(PATRONI_JOB, n, timeout=10)
        leader = cluster.leader()
        cluster.wait_writable(leader.name)
        cluster.psql(leader, "create extension if not exists pg_stat_statements")

        def traffic() -> None:
            try:
                for i in range(5):
                    cluster.psql(leader, "select count(*) from pg_class where relpages >= %s", [i])
            except psycopg.Error:
                pass  # another test's switchover: the next round goes elsewhere or fails the deadline

        # The sampler turns pg_stat_statements deltas into series on its second read (10 s
        # interval); keep a little traffic going until every query answers or the deadline passes.
        outcome: dict[str, str] = {}
        deadline = time.monotonic() + DEADLINE
        while True:
            traffic()
            outcome = {}
            for title, q in queries.items():
                try:
                    if not prom.query(q):
                        outcome[title] = f"empty result: {q}"
                except PromQLError as e:
                    outcome[title] = f"does not parse/evaluate: {e}: {q}"
            if not outcome or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # next round of traffic + queries, within the deadline above
        assert outcome == {}, f"{len(outcome)} of {len(queries)} panel queries failed: " + json.dumps(
            outcome, indent=1)
        for q in annotations:
            prom.query(q)  # parses (a leader change annotation has data only after a change)
        # the shipped rules loaded: every group made it into Prometheus
        groups = {g["name"] for g in prom.rule_groups()}
        assert {"pg-node-agent.agent", "pg-node-agent.cluster", "pg-node-agent.archive"} <= groups
    finally:
        prom.stop()
