"""`enabled = false` + SIGHUP on a real agent process beside a real Patroni member, mid-run: the
running pg_repack is stopped and cleaned, and no table starts afterwards."""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from repack_lab import DB, EXTENSIONS, LEFTOVERS, REPACK, bloated_table

from agent.lab.agents import Agents
from agent.lab.cluster import Cluster, connect
from agent.lab.etcd import Etcd
from agent.lab.procs import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_scopes = itertools.count(1)


@pytest.fixture
def one_node(run_dir: Path, etcd: Etcd) -> Iterator[Cluster]:
    c = Cluster(run_dir, etcd.url, nodes=1, scope=f"reload{next(_scopes)}")
    try:
        c.start()
        leader = c.leader()
        c.psql(leader, f"CREATE DATABASE {DB}")
        with connect(leader, DB) as conn:
            for stmt in [*EXTENSIONS, "CREATE TABLE other (id int)", *bloated_table("tbl", 100_000),
                         *bloated_table("tbl2", 50_000)]:
                conn.execute(stmt.encode())
        yield c
    finally:
        c.stop()


def _rows(cluster: Cluster, sql: str) -> list[tuple[Any, ...]]:
    with connect(cluster.leader(), DB) as c:
        return c.execute(sql.encode()).fetchall()


def test_enabled_false_and_sighup_mid_run_stops_and_cleans_pg_repack_and_starts_nothing(
        one_node: Cluster, run_dir: Path, etcd: Etcd) -> None:
    cluster = one_node
    leader = cluster.leader()
    agents = Agents(run_dir, cluster, [etcd.url], extra_toml=REPACK)
    blocker = connect(leader, DB)
    blocker.autocommit = False
    blocker.execute("INSERT INTO other VALUES (1)")  # keeps pg_repack waiting after its copy
    try:
        agents.start()
        agent = agents[leader.name]
        wait_until(lambda: _rows(cluster, "SELECT 1 FROM pg_trigger WHERE tgname = 'repack_trigger'"), 60,
                   "pg_repack running on a table", detail=agent.status)
        text = agent.config_path.read_text()
        agent.config_path.write_text(text.replace("[repack]\nenabled = true", "[repack]\nenabled = false"))
        assert agent.pid is not None
        t0 = time.monotonic()
        os.kill(agent.pid, signal.SIGHUP)
        wait_until(lambda: _rows(cluster, LEFTOVERS)[0][0] == 0 and not _rows(
            cluster, "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_repack'"),
            30, "pg_repack stopped and cleaned", detail=agent.status)
        elapsed = time.monotonic() - t0
        recent = wait_until(lambda: ((agent.status() or {}).get("repack") or {}).get("recent"), 10,
                            "the run recorded", detail=agent.status)
        assert isinstance(recent, list)
        assert recent and recent[0]["result"] == "aborted" and recent[0]["guard"] == "disabled", recent
        logs = [json.loads(ln) for ln in (run_dir / f"agent-{leader.name}.log").read_text().splitlines()
                if ln.startswith("{")]
        reload = next(e for e in logs if e.get("event") == "config_reloaded")
        assert reload["restart_needed_for"] == []
        blocker.commit()  # nothing holds pg_repack back now: a second table would start if allowed
        time.sleep(6)
        st = agent.status() or {}
        assert len(st["repack"]["recent"]) == 1, st["repack"]
        assert st["repack"]["running"] is None
        assert not _rows(cluster, "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_repack'")
        print(f"SIGHUP (enabled=false) -> pg_repack stopped and cleaned: {elapsed:.2f}s "  # noqa: T201
              f"(stop_to_clean_seconds={recent[0]['stop_to_clean_seconds']})")
    finally:
        blocker.close()
        agents.stop()
