"""The judging and rendering of `status --cluster`, on bodies shaped like Patroni's /cluster and
the agent's /status (the integration test runs the same code against the lab)."""

from __future__ import annotations

from typing import Any

from agent.archive.rounds import ArchiveStatus, ArchiveView
from agent.core.state import NodeState
from agent.status import AgentStatus, agent_url, conform, problems, render_cluster, render_node

Raw = dict[str, Any]


def member(name: str, role: str = "replica", **kw: Any) -> Raw:
    return {"name": name, "role": role, "state": "running" if role == "leader" else "streaming",
            "host": "10.0.0." + name[-1], "timeline": 2, **kw}


def component(up: bool = True) -> Raw:
    return {"up": up, "restarts": 0, "last_error": "", "heartbeat_age_seconds": 0.5}


def archive(**kw: Any) -> Raw:
    return {**ArchiveView().status(), "healthy": True, "ready_files": 0, **kw}


def sampler(**kw: Any) -> Raw:
    return {"source": "pg_stat_statements", "watermark": None, "series": 0, "queryids_kept": 0, "buckets_lost": {},
            "reads": 1, "read_failures": {}, "fallback": None, "unavailable": None, "save_error": None, **kw}


def repack(**kw: Any) -> Raw:
    return {"binary": "/usr/bin/pg_repack", "version": "1.5.0", "running": None, "current_window": None,
            "next_window": None, "waiting_for": [], "leftovers": 0, "leftover_tables": {}, "recent": [], **kw}


def agent(name: str, leader: str = "pg1", **state: Any) -> Raw:
    """A body as a real agent writes it: the state from NodeState itself, full sections."""
    s: Raw = {**NodeState(member=name).as_dict(), "role": "primary" if name == leader else "replica",
              "leader": leader, "confirmed_primary": name == leader, "dcs_up": True, "patroni_up": True,
              "postgres_up": True, "disagreement": "", **state}
    return {"node": name, "scope": "main", "version": "0.1.0", "config": "/etc/pg-node-agent/agent.toml",
            "ready": True, "uptime_seconds": 12.5, "state": s, "components": {"cluster_watch": component()},
            "archive": archive(),
            "watchdog": {"enabled": True, "systemd_period_seconds": 10.0, "device": None, "withholding": [],
                         "last_feed_age_seconds": 0.4}}


def typed(raw: Raw) -> AgentStatus:
    body, why = conform(raw)
    assert body is not None, why
    return body


def view(rows: list[tuple[Raw, Raw | None]]) -> Raw:
    v: Raw = {"scope": "main", "patroni_url": "http://127.0.0.1:8008", "source": "patroni", "paused": False,
              "error": None, "members": [
                  {"member": m, "agent_url": f"http://{m['host']}:9188", "agent": typed(a) if a else None,
                   "error": "" if a else "ConnectError", "auth_refused": None} for m, a in rows]}
    v["problems"] = problems(v["members"])
    return v


def healthy() -> list[tuple[Raw, Raw | None]]:
    return [(member("pg1", "leader"), agent("pg1")), (member("pg2"), agent("pg2")), (member("pg3"), agent("pg3"))]


def test_agent_url_prefers_the_patroni_tag() -> None:
    assert agent_url({"host": "10.0.0.1", "tags": {"pg_node_agent": "https://a1:9443"}}, "http://x:9188") \
        == "https://a1:9443"
    assert agent_url({"host": "10.0.0.1", "tags": {"pg_node_agent": "a1:9200"}}, "http://x:9188") == "http://a1:9200"


def test_agent_url_falls_back_to_member_host_with_own_port_and_scheme() -> None:
    assert agent_url({"host": "10.0.0.2"}, "https://127.0.0.1:9444") == "https://10.0.0.2:9444"
    assert agent_url({"host": "fd00::2", "tags": {}}, "http://127.0.0.1:9188") == "http://[fd00::2]:9188"


def test_a_whole_cluster_of_one_mind_has_no_problems() -> None:
    v = view(healthy())
    assert v["problems"] == []
    assert render_cluster(v).splitlines()[-1].startswith("ok:")


def test_each_kind_of_problem_is_named() -> None:
    rows = healthy()
    rows[1] = (member("pg2"), None)
    rows[2] = (member("pg3"), agent("pg3", leader="pg3", confirmed_primary=True, postgres_up=False,
                                    disagreement="split brain: leader key says pg1, PostgreSQL is primary"))
    rows[2][1]["components"]["sampler"] = component(up=False)
    rows[2][1]["archive"] = archive(healthy=False, reasons=["archiver failing"])
    p = view(rows)["problems"]
    assert p == [
        "pg2: agent not reachable at http://10.0.0.2:9188 (ConnectError)",
        "pg3: its agent sees leader 'pg3', Patroni says 'pg1'",
        "pg3: split brain: leader key says pg1, PostgreSQL is primary",
        "pg3: PostgreSQL unreachable from the agent",
        "pg3: components down: sampler",
        "pg3: archive unhealthy: archiver failing",
        "2 confirmed primaries (pg1, pg3), expected exactly 1",
    ]


def test_an_agent_answering_for_another_member_is_a_problem() -> None:
    rows = healthy()
    rows[2] = (member("pg3"), agent("pg2"))
    assert view(rows)["problems"] == ["pg3: http://10.0.0.3:9188 is the agent of 'pg2', not of this member"]


def test_no_leader_and_no_primary() -> None:
    rows = [(member(n), agent(n, leader="")) for n in ("pg1", "pg2")]
    for _, a in rows:
        assert a is not None
        a["state"]["leader"] = None
    assert view(rows)["problems"] == ["Patroni names no leader", "0 confirmed primaries (none), expected exactly 1"]


def test_standby_cluster_needs_no_primary() -> None:
    rows = [(member("pg1", "standby_leader"), agent("pg1", confirmed_primary=False, role="standby_leader")),
            (member("pg2"), agent("pg2"))]
    assert view(rows)["problems"] == []


def test_rendered_table_marks_the_down_agent_and_withheld_watchdog() -> None:
    rows = healthy()
    rows[1] = (member("pg2"), None)
    assert rows[2][1] is not None
    rows[2][1]["watchdog"]["withholding"] = ["sampler"]
    lines = render_cluster(view(rows)).splitlines()
    assert lines[1].split()[:5] == ["MEMBER", "PATRONI", "TL", "LAG", "AGENT"]
    assert lines[3].split()[:6] == ["pg2", "replica", "streaming", "2", "-", "DOWN"]
    assert "WITHHELD (sampler)" in lines[4]
    assert lines[5] == "problems:"


def test_node_view_names_each_job() -> None:
    a = agent("pg1")
    a["repack"] = repack(running={"database": "app", "table": "public.t", "since": 1.0})
    a["sampler"] = sampler(source="pg_stat_monitor", series=120, watermark=1795939200,
                           buckets_lost={"expired": 2, "reset": 1, "restart": 0})
    out = render_node(typed(a))
    assert "lost buckets 3 (expired 2, reset 1)" in out
    assert "role primary  leader pg1  view unknown  confirmed primary yes" in out
    assert "  watchdog  fed 0.4s" in out
    assert "  sampler   pg_stat_monitor 120 series" in out
    assert "  repack    RUNNING app.public.t" in out
    assert "  archive   ok, 0 .ready" in out


def test_a_sampler_without_source_is_a_problem_and_shows_why() -> None:
    rows = healthy()
    assert rows[1][1] is not None
    rows[1][1]["sampler"] = sampler(source=None, unavailable="source 'auto' not installed")
    v = view(rows)
    assert v["problems"] == ["pg2: sampler not reading: source 'auto' not installed"]
    assert "NOT READING" in render_cluster(v).splitlines()[3]
    assert "  sampler   NOT READING (source 'auto' not installed)" in render_node(typed(rows[1][1]))


def test_a_body_whose_core_does_not_fit_the_contract_is_no_agents_status() -> None:
    odd: Raw = {**agent("pg2"), "state": None}
    assert conform(odd) == (None, "not an agent's /status (state: not an object)")
    assert conform({**agent("pg2"), "components": {"x": None}})[1] == "not an agent's /status (components[x]: not an object)"
    assert conform({**agent("pg2"), "ready": 1})[1] == "not an agent's /status (ready: int, expected bool)"
    assert conform([1])[0] is None
    assert agent_url({"host": "10.0.0.1", "tags": "nope"}, "http://x:9188") == "http://10.0.0.1:9188"


def test_sections_that_do_not_fit_their_type_are_named_not_half_read() -> None:
    odd = {**agent("pg2"), "watchdog": [], "sampler": "?", "repack": repack(running="yes", waiting_for=[1]),
           "archive": {"error": "KeyError: 'x'"}}  # a section that raised on the agent
    rows: list[tuple[Raw, Raw | None]] = [
        (member("pg1", "leader", tags=["not", "a", "dict"]), agent("pg1")), (member("pg2"), odd)]
    v = view(rows)
    assert v["problems"] == [
        "pg2: /status section archive unreadable: KeyError: 'x'",
        "pg2: /status section repack unreadable: repack.running: not an object",
        "pg2: /status section sampler unreadable: sampler: not an object",
        "pg2: /status section watchdog unreadable: watchdog: not an object",
    ]
    assert render_cluster(v).splitlines()[3].split()[-4:] == ["UNREADABLE"] * 4
    node = render_node(typed(odd))
    assert node.startswith("node pg2")
    assert "  watchdog  UNREADABLE (watchdog: not an object)" in node and "  archive   UNREADABLE (KeyError: 'x')" in node


async def test_an_unusable_agent_url_is_a_problem_not_a_traceback() -> None:
    import httpx

    from agent.status.fetch import _get

    async with httpx.AsyncClient() as client:
        body, err = await _get(client, "http://10.0.0.1:abc/status")
    assert body is None and err.startswith("InvalidURL")


def test_patroni_error_names_the_tls_cause() -> None:
    import ssl

    import httpx

    from agent.cluster.patroni_api import describe

    wrapped = httpx.ConnectError("")
    wrapped.__cause__ = ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert "CERTIFICATE_VERIFY_FAILED" in describe(wrapped, "https://127.0.0.1:8008")
    assert "client certificate" in describe(httpx.ReadError(""), "https://127.0.0.1:8008")
    assert describe(httpx.ReadError(""), "http://127.0.0.1:8008") == "ReadError"
    late = httpx.ReadError("")  # TLS 1.3: the refusal arrives as an alert on the first read
    late.__cause__ = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    assert "requires a client certificate" in describe(late, "https://127.0.0.1:8008")


def test_credentials_go_over_https_to_the_members_own_address_only() -> None:
    from agent.status import credential_refusal

    m = {"name": "n1", "host": "10.0.0.1", "api_url": "https://[fd00::1]:8008/patroni"}
    assert credential_refusal("https://10.0.0.1:9188", m) is None
    assert credential_refusal("https://[FD00:0::1]:9188", m) is None  # the REST API's address, normalised
    assert "https only" in str(credential_refusal("http://10.0.0.1:9188", m))
    far = credential_refusal("https://203.0.113.7:9188", m)
    assert far and "203.0.113.7 is not the member's address (10.0.0.1, fd00::1)" in far
    assert credential_refusal("https://203.0.113.7:9188", m, ["203.0.113.7"]) is None
    assert credential_refusal("https://agent1.example:9188", {"name": "n2"}) is not None


def test_the_state_section_names_every_nodestate_field_and_real_sections_fit_the_contract() -> None:
    from dataclasses import fields

    from agent.core.state import StateStatus
    from agent.status.contract import mismatch

    st = NodeState(member="pg1").as_dict()
    assert set(st) == set(StateStatus.__annotations__) >= {f.name for f in fields(NodeState)}
    assert mismatch(st, StateStatus) is None
    assert mismatch(ArchiveView().status(), ArchiveStatus) is None
    assert mismatch({**ArchiveView().status(), "ready_files": "3"}, ArchiveStatus) == "ready_files: str, expected int"
