"""A three-member etcd, as production Patroni runs on: Patroni and the agents get all three
endpoints. kill -9 of the member the agents talk to moves them to another member, resumed from
the last revision (no DCS flap seen by the jobs, no agent restart), and a switchover afterwards
is seen by every agent exactly once."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentproc import AgentProc

from agent.lab import netns
from agent.lab.agents import Agents
from agent.lab.cluster import Cluster
from agent.lab.etcd import EtcdCluster
from agent.lab.procs import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def etcd3(run_dir: Path) -> Iterator[EtcdCluster]:
    e = EtcdCluster(run_dir)
    try:
        e.start()
        yield e
    finally:
        e.stop()


@pytest.fixture
def lab3(run_dir: Path, etcd3: EtcdCluster) -> Iterator[tuple[Cluster, Agents]]:
    c = Cluster(run_dir, ",".join(etcd3.endpoints), scope="three")
    agents = Agents(run_dir, c, etcd3.endpoints)
    try:
        c.start()
        agents.start()
        yield c, agents
    finally:
        agents.stop()
        c.stop()


def watch(agent: Any) -> dict[str, Any]:
    st = agent.status() or {}
    return {**st.get("cluster_watch", {}), **{k: st.get("state", {}).get(k) for k in ("dcs_up", "leader",
                                                                                     "leader_changes")}}


def test_losing_the_agents_etcd_member_moves_the_watch_without_losing_a_leader_change(
        etcd3: EtcdCluster, lab3: tuple[Cluster, Agents]) -> None:
    cluster, agents = lab3
    leader = cluster.leader_name()
    wait_until(lambda: all(watch(a)["leader"] == leader and watch(a)["dcs_up"] for a in agents), 30,
               "every agent watches the leader")
    used = {watch(a)["endpoint"] for a in agents}
    assert len(used) == 1, used          # every agent starts on the first endpoint
    victim = etcd3.member(used.pop())
    pids = {a.name: a.pid for a in agents}
    log_from = {a.name: a.proc.log_path.stat().st_size for a in agents}
    victim.kill9()
    wait_until(lambda: all(watch(a)["endpoint"] != victim.url and watch(a)["dcs_up"] for a in agents), 30,
               "every agent watches another member", detail=lambda: [watch(a) for a in agents])
    assert all(watch(a)["resyncs"] == 0 for a in agents)   # resumed from the revision, not re-listed
    candidate = next(n.name for n in cluster.nodes if n.name != leader)

    def switchover() -> str | None:
        # Patroni's own etcd client may still be on the dead member: its REST API then answers 503
        # "failed to write failover key into DCS" until it has moved on, as an operator would see
        try:
            return cluster.switchover(candidate)
        except RuntimeError as e:
            if "failed to write failover key into DCS" in str(e):
                return None
            raise

    new = wait_until(switchover, 60, "Patroni accepts the switchover", interval=1.0)
    wait_until(lambda: all(watch(a)["leader"] == new for a in agents), 30, "every agent sees the new leader",
               detail=lambda: [watch(a) for a in agents])
    assert [watch(a)["leader_changes"] for a in agents] == [1, 1, 1]
    assert {a.name: a.pid for a in agents} == pids
    assert all('pgnode_dcs_up 1.0' in a.metrics() for a in agents)
    for a in agents:  # one member down out of three is not a DCS outage: the jobs never saw one
        events = [json.loads(ln) for ln in a.proc.log_path.read_bytes()[log_from[a.name]:].splitlines()
                  if ln.startswith(b"{")]
        assert not [e for e in events if e.get("event") == "dcs_availability_changed"], a.name
        assert [e["revision"] > 0 for e in events if e.get("event") == "watch_resumed"][:1] == [True], a.name


@pytest.mark.parametrize("progress", ["", "1s"], ids=["defaults", "progress-1s"])
def test_member_cut_off_from_its_peers_is_no_source_of_truth(run_dir: Path, progress: str) -> None:
    """A member partitioned from its peers runs on without a leader and still answers its clients
    (serializable reads, watches, and progress notifications when enabled). The agents on it must
    leave it for a member with a leader and see a leader change made meanwhile, once."""
    reason = netns.available()
    if reason:
        pytest.skip(reason)
    e = EtcdCluster(run_dir, progress_notify=progress, partitionable=True)
    scope = "cut"
    leader = f"/service/{scope}/leader"
    agents: list[AgentProc] = []
    try:
        e.start()
        e.members[1].put(leader, "node2")
        for i in (1, 2):
            a = AgentProc(run_dir, e.endpoints[0], name=f"node{i}", scope=scope)
            a.config.write_text(a.config.read_text().replace(
                f'endpoints = ["{e.endpoints[0]}"]', "endpoints = " + json.dumps(e.endpoints)))
            agents.append(a.start().wait_ready())
        assert [a.status()["cluster_watch"]["endpoint"] for a in agents] == [e.endpoints[0]] * 2
        cut = e.partition()
        # a write on the majority side (it may be electing a new leader first)
        wait_until(lambda: _try_put(e.members[1], leader, "node3"), 20, "a write on the majority side")
        assert cut.get_serializable(leader) == "node2"   # the cut member still serves its old view
        for a in agents:
            wait_until(lambda a=a: a.status()["cluster_watch"]["endpoint"] != cut.url
                       and a.status()["state"]["leader"] == "node3", 30,
                       "agent left the cut member and sees the new leader", detail=a.tail)
            assert [ev["new"] for ev in a.logs() if ev.get("event") == "leader_changed"] == ["node2", "node3"]
            assert a.status()["state"]["leader_changes"] == 1
            assert a.metric("pgnode_dcs_up") == 1.0
            # the member admitted it has no leader: what it served since may have been stale, so
            # the DCS was down from then until a member with a leader had replayed past it
            up, down, back = _dcs_events(a)
            assert (up["new"], up["endpoint"]) == (True, cut.url), up
            assert (down["new"], down["endpoint"]) == (False, cut.url), down
            assert "no leader" in down["reason"], down
            assert back["new"] is True and back["endpoint"] not in ("", cut.url), back
    finally:
        for a in agents:
            a.stop()
        e.stop()


def test_a_node_cut_off_with_its_member_reports_the_dcs_down_until_healed(run_dir: Path) -> None:
    """A whole node cut off: the agent's only endpoint is the member that lost its peers. It
    reports the DCS down and the leader unknown, stays so without a restart storm, and is back
    with the leader changed meanwhile once the partition heals."""
    reason = netns.available()
    if reason:
        pytest.skip(reason)
    e = EtcdCluster(run_dir, partitionable=True)
    scope = "island"
    leader = f"/service/{scope}/leader"
    a = AgentProc(run_dir, e.endpoints[0], name="node1", scope=scope)
    try:
        e.start()
        e.members[1].put(leader, "node2")
        a.start().wait_ready()
        assert a.status()["state"]["leader"] == "node2"
        pid = a.p.pid if a.p else 0
        cut = e.partition()
        wait_until(lambda: a.metric("pgnode_dcs_up") == 0.0, 30, "pgnode_dcs_up 0 on the cut member",
                   detail=a.tail)
        st = a.status()["state"]
        assert (st["dcs_up"], st["leader"], st["leader_view"]) == (False, None, "unknown"), st
        assert a.metric('pgnode_leader{member="node2"}') in (None, 0.0)
        wait_until(lambda: _try_put(e.members[1], leader, "node3"), 20, "a write on the majority side")
        # it stays down, and retries calmly: no DCS flap, no component or process restart, and
        # connection attempts no denser than the backoff's floor
        first = a.status()["cluster_watch"]
        for _ in range(10):
            time.sleep(1)
            s = a.status()
            assert s["state"]["dcs_up"] is False and s["state"]["leader"] is None, s["state"]
        last = a.status()
        assert a.p is not None and a.p.pid == pid and a.p.poll() is None
        assert last["components"]["cluster_watch"]["restarts"] == 0, last["components"]
        assert last["cluster_watch"]["stream_deaths"] <= first["stream_deaths"] + 1, (first, last)
        assert 1 <= last["cluster_watch"]["connect_failures"] - first["connect_failures"] <= 10 / 0.2
        assert [ev["new"] for ev in _dcs_events(a)] == [True, False]
        e.heal()
        wait_until(lambda: a.metric("pgnode_dcs_up") == 1.0 and a.status()["state"]["leader"] == "node3", 60,
                   "back with the new leader after the partition heals", detail=a.tail)
        _, down, back = _dcs_events(a)
        assert "no leader" in down["reason"] and down["endpoint"] == cut.url, down
        assert back["new"] is True and back["endpoint"] == cut.url, back
        assert [ev["new"] for ev in a.logs() if ev.get("event") == "leader_changed"] == ["node2", "node3"]
        assert a.status()["state"]["leader_changes"] == 1
        assert a.metric('pgnode_leader{member="node3"}') == 1.0
        assert a.p is not None and a.p.pid == pid and a.p.poll() is None
    finally:
        a.stop()
        e.stop()


def _dcs_events(a: AgentProc) -> list[dict[str, Any]]:
    return [ev for ev in a.logs() if ev.get("event") == "dcs_availability_changed"]


def _try_put(member: Any, key: str, value: str) -> bool:
    try:
        member.put(key, value)
    except RuntimeError:
        return False
    return True


def test_killing_the_raft_leader_the_agent_reads_from_is_no_dcs_outage(run_dir: Path) -> None:
    """The agent's member is also the raft leader: kill -9 leaves the others without a leader
    until they elect one (a split vote doubles that), and they refuse require-leader reads
    meanwhile. That is the cluster electing, not a member serving a stale view: the agent waits
    for them, resumes, and sees the change made after the election, without a DCS flap."""
    e = EtcdCluster(run_dir)
    scope = "elect"
    leader = f"/service/{scope}/leader"
    a = AgentProc(run_dir, e.endpoints[0], name="node1", scope=scope)
    a.config.write_text(a.config.read_text().replace(
        f'endpoints = ["{e.endpoints[0]}"]', "endpoints = " + json.dumps(e.endpoints)))
    try:
        e.start()
        first = e.members[0]

        def raft() -> tuple[dict[str, int], int]:
            status = json.loads(first.etcdctl("endpoint", "status", "--cluster", "-w", "json"))
            return ({s["Endpoint"].rstrip("/"): s["Status"]["header"]["member_id"] for s in status},
                    status[0]["Status"]["leader"])

        ids, raft_leader = raft()
        if raft_leader != ids[first.url]:
            e.member(next(u for u, i in ids.items() if i == raft_leader)).etcdctl(
                "move-leader", format(ids[first.url], "x"))
        assert raft()[1] == ids[first.url]
        e.members[1].put(leader, "node2")
        a.start().wait_ready()
        assert a.status()["state"]["leader"] == "node2"
        first.kill9()
        wait_until(lambda: _try_put(e.members[1], leader, "node3"), 30, "a write after the election")
        wait_until(lambda: a.status()["state"]["leader"] == "node3", 30, "the agent sees the new leader",
                   detail=a.tail)
        assert a.status()["cluster_watch"]["endpoint"] != first.url
        assert [ev["new"] for ev in _dcs_events(a)] == [True], _dcs_events(a)
        assert [ev["new"] for ev in a.logs() if ev.get("event") == "leader_changed"] == ["node2", "node3"]
    finally:
        a.stop()
        e.stop()
