"""The leader watch against a real etcd: changes, outages, resets and compaction."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import AgentProc
from testlab.faults import TcpProxy

from agent.lab.etcd import Etcd
from agent.lab.procs import wait_until


def leader_of(a: AgentProc) -> str | None:
    st = a.status()
    return st["state"]["leader"] if st and st["state"]["dcs_up"] else "?"


@pytest.fixture
def scope() -> str:
    return f"s{uuid.uuid4().hex[:8]}"


@pytest.fixture
def proxy(etcd: Etcd) -> Iterator[TcpProxy]:
    with TcpProxy(etcd.client_port) as p:
        yield p


def test_leader_change_reaches_metrics(run_dir: Path, etcd: Etcd, scope: str) -> None:
    etcd.put(f"/service/{scope}/leader", "node2")
    with AgentProc(run_dir, etcd.url, scope=scope) as a:
        assert a.metric('pgnode_leader{member="node2"}') == 1.0
        assert a.metric('pgnode_leader_view{view="other"}') == 1.0
        etcd.put(f"/service/{scope}/leader", "node1")
        wait_until(lambda: a.metric('pgnode_leader_view{view="me"}') == 1.0, 5, "leader view me")
        assert a.metric("pgnode_leader_changes_total") == 1.0
        assert a.metric("pgnode_leader_change_observed_timestamp_seconds") is not None
        etcd.put(f"/service/{scope}/failover", '{"leader":"node1","member":"node3"}')
        wait_until(lambda: a.metric("pgnode_failover_pending") == 1.0, 5, "failover pending")
        etcd.put(f"/service/{scope}/failover", "")  # how Patroni clears it after a switchover
        wait_until(lambda: a.metric("pgnode_failover_pending") == 0.0, 5, "failover cleared by an empty value")
        events = [e for e in a.logs() if e.get("event") == "leader_changed"]
        assert [(e["old"], e["new"]) for e in events] == [(None, "node2"), ("node2", "node1")]


def test_frozen_etcd_turns_dcs_down_and_recovers(run_dir: Path, fresh_etcd: Etcd, scope: str) -> None:
    fresh_etcd.put(f"/service/{scope}/leader", "node2")
    with AgentProc(run_dir, fresh_etcd.url, scope=scope) as a:
        fresh_etcd.pause()
        try:
            # watch_deadline 3 s + one probe (timeout 2 s): well within 10 s
            wait_until(lambda: a.metric("pgnode_dcs_up") == 0.0, 10, "dcs down after SIGSTOP", detail=a.tail)
            assert a.metric('pgnode_leader_view{view="unknown"}') == 1.0
            assert a.get("/health")[0] == 200  # an outage is reported, not a reason to be restarted
        finally:
            fresh_etcd.resume()
        wait_until(lambda: a.metric("pgnode_dcs_up") == 1.0, 10, "dcs up after SIGCONT", detail=a.tail)
        fresh_etcd.put(f"/service/{scope}/leader", "node3")
        wait_until(lambda: leader_of(a) == "node3", 5, "leader node3 after resume")


def test_etcd_killed_and_restarted_loses_no_leader_change(
    run_dir: Path, fresh_etcd: Etcd, scope: str
) -> None:
    fresh_etcd.put(f"/service/{scope}/leader", "node2")
    with AgentProc(run_dir, fresh_etcd.url, scope=scope) as a:
        fresh_etcd.kill9()
        wait_until(lambda: a.metric("pgnode_dcs_up") == 0.0, 10, "dcs down after kill -9")
        fresh_etcd.start()
        fresh_etcd.put(f"/service/{scope}/leader", "node1")
        wait_until(lambda: leader_of(a) == "node1", 15, "leader node1 after etcd restart", detail=a.tail)
        assert a.metric("pgnode_leader_changes_total") == 1.0
        assert a.p is not None and a.p.poll() is None


def test_changes_while_connection_blackholed_are_replayed_once(
    run_dir: Path, etcd: Etcd, proxy: TcpProxy, scope: str
) -> None:
    etcd.put(f"/service/{scope}/leader", "node2")
    with AgentProc(run_dir, proxy.url, scope=scope) as a:
        proxy.blackhole()
        etcd.delete(f"/service/{scope}/leader")
        etcd.put(f"/service/{scope}/leader", "node3")
        etcd.put(f"/service/{scope}/leader", "node1")
        wait_until(lambda: a.metric("pgnode_dcs_up") == 0.0, 10, "dcs down while blackholed", detail=a.tail)
        proxy.heal()
        wait_until(lambda: leader_of(a) == "node1", 15, "leader node1 after heal", detail=a.tail)
        # every intermediate leader was replayed in order, each reported exactly once
        news = [e["new"] for e in a.logs() if e.get("event") == "leader_changed"]
        assert news == ["node2", None, "node3", "node1"]
        assert a.metric("pgnode_leader_changes_total") == 2.0
        proxy.reset()  # a reset stream resumes from the last revision: no replays reported
        etcd.put(f"/service/{scope}/members/node9", '{"role":"replica"}')
        wait_until(
            lambda: any(m["name"] == "node9" for m in a.status()["state"]["members"]), 15, "member seen"
        )
        assert [e["new"] for e in a.logs() if e.get("event") == "leader_changed"] == news


def test_compacted_revision_is_relisted_and_the_change_reported(
    run_dir: Path, etcd: Etcd, proxy: TcpProxy, scope: str
) -> None:
    etcd.put(f"/service/{scope}/leader", "node2")
    with AgentProc(run_dir, proxy.url, scope=scope) as a:
        proxy.blackhole()
        etcd.put(f"/service/{scope}/leader", "node3")
        for i in range(5):
            etcd.put(f"/other/{scope}/noise", str(i))
        etcd.compact()
        wait_until(lambda: a.metric("pgnode_dcs_up") == 0.0, 10, "dcs down while blackholed")
        proxy.heal()
        wait_until(lambda: leader_of(a) == "node3", 15, "leader node3 after compaction", detail=a.tail)
        assert any(e.get("event") == "watch_compacted" for e in a.logs())
        assert a.metric("pgnode_leader_changes_total") == 1.0


def test_watch_with_etcd_rbac_authenticates(run_dir: Path, fresh_etcd: Etcd, scope: str) -> None:
    def etcdctl(*args: str) -> None:
        subprocess.run(["etcdctl", f"--endpoints={fresh_etcd.url}", *args], check=True, capture_output=True,
                       timeout=30, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})

    etcdctl("user", "add", "root:rootpw")
    etcdctl("auth", "enable")
    etcdctl("--user", "root:rootpw", "put", f"/service/{scope}/leader", "node2")
    pw = run_dir / "etcd-pw"
    pw.write_text("rootpw\n")
    pw.chmod(0o600)
    a = AgentProc(run_dir, fresh_etcd.url, scope=scope)
    a.config.write_text(a.config.read_text().replace(
        "[etcd]\n", f'[etcd]\nusername = "root"\npassword_file = "{pw}"\n', 1))
    a.start().wait_ready()
    try:
        assert leader_of(a) == "node2"
        etcdctl("--user", "root:rootpw", "put", f"/service/{scope}/leader", "node1")
        wait_until(lambda: leader_of(a) == "node1", 10, "leader seen through an authenticated watch",
                   detail=a.tail)
        assert "rootpw" not in a.log_path.read_text()
    finally:
        a.stop()
