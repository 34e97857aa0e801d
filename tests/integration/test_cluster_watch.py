"""Agents on a real 3-node Patroni cluster: one confirmed primary, switchover, split-brain seen.

The faults run on the default lab and on the variants of conftest's `lab_variant`:
"patroni-defaults" runs Patroni with its own timings (ttl 30, loop_wait 10, retry_timeout 10)
instead of the lab's fast ones; the production-shaped PROD_VARIANTS run etcd 3.5 with TLS, client
certificates, RBAC and tokens expiring every 2 idle seconds, HTTPS Patroni 4 and Patroni 3. There
the agents' tokens expire mid-run, and the DCS must not flap for it. Waits for Patroni's actions
take their deadlines from the cluster's timings, so one test serves both; waits on the agents
alone (a few of their own poll intervals, 2 s for PostgreSQL and 5 s for Patroni) stay fixed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from testlab.secure import AGENT_PASSWORD

from agent.lab.agents import Agent, Agents
from agent.lab.cluster import Cluster
from agent.lab.etcd import Etcd
from agent.lab.patroni import PATRONI_DEFAULTS
from agent.lab.procs import wait_until

PATRONI_MAJOR = {"prod": "4.", "prod-patroni3": "3."}


def state(a: Agent) -> dict[str, Any]:
    st = a.status()
    return st["state"] if st else {}


def settled(agents: Agents, leader: str) -> bool:
    """Every agent names `leader`; only the leader's agent is a confirmed primary; no disagreement."""
    for a in agents:
        s = state(a)
        if s.get("leader") != leader or s.get("disagreement"):
            return False
        if s.get("confirmed_primary") != (a.name == leader):
            return False
        if s.get("role") != ("primary" if a.name == leader else "replica"):
            return False
    return True


def summary(agents: Agents) -> object:
    return {a.name: {k: state(a).get(k) for k in ("leader", "role", "confirmed_primary", "disagreement")}
            for a in agents}


def events(a: Agent) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in a.proc.log_path.read_bytes().splitlines() if ln.startswith(b"{")]


# the switchover and the postmaster kill are quick on the default lab, slow on the others
SLOW_LABS = ["patroni-defaults", *PATRONI_MAJOR]
ALL_LABS = ["default", *(pytest.param(v, marks=pytest.mark.slow) for v in SLOW_LABS)]


def check_lab_is_what_it_claims(lab_variant: str, cluster: Cluster, agents: list[Agent]) -> None:
    """The lab is what it claims: Patroni runs the timings the test's deadlines came from, and
    "patroni-defaults" runs Patroni's own. On a production-shaped lab, also: every agent's etcd
    token expired and was renewed during its run (waited for: tokens expire after 2 idle seconds,
    the scope's silences are checked every 5), and that never dropped the DCS nor restarted a watch
    stream for it."""
    assert cluster.dcs_timings() == cluster.timings
    if lab_variant == "patroni-defaults":
        assert cluster.timings == PATRONI_DEFAULTS
        assert all(n.rest_url.startswith("http://") for n in cluster.nodes)
    if lab_variant in ("default", "patroni-defaults"):
        return
    assert all(n.rest_url.startswith("https://") for n in cluster.nodes)
    assert all('endpoints = ["https://' in a.config_path.read_text() for a in agents)
    versions = {(n.patroni_state() or {}).get("patroni", {}).get("version", "")[:2] for n in cluster.nodes
                if n.patroni_proc.is_running()}
    assert versions == {PATRONI_MAJOR[lab_variant]}, versions
    for a in agents:
        wait_until(lambda a=a: any(e.get("event") == "etcd_token_rejected" for e in events(a)), 30,
                   f"{a.name}: its etcd token expired and was renewed", detail=a.proc.log_path.read_text)
        assert not [e for e in events(a) if e.get("event") == "dcs_availability_changed" and not e["new"]], a.name
        assert 'pgnode_etcd_watch_restarts_total{reason="auth"} 0.0' in a.metrics(), a.name
        assert AGENT_PASSWORD not in a.proc.log_path.read_text()


def test_exactly_one_confirmed_primary_and_it_is_the_leader(cluster: Cluster, agents: Agents) -> None:
    leader = cluster.leader_name()
    assert leader is not None
    wait_until(lambda: settled(agents, leader), 20, "agents agree on the leader", detail=lambda: summary(agents))
    body = agents[leader].metrics()
    assert "pgnode_confirmed_primary 1.0" in body and 'pgnode_role{role="primary"} 1.0' in body
    for a in agents:
        if a.name != leader:
            assert "pgnode_confirmed_primary 0.0" in a.metrics()


@pytest.mark.parametrize("lab_variant", ALL_LABS)
def test_switchover_is_seen_by_every_agent_once(fresh_cluster: Cluster, fresh_agents: Agents,
                                                lab_variant: str) -> None:
    old = fresh_cluster.leader_name()
    assert old is not None
    wait_until(lambda: settled(fresh_agents, old), 20, "agents settled before", detail=lambda: summary(fresh_agents))
    new = fresh_cluster.switchover()
    # the old primary rejoins as a replica at Patroni's next cycle
    wait_until(lambda: settled(fresh_agents, new), fresh_cluster.timings.in_place(), "agents settled after switchover",
               detail=lambda: summary(fresh_agents))
    for a in fresh_agents:
        assert "pgnode_leader_changes_total 1.0" in a.metrics(), a.name
        # Patroni writes the failover key before it lets go of the leader key: every agent saw it first
        events = [json.loads(line) for line in a.proc.log_path.read_text().splitlines() if line.startswith("{")]
        names = [(e.get("event"), e.get("new")) for e in events]
        assert names.index(("failover_pending_changed", True)) < names.index(("leader_changed", new)), a.name
    # the old primary's agent logged its way from primary to replica (through "unknown" while
    # Patroni restarts PostgreSQL), one role_changed event per step
    steps = [json.loads(line) for line in fresh_agents[old].proc.log_path.read_text().splitlines()
             if '"role_changed"' in line]
    roles = [steps[0]["old"]] + [e["new"] for e in steps]
    assert "primary" in roles and roles[-1] == "replica"
    assert roles[roles.index("primary") + 1:] in (["replica"], ["unknown", "replica"])
    check_lab_is_what_it_claims(lab_variant, fresh_cluster, list(fresh_agents))


@pytest.mark.slow
@pytest.mark.parametrize("lab_variant", ["default", *SLOW_LABS])
def test_kill9_of_patroni_on_primary_shows_split_brain_then_failover(fresh_cluster: Cluster,
                                                                     fresh_agents: Agents, lab_variant: str) -> None:
    old = fresh_cluster.leader_name()
    assert old is not None
    wait_until(lambda: settled(fresh_agents, old), 20, "agents settled before", detail=lambda: summary(fresh_agents))
    fresh_cluster.node(old).kill9_patroni()
    # a replica takes the key once it expires (ttl) while the orphan postmaster stays writable
    new = fresh_cluster.wait_for_leader(lambda n: n != old, fresh_cluster.timings.leader_lost())
    wait_until(lambda: state(fresh_agents[old]).get("disagreement") == "writable_without_leader_key", 20,
               "split-brain visible on the old primary's agent", detail=lambda: summary(fresh_agents))
    s_old = state(fresh_agents[old])
    assert s_old["confirmed_primary"] is False and s_old["patroni_up"] is False
    assert 'pgnode_role_disagreement{reason="writable_without_leader_key"} 1.0' in fresh_agents[old].metrics()
    wait_until(lambda: state(fresh_agents[new]).get("confirmed_primary") is True, 30, "new leader confirmed",
               detail=lambda: summary(fresh_agents))
    confirmed = [a.name for a in fresh_agents if state(a).get("confirmed_primary")]
    assert confirmed == [new]
    check_lab_is_what_it_claims(lab_variant, fresh_cluster, list(fresh_agents))


def test_agent_for_another_member_than_patroni_exits_78(run_dir: Path, cluster: Cluster, etcd: Etcd) -> None:
    node = cluster.nodes[0]
    agent = Agent(run_dir, node, [etcd.url], scope=cluster.scope, namespace=cluster.namespace)
    agent.config_path.write_text(agent.config_path.read_text().replace(f'name = "{node.name}"', 'name = "nodeX"'))
    agent.proc.spawn()
    try:
        assert agent.proc.popen is not None
        assert agent.proc.popen.wait(30) == 78
        assert "node.name" in agent.proc.log_path.read_text()
    finally:
        agent.stop(kill=True)


@pytest.mark.parametrize("lab_variant", ALL_LABS)
def test_kill9_of_the_primary_postmaster_is_reported_and_survived(fresh_cluster: Cluster,
                                                                  fresh_agents: Agents, lab_variant: str) -> None:
    leader = fresh_cluster.leader_name()
    assert leader is not None
    wait_until(lambda: settled(fresh_agents, leader), 20, "agents settled before", detail=lambda: summary(fresh_agents))
    fresh_cluster.node(leader).kill9_postmaster()
    a = fresh_agents[leader]
    wait_until(lambda: state(a).get("postgres_up") is False, 10, "postgres down seen")
    assert state(a)["confirmed_primary"] is False
    # Patroni restarts PostgreSQL in place at its next cycle and keeps the lock: no failover
    wait_until(lambda: settled(fresh_agents, leader), fresh_cluster.timings.in_place(),
               "agents settled after restart in place",
               detail=lambda: summary(fresh_agents))
    for ag in fresh_agents:
        assert "pgnode_leader_changes_total 0.0" in ag.metrics()
        assert a.status()["components"]["pg_role"]["restarts"] == 0
    check_lab_is_what_it_claims(lab_variant, fresh_cluster, list(fresh_agents))


@pytest.mark.slow
@pytest.mark.parametrize("lab_variant", ["default", "prod"])
def test_loss_of_the_primary_node_moves_the_leader_for_every_surviving_agent(
        fresh_cluster: Cluster, fresh_agents: Agents, lab_variant: str) -> None:
    old = fresh_cluster.leader_name()
    assert old is not None
    wait_until(lambda: settled(fresh_agents, old), 20, "agents settled before", detail=lambda: summary(fresh_agents))
    fresh_agents[old].stop()
    fresh_cluster.node(old).kill9_all()
    new = fresh_cluster.wait_for_leader(lambda n: n != old, fresh_cluster.timings.leader_lost())
    survivors = [a for a in fresh_agents if a.name != old]
    wait_until(lambda: all(state(a).get("leader") == new for a in survivors)
               and state(fresh_agents[new]).get("confirmed_primary") is True, 30,
               "survivors follow the new leader", detail=lambda: summary(fresh_agents))
    for a in survivors:
        assert "pgnode_leader_changes_total 1.0" in a.metrics()
    check_lab_is_what_it_claims(lab_variant, fresh_cluster, survivors)
