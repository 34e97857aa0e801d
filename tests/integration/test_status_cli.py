"""`pg-node-agent status` and `status --cluster` against the lab: three Patroni members, an agent
each, found through Patroni's member list (each lab member carries the `pg_node_agent` tag)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.lab import http
from agent.lab.agents import Agents
from agent.lab.cluster import Cluster
from agent.lab.etcd import Etcd
from agent.lab.procs import wait_until
from agent.status.contract import SECTIONS, conform

pytestmark = pytest.mark.integration

DEADLINE = 30.0


def status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "-c", str(config), "status", *args],
                          capture_output=True, text=True, timeout=30, check=False)


def until_ok(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The first run of `status ARGS` that exits 0 (agents need a moment after /health to hear
    from Patroni and PostgreSQL)."""
    last: list[subprocess.CompletedProcess[str]] = []

    def attempt() -> subprocess.CompletedProcess[str] | None:
        last[:] = [status(config, *args)]
        return last[0] if last[0].returncode == 0 else None

    wait_until(attempt, DEADLINE, f"status {' '.join(args)} exits 0", detail=lambda: last[0].stdout)
    return last[0]


def cluster_json(config: Path) -> tuple[int, dict[str, Any]]:
    r = status(config, "--cluster", "--json")
    return r.returncode, json.loads(r.stdout)


def test_cluster_view_lists_every_member_and_agrees_with_patroni(cluster: Cluster, agents: Agents) -> None:
    leader = cluster.leader_name()
    replica = next(a for a in agents if a.name != leader)
    view = json.loads(until_ok(replica.config_path, "--cluster", "--json").stdout)
    assert [r["member"]["name"] for r in view["members"]] == sorted(a.name for a in agents)
    assert {r["agent_url"] for r in view["members"]} == {a.url for a in agents}  # from the Patroni tags
    primaries = [r["agent"]["node"] for r in view["members"] if r["agent"]["state"]["confirmed_primary"]]
    assert primaries == [leader]
    assert all(r["agent"]["state"]["leader"] == leader for r in view["members"])
    assert view["problems"] == []

    text = status(replica.config_path, "--cluster")
    assert text.returncode == 0, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith(f"cluster {cluster.scope}: 3 members")
    rows = {ln.split()[0]: ln for ln in lines[2:5]}
    assert set(rows) == {a.name for a in agents}
    assert " leader running " in rows[leader] and " primary " in rows[leader]
    assert " replica streaming " in rows[replica.name]
    assert lines[-1].startswith("ok:")


def test_cluster_view_names_an_agent_that_does_not_answer(cluster: Cluster, agents: Agents) -> None:
    leader = cluster.leader_name()
    asker, gone = (a for a in agents if a.name != leader)
    until_ok(asker.config_path, "--cluster")
    gone.stop()
    rc, view = cluster_json(asker.config_path)
    assert rc == 1
    assert any(p.startswith(f"{gone.name}: agent not reachable at {gone.url}") for p in view["problems"]), view
    text = status(asker.config_path, "--cluster")
    assert text.returncode == 1
    row = next(ln for ln in text.stdout.splitlines() if ln.startswith(gone.name))
    assert " DOWN " in row
    assert "problems:" in text.stdout


def test_node_view_shows_role_leader_and_every_job(cluster: Cluster, agents: Agents) -> None:
    leader = cluster.leader_name()
    a = agents[leader]
    wait_until(lambda: (a.status() or {}).get("state", {}).get("confirmed_primary"), DEADLINE,
               "the leader's agent confirms its role", detail=a.status)
    r = status(a.config_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith(f"node {leader} (scope {cluster.scope})")
    assert f"role primary  leader {leader}  view me  confirmed primary yes" in out
    for job in ("watchdog  off", "sampler ", "repack    off", "archive   "):
        assert f"  {job}" in out, out
    raw = json.loads(status(a.config_path, "--json").stdout)
    assert raw["watchdog"]["enabled"] is False and raw["watchdog"]["last_feed_age_seconds"] is None  # never fed


def test_status_of_an_agent_that_is_not_running(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[node]\nname = "x"\n[etcd]\nscope = "s"\n[http]\nlisten = "127.0.0.1:9"\n')
    r = status(cfg)
    assert r.returncode == 1
    assert "cannot reach the agent at http://127.0.0.1:9" in r.stderr


def test_cluster_view_sends_no_credentials_over_http(run_dir: Path, cluster: Cluster, etcd: Etcd) -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    agents = Agents(run_dir, cluster, [etcd.url])
    for a in agents:
        a.config_path.write_text(a.config_path.read_text().replace(
            "[http]\n", f'[http]\nbasic_auth_users = {{ ops = "sha256:{digest}" }}\n', 1))
        a.proc._accessible = lambda a=a: http.get(f"{a.url}/health", timeout=1.0)[0] == 401
    auth = run_dir / "status-auth"
    auth.write_text("ops:s3cret\n")
    try:
        agents.start()
        asker = agents.agents[0]
        r = status(asker.config_path, "--cluster", "--json")
        assert r.returncode == 1, r.stdout
        assert all("401 Unauthorized: basic auth is on, give --auth-file" in p
                   for p in json.loads(r.stdout)["problems"]), r.stdout
        # The lab's tags say http://: the password stays home, and each member says why.
        r = status(asker.config_path, "--cluster", "--json", "--auth-file", str(auth))
        view = json.loads(r.stdout)
        assert r.returncode == 1
        for a in agents:
            assert f"{a.name}: credentials not sent to {a.url}: https only" in view["problems"], view["problems"]
        assert {row["error"] for row in view["members"]} == {"401 Unauthorized: credentials withheld"}
        assert "s3cret" not in r.stdout + r.stderr
        auth.write_text("no colon here\n")
        bad = status(asker.config_path, "--cluster", "--auth-file", str(auth))
        assert bad.returncode == 2 and "expected user:password" in bad.stderr
    finally:
        agents.stop()


def test_cluster_view_reads_the_member_keys_in_etcd_when_the_local_patroni_is_down(
        fresh_cluster: Cluster, fresh_agents: Agents) -> None:
    leader = fresh_cluster.leader_name()
    asker = next(a for a in fresh_agents if a.name != leader)
    until_ok(asker.config_path, "--cluster")
    asker.node.kill9_patroni()   # its member key stays in etcd until the TTL runs out (20 s)
    rc, view = cluster_json(asker.config_path)
    assert rc == 1 and view["source"] == "etcd"
    assert view["problems"][0].startswith(f"local Patroni unreachable at {asker.node.rest_url}"), view
    assert [r["member"]["name"] for r in view["members"]] == sorted(a.name for a in fresh_agents)
    assert {r["agent_url"] for r in view["members"]} == {a.url for a in fresh_agents}   # tags from the keys
    by_name = {r["member"]["name"]: r for r in view["members"]}
    assert by_name[leader]["member"]["role"] == "leader"
    assert by_name[leader]["agent"]["state"]["confirmed_primary"] is True
    assert {r["member"]["state"] for n, r in by_name.items() if n != leader} == {"streaming"}  # as /cluster says
    text = status(asker.config_path, "--cluster").stdout
    assert "(member keys in etcd)" in text.splitlines()[0]


def test_every_status_key_is_documented_and_fits_the_contract(cluster: Cluster, run_dir: Path, etcd: Etcd) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs/architecture.md").read_text()
    doc = doc[doc.index("## `/status` (JSON)"):]
    agents = Agents(run_dir, cluster, [etcd.url], extra_toml=(
        '[repack]\nenabled = true\n[[repack.windows]]\ncron = "0 3 * * *"\nduration = "1h"\n'
        'databases = ["postgres"]\n'))
    try:
        agents.start()
        body = wait_until(lambda: (lambda s: s if s and s.get("sampler", {}).get("reads") else None)(
            agents.agents[0].status()), DEADLINE, "the sampler has read once")
        assert isinstance(body, dict)
        keys = set(body)
        for section in ("state", "cluster_watch", "watchdog", "sampler", "repack", "archive", "http"):
            keys |= set(body[section])
        keys |= {k for c in body["components"].values() for k in c}
        missing = sorted(k for k in keys if f"`{k}`" not in doc)
        assert not missing, f"/status keys not in docs/architecture.md: {missing}"
        # what a real agent writes fits the types the view reads, every section of it
        typed, why = conform(body)
        assert typed is not None, why
        assert "unreadable" not in typed and set(typed) >= SECTIONS, typed.get("unreadable")
    finally:
        agents.stop()
