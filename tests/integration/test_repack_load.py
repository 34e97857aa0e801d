"""Do no harm under load: three real agents beside a 3-node Patroni cluster, pgbench (4 clients,
reads and updates of the table being repacked) through a repack, and a switchover in the middle
of it. Latency with and without the repack is printed, not asserted (load on the test machine
decides it)."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from repack_lab import DB, EXTENSIONS, LEFTOVERS, REPACK, bloated_table

from agent.lab.agents import Agents
from agent.lab.cluster import Cluster, connect
from agent.lab.etcd import Etcd
from agent.lab.patroni import PG_BIN_DIR, PatroniNode
from agent.lab.procs import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 300_000
_scopes = itertools.count(1)
SCRIPT = f"""\\set id random(1, {ROWS})
SELECT payload FROM tbl WHERE id = :id;
UPDATE tbl SET payload = md5(:id::text) WHERE id = :id;
"""
KILLED = re.compile(r"\[(\d+)\] (\S*) ?(?:ERROR|FATAL):  (canceling statement due to user request|"
                    r"terminating connection due to administrator command)")


@pytest.fixture
def loaded(run_dir: Path, etcd: Etcd) -> Iterator[Cluster]:
    # %a in the log prefix names each cancelled or terminated session's application
    c = Cluster(run_dir, etcd.url, nodes=3, scope=f"load{next(_scopes)}",
                parameters={"log_line_prefix": "%m [%p] %a "})
    try:
        c.start()
        leader = c.leader()
        c.psql(leader, f"CREATE DATABASE {DB}")
        with connect(leader, DB) as conn:
            for stmt in [*EXTENSIONS, "CREATE TABLE other (id int)", *bloated_table("tbl", ROWS)]:
                conn.execute(stmt.encode())
        yield c
    finally:
        c.stop()


def _q(node: PatroniNode, sql: str) -> list[tuple[Any, ...]]:
    with connect(node, DB) as c:
        return c.execute(sql.encode()).fetchall()


def _pgbench(node: PatroniNode, script: Path, seconds: int) -> subprocess.Popen[str]:
    return subprocess.Popen([str(PG_BIN_DIR / "pgbench"), "-h", str(node.socket_dir), "-p", str(node.pg_port),
                             "-U", "postgres", "-n", "-c", "4", "-j", "2", "-T", str(seconds), "-f", str(script),
                             DB], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _result(p: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = p.communicate(timeout=120)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    tx = re.search(r"number of transactions actually processed: (\d+)", out)
    assert p.returncode == 0 and lat and failed and tx, out
    return {"latency_ms": float(lat.group(1)), "failed": int(failed.group(1)), "transactions": int(tx.group(1))}


def _clean_everywhere(cluster: Cluster) -> bool:
    try:
        return all(_q(n, LEFTOVERS)[0][0] == 0 for n in cluster.nodes)
    except psycopg.OperationalError:  # the old primary restarting as a replica
        return False


def _agent_log(run_dir: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (run_dir / f"agent-{name}.log").read_text().splitlines() if ln.startswith("{")]


def _ts(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")).timestamp()


def test_pgbench_through_a_repack_and_a_switchover_is_not_harmed_by_the_agent(
        loaded: Cluster, run_dir: Path, etcd: Etcd) -> None:
    cluster = loaded
    old = cluster.leader()
    script = run_dir / "bench.sql"
    script.write_text(SCRIPT)
    without = _result(_pgbench(old, script, 8))
    assert without["failed"] == 0

    pg_log = run_dir / f"patroni-{old.name}.log"
    log_from = pg_log.stat().st_size
    agents = Agents(run_dir, cluster, [etcd.url], extra_toml=REPACK)
    blocker = connect(old, DB)
    blocker.autocommit = False
    blocker.execute("SET application_name = 'blocker'")
    blocker.execute("INSERT INTO other VALUES (1)")  # a client transaction: pg_repack waits for it
    try:
        agents.start()
        wait_until(lambda: _q(old, "SELECT 1 FROM pg_trigger WHERE tgname = 'repack_trigger'"), 60,
                   "pg_repack running on tbl", detail=agents[old.name].status)
        with_repack = _result(_pgbench(old, script, 8))
        assert with_repack["failed"] == 0
        assert _q(old, "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pg_repack'"), "run ended early"

        new = cluster.switchover()
        wait_until(lambda: _clean_everywhere(cluster), 60, "no trigger or log table on any node")
        logs = _agent_log(run_dir, old.name)
        key = next(e for e in logs if e.get("event") == "failover_pending_changed" and e.get("new"))
        done = next(e for e in logs if e.get("event") == "repack_finished")
        assert done["result"] == "aborted" and done["guard"] in ("failover_pending", "confirmed_primary"), done
        assert done["leftovers"] == 0

        # before the old primary's shutdown, nobody but pg_repack itself was cancelled or terminated
        text = pg_log.read_bytes()[log_from:].decode(errors="replace")
        before_shutdown, marker, after = text.partition("received fast shutdown request")
        assert marker, "the old primary's shutdown is not in its log"
        killed = [m.group(0) for m in KILLED.finditer(before_shutdown) if m.group(2) != "pg_repack"]
        assert killed == [], killed
        # the pattern does find a client's termination: the switchover's own, of the blocker
        assert any(m.group(2) == "blocker" for m in KILLED.finditer(after)), after[-3000:]

        newa = agents[new]
        out = wait_until(lambda: next((r for r in ((newa.status() or {}).get("repack") or {}).get("recent") or []
                                       if r["table"] == "public.tbl"), None),
                         120, "the new primary repacks tbl", detail=newa.status)
        assert isinstance(out, dict) and out["result"] == "success", out
        wait_until(lambda: _clean_everywhere(cluster), 30, "no trigger or log table on any node")
        print(f"pgbench 4 clients, 8 s: without repack {without['latency_ms']:.2f} ms avg "  # noqa: T201
              f"({without['transactions']:.0f} tx), with pg_repack running {with_repack['latency_ms']:.2f} ms avg "
              f"({with_repack['transactions']:.0f} tx); failover key -> repack_finished "
              f"{_ts(done) - _ts(key):.2f} s (stop_to_clean_seconds={done.get('stop_to_clean_seconds')})")
    finally:
        blocker.close()
        agents.stop()
