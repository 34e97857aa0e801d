"""The lab itself: the processes come up, the faults do what they say, teardown leaves nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
from testlab.faults import TcpProxy, cpu_burn
from testlab.postgres import PgInstance

from agent.lab import http
from agent.lab.agents import Agents
from agent.lab.cluster import Cluster, all_dead
from agent.lab.etcd import Etcd
from agent.lab.patroni import PATRONI3_BIN, PATRONI_BIN, PATRONI_DEFAULTS
from agent.lab.procs import pid_alive, wait_until


def test_cluster_has_one_running_leader_and_streaming_replicas(cluster: Cluster) -> None:
    members = cluster.cluster_json()["members"]  # type: ignore[index]
    roles = sorted((m["role"], m["state"]) for m in members)
    assert roles == [("leader", "running"), ("replica", "streaming"), ("replica", "streaming")]
    leader = cluster.leader()
    assert cluster.psql(leader, "select pg_is_in_recovery(), current_user") == [(False, "postgres")]
    preload = cluster.psql(leader, "show shared_preload_libraries")[0][0]
    assert "pg_stat_statements" in preload
    assert cluster.psql(cluster.replicas()[0], "select pg_is_in_recovery()") == [(True,)]


@pytest.mark.parametrize("patroni_bin", [PATRONI_BIN, PATRONI3_BIN], ids=["patroni4", "patroni3"])
def test_patroni_defaults_are_the_installed_patronis_own(patroni_bin: Path) -> None:
    """The "patroni-defaults" lab variant claims Patroni's defaults: ask each installed Patroni."""
    if not patroni_bin.exists():
        pytest.skip(f"missing (run .ci/install): {patroni_bin}")
    code = ("import json; from patroni.config import Config; d = Config.get_default_config(); "
            "print(json.dumps({k: d[k] for k in ('ttl', 'loop_wait', 'retry_timeout')}))")
    out = subprocess.run([str(patroni_bin.with_name("python")), "-c", code], check=True, capture_output=True,
                         text=True, timeout=60).stdout
    want = {"ttl": PATRONI_DEFAULTS.ttl, "loop_wait": PATRONI_DEFAULTS.loop_wait,
            "retry_timeout": PATRONI_DEFAULTS.retry_timeout}
    assert json.loads(out) == want


def test_switchover_moves_the_leader(cluster: Cluster) -> None:
    old = cluster.leader_name()
    candidate = next(n.name for n in cluster.nodes if n.name != old)
    assert cluster.switchover(candidate) == candidate
    assert cluster.leader_name() == candidate
    cluster.wait_healthy(30)  # leaves the session cluster as it found it: healthy


def test_etcd_pause_makes_it_unreachable_and_resume_brings_it_back(fresh_etcd: Etcd) -> None:
    rev = fresh_etcd.put("/lab/k", "v1")
    fresh_etcd.pause()
    try:
        assert not fresh_etcd.healthy()
    finally:
        fresh_etcd.resume()
    wait_until(fresh_etcd.healthy, 10, "etcd healthy after SIGCONT")
    assert fresh_etcd.get("/lab/k") == "v1"
    fresh_etcd.put("/lab/k", "v2")
    assert fresh_etcd.compact() > rev


def test_etcd_restart_keeps_data_and_kill9_stops_it(fresh_etcd: Etcd) -> None:
    fresh_etcd.put("/lab/k", "kept")
    fresh_etcd.restart()
    assert fresh_etcd.get("/lab/k") == "kept"
    pid = fresh_etcd.pid
    fresh_etcd.kill9()
    assert pid is not None and not pid_alive(pid)
    assert not fresh_etcd.healthy()


def test_proxy_blackholes_heals_and_resets(fresh_etcd: Etcd) -> None:
    with TcpProxy(fresh_etcd.client_port) as proxy:
        assert http.get(f"{proxy.url}/health")[0] == 200
        proxy.blackhole()
        t0 = time.monotonic()
        assert http.get(f"{proxy.url}/health", timeout=0.5)[0] == 0  # no answer at all, not an error
        assert time.monotonic() - t0 >= 0.5
        proxy.heal()
        assert http.get(f"{proxy.url}/health")[0] == 200

        with socket.create_connection(("127.0.0.1", proxy.port), timeout=2) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # incomplete request: etcd keeps it open
            wait_until(lambda: proxy.open_connections() >= 1, 5, "proxied connection open")
            assert proxy.reset() >= 1
            with pytest.raises(ConnectionResetError):
                s.recv(1024)


def test_cpu_burn_runs_and_stops() -> None:
    with cpu_burn(5, procs=2) as pids:
        assert all(pid_alive(p) for p in pids)
    assert all_dead(pids)


def test_pg15_standalone_instance_is_ready(pg15: PgInstance) -> None:
    rows = pg15.psql(
        "select current_user, current_setting('archive_mode'), current_setting('shared_preload_libraries')"
    )
    assert rows == [("postgres", "on", "pg_stat_statements")]


def test_agents_come_up_and_name_the_patroni_leader(cluster: Cluster, agents: Agents) -> None:
    leader = cluster.leader_name()

    def all_agree() -> bool:
        states = [(a.status() or {}).get("state") or {} for a in agents]
        return all(s.get("leader") == leader for s in states)

    wait_until(all_agree, 15, f"every agent reports leader {leader}")
    assert "pgnode_" in agents[str(leader)].metrics()


@pytest.mark.slow
def test_kill9_of_the_leader_node_elects_a_new_leader(fresh_cluster: Cluster) -> None:
    old, pids = fresh_cluster.kill9_leader()
    assert all_dead(pids)
    new = fresh_cluster.wait_for_leader(lambda n: n != old, timeout=fresh_cluster.timings.leader_lost())
    assert new != old
    fresh_cluster.wait_writable(new, timeout=15)


def test_teardown_leaves_no_process_alive(run_dir: Path, etcd: Etcd) -> None:
    c = Cluster(run_dir, etcd.url, scope="teardown")
    try:
        c.start()
        pids = c.pids()
        assert len(pids) >= 3 * 4  # Patroni, postmaster and backends on every node
    finally:
        c.stop()
    assert all_dead(pids), [p for p in pids if pid_alive(p)]
