"""The agents on a production-shaped lab: etcd with TLS for clients and peers, client
certificates required and RBAC (a Patroni user, a least-privilege agent user, tokens expiring
after 5 idle seconds); Patroni's REST API over HTTPS with client certificates required. And the
other versions production runs: etcd 3.5 with Patroni 3.x."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cluster_watch import settled, summary

from agent.lab.agents import Agents
from agent.lab.cluster import Cluster
from agent.lab.etcd import Etcd
from agent.lab.patroni import PATRONI3_BIN
from agent.lab.procs import wait_until
from agent.lab.tls import LabCA

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def prod_lab(run_dir: Path) -> Iterator[tuple[Etcd, Cluster, Agents]]:
    ca = LabCA.create(run_dir / "tls")
    e = Etcd(run_dir, tls=ca, auth_token_ttl=5)
    scope = "prod"
    prefix = f"/service/{scope}/"
    pw = run_dir / "agent-etcd-pw"
    pw.write_text("agentpw\n")
    pw.chmod(0o600)
    etcd_toml = "\n".join([f'ca_file = "{ca.ca}"', f'cert_file = "{ca.client_cert}"',
                           f'key_file = "{ca.client_key}"', 'username = "agent"', f'password_file = "{pw}"'])
    try:
        e.start()
        e.enable_rbac("rootpw", {
            "patroni": ("patronipw", [("readwrite", prefix, True)]),
            "agent": ("agentpw", [("read", prefix, True), ("readwrite", prefix + "pg-node-agent/repack-lock", False)]),
        })
        c = Cluster(run_dir, e.url, scope=scope, tls=ca, etcd_tls=ca, etcd_user=("patroni", "patronipw"))
        agents = Agents(run_dir, c, [e.url], etcd_toml=etcd_toml)
        try:
            c.start()
            agents.start()
            yield e, c, agents
        finally:
            agents.stop()
            c.stop()
    finally:
        e.stop()


def test_switchover_on_tls_rbac_etcd_and_https_patroni_with_expiring_tokens(
        prod_lab: tuple[Etcd, Cluster, Agents]) -> None:
    etcd, cluster, agents = prod_lab
    assert etcd.url.startswith("https://") and all(n.rest_url.startswith("https://") for n in cluster.nodes)
    old = cluster.leader_name()
    assert old is not None
    wait_until(lambda: settled(agents, old), 30, "agents settled", detail=lambda: summary(agents))
    time.sleep(12)  # idle: the agents' tokens expire (5 s) between their reads of the scope
    new = cluster.switchover()
    wait_until(lambda: settled(agents, new), 30, "agents settled after switchover", detail=lambda: summary(agents))
    for a in agents:
        assert "pgnode_leader_changes_total 1.0" in a.metrics(), a.name
        events = [json.loads(ln) for ln in a.proc.log_path.read_bytes().splitlines() if ln.startswith(b"{")]
        names = [ev.get("event") for ev in events]
        assert names.count("etcd_authenticated") >= 2, a.name  # a token expired and was renewed
        assert not [ev for ev in events if ev.get("event") == "dcs_availability_changed" and not ev["new"]], a.name
        assert "agentpw" not in a.proc.log_path.read_text()


def test_switchover_with_patroni_3_on_etcd_3_5(run_dir: Path) -> None:
    e = Etcd(run_dir, version="3.5")
    try:
        e.start()
        c = Cluster(run_dir, e.url, scope="v3", patroni_bin=PATRONI3_BIN)
        agents = Agents(run_dir, c, [e.url])
        try:
            c.start()
            agents.start()
            versions = {(n.patroni_state() or {}).get("patroni", {}).get("version", "")[:2] for n in c.nodes}
            assert versions == {"3."}, versions
            old = c.leader_name()
            assert old is not None
            wait_until(lambda: settled(agents, old), 30, "agents settled", detail=lambda: summary(agents))
            new = c.switchover()
            wait_until(lambda: settled(agents, new), 30, "agents settled after switchover",
                       detail=lambda: summary(agents))
            for a in agents:
                assert "pgnode_leader_changes_total 1.0" in a.metrics(), a.name
        finally:
            agents.stop()
            c.stop()
    finally:
        e.stop()
