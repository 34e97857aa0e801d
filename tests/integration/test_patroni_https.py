"""Patroni's REST API over HTTPS with a private CA and client certificates required
(restapi.verify_client: required), as production runs it: the agents read it with the configured
CA and client certificate; a wrong CA or a missing client certificate is one clear log line and
patroni_up 0, never a crash."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import AgentProc

from agent.lab.agents import Agents
from agent.lab.cluster import Cluster
from agent.lab.etcd import Etcd
from agent.lab.procs import wait_until
from agent.lab.tls import LabCA

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def tls_lab(run_dir: Path, etcd: Etcd) -> Iterator[tuple[Cluster, Agents, LabCA]]:
    ca = LabCA.create(run_dir / "tls")
    c = Cluster(run_dir, etcd.url, scope=f"https{uuid.uuid4().hex[:6]}", tls=ca)
    agents = Agents(run_dir, c, [etcd.url])
    try:
        c.start()
        agents.start()
        yield c, agents, ca
    finally:
        agents.stop()
        c.stop()


def test_agents_read_an_https_patroni_and_name_a_bad_ca_or_a_refused_client_cert(
        run_dir: Path, etcd: Etcd, tls_lab: tuple[Cluster, Agents, LabCA]) -> None:
    cluster, agents, ca = tls_lab
    leader = cluster.leader_name()
    assert all(n.rest_url.startswith("https://") for n in cluster.nodes)
    for a in agents:
        wait_until(lambda a=a: (a.status() or {}).get("state", {}).get("patroni_up"), 30,
                   f"{a.name} reads Patroni over HTTPS")
    primary = next(a for a in agents if a.name == leader)
    wait_until(lambda: primary.status()["state"]["confirmed_primary"], 30, "the leader's agent confirms it")

    node = next(n for n in cluster.nodes if n.name == leader)
    other_ca = LabCA.create(run_dir / "tls-other", name="other")
    cases = {
        "wrong_ca": (f'ca_file = "{other_ca.ca}"\ncert_file = "{ca.client_cert}"\nkey_file = "{ca.client_key}"\n',
                     "CERTIFICATE_VERIFY_FAILED"),
        "no_client_cert": (f'ca_file = "{ca.ca}"\n', "client certificate"),
    }
    for case, (tls_toml, expect) in cases.items():
        a = AgentProc(run_dir, etcd.url, scope=cluster.scope, name=leader)
        a.config.write_text(a.config.read_text().replace(
            '[patroni]\nurl = "', f'[patroni]\n{tls_toml}url = "{node.rest_url}"\n# was: "', 1))
        a.start()
        try:
            wait_until(lambda a=a: a.status().get("ready"), 20, f"{case}: agent ready", detail=a.tail)
            wait_until(lambda a=a: a.metric("pgnode_patroni_up") == 0.0, 10, f"{case}: patroni_up 0",
                       detail=a.tail)
            wait_until(lambda a=a: [e for e in a.logs() if e.get("event") == "patroni_unreachable"], 10,
                       f"{case}: logged", detail=a.tail)
            time.sleep(6)  # a poll or more later (poll_interval 5 s)
            lines = [e for e in a.logs() if e.get("event") == "patroni_unreachable"]
            assert len(lines) == 1, lines  # one line per outage, not one per poll
            assert expect in lines[0]["error"], lines[0]
            assert lines[0]["url"] == node.rest_url
            assert a.p is not None and a.p.poll() is None
        finally:
            a.stop()
