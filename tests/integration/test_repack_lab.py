"""Repack windows on the Patroni lab: three real agents beside three Patroni members, one bloated
table. Only the confirmed primary's agent runs pg_repack (under the scope's etcd lock); the
replicas' agents wait on `confirmed_primary`, and the rewritten table reaches them through
physical replication."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from repack_lab import DB, EXTENSIONS, REPACK, bloated_table

from agent.lab.agents import Agents
from agent.lab.cluster import Cluster, connect
from agent.lab.etcd import Etcd
from agent.lab.procs import wait_until

pytestmark = pytest.mark.integration



@pytest.fixture
def bloated(fresh_cluster: Cluster) -> Cluster:
    leader = fresh_cluster.leader()
    fresh_cluster.psql(leader, f"CREATE DATABASE {DB}")
    for stmt in [*EXTENSIONS, *bloated_table("tbl", 100_000)]:
        with _connect(fresh_cluster, leader.name) as c:
            c.execute(stmt.encode())
    return fresh_cluster


def _connect(cluster: Cluster, node: str) -> psycopg.Connection[tuple[Any, ...]]:
    return connect(cluster.node(node), DB)


def _filenode(cluster: Cluster, node: str) -> int:
    with _connect(cluster, node) as c:
        row = c.execute("SELECT pg_relation_filenode('tbl')").fetchone()
        assert row is not None
        return int(row[0])


def test_only_the_primarys_agent_repacks_and_replicas_receive_the_rewrite(bloated: Cluster, run_dir: Path,
                                                                         etcd: Etcd) -> None:
    cluster = bloated
    leader = cluster.leader_name()
    before = _filenode(cluster, leader)
    agents = Agents(run_dir, cluster, [etcd.url], extra_toml=REPACK)
    try:
        agents.start()
        primary = agents[leader]

        def repacked() -> dict[str, Any] | None:
            recent = ((primary.status() or {}).get("repack") or {}).get("recent") or []
            return recent[0] if recent else None

        out = wait_until(repacked, 60, "the primary's agent repacks tbl", detail=primary.status)
        assert isinstance(out, dict) and out["result"] == "success" and out["table"] == "public.tbl", out
        after = _filenode(cluster, leader)
        assert after != before
        for a in agents:
            if a.name == leader:
                continue
            st = (a.status() or {})["repack"]
            assert st["recent"] == [] and "confirmed_primary" in st["waiting_for"], st
            # the rewrite is WAL: the replica's table has the new filenode once it has replayed it
            wait_until(lambda n=a.name: _filenode(cluster, n) == after, 30, f"{a.name} replays the rewrite")
        metrics = primary.metrics()
        assert 'pgnode_repack_runs_total{result="success"} 1.0' in metrics
    finally:
        agents.stop()
