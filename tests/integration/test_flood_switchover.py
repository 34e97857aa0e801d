"""Under 5,000 idle connections and ~1,000 wrong-password requests a second (loopback, 20 s),
an agent on a real Patroni node sees a switchover on /metrics after etcd does, answers /health
throughout, never reports Patroni or PostgreSQL down, and writes less than 1 MB of log.

The delay between etcd's change and the agent's observation is printed (and kept in the run
directory as flood_switchover.json); it is a figure for bench/, not asserted."""

from __future__ import annotations

import base64
import json
import re
import resource
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from testlab.flood import Flood

from agent.lab.agents import Agent
from agent.lab.cluster import Cluster
from agent.lab.etcd import Etcd
from agent.lab.procs import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER, PASSWORD = "prom", "scrape-secret"
FLOOD_SECONDS = 20.0


def authed(url: str, timeout: float = 5.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={  # noqa: S310
        "Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def gauge(body: str, series: str) -> float | None:
    m = re.search(rf"^{re.escape(series)} (\S+)$", body, re.M)
    return float(m.group(1)) if m else None


def test_switchover_seen_under_a_connection_and_auth_flood(run_dir: Path, cluster: Cluster, etcd: Etcd) -> None:
    cluster.wait_healthy(60)
    candidate = cluster.replicas()[0]
    agent = Agent(run_dir, candidate, [etcd.url], scope=cluster.scope, namespace=cluster.namespace)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt()).decode()  # production cost
    text = agent.config_path.read_text().replace(
        "[logging]", f'basic_auth_users = {{ {USER} = "{hashed}" }}\n[logging]')
    agent.config_path.write_text(text)
    agent.proc._accessible = lambda: authed(agent.url + "/health", 1.0)[0] == 200
    leader_key = f"{cluster.namespace.rstrip('/')}/{cluster.scope}/leader"
    log_path = run_dir / f"agent-{candidate.name}.log"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # what systemd gives a unit: soft 1024
    try:
        agent.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        wait_until(lambda: gauge(authed(agent.url + "/metrics")[1], "pgnode_patroni_up") == 1.0
                   and gauge(authed(agent.url + "/metrics")[1], "pgnode_postgres_up") == 1.0, 30,
                   "agent sees its Patroni and PostgreSQL")
        size0 = log_path.stat().st_size
        probes: list[dict[str, Any]] = []
        etcd_seen: dict[str, float] = {}
        done = threading.Event()

        def probe() -> None:
            while not done.is_set():
                t = time.time()
                code, _ = authed(agent.url + "/health")
                mcode, body = authed(agent.url + "/metrics")
                probes.append({"t": t, "health": code, "metrics": mcode,
                               "patroni_up": gauge(body, "pgnode_patroni_up"),
                               "postgres_up": gauge(body, "pgnode_postgres_up"),
                               "leader_me": gauge(body, f'pgnode_leader{{member="{candidate.name}"}}'),
                               "observed": gauge(body, "pgnode_leader_change_observed_timestamp_seconds")})
                done.wait(0.2)

        def watch_etcd() -> None:
            while not done.is_set() and "new" not in etcd_seen:
                t = time.time()
                if etcd.get(leader_key) == candidate.name:
                    etcd_seen["new"] = t
                else:
                    etcd_seen["old"] = t
                time.sleep(0.02)

        threads = [threading.Thread(target=probe), threading.Thread(target=watch_etcd)]
        for th in threads:
            th.start()
        with Flood(candidate.agent_port, holders=5000, rate=1000.0, workers=100, user=USER) as flood:
            t0 = time.monotonic()
            time.sleep(5)  # the holders open their 5,000 connections (the agent's /status counts them)
            new = cluster.switchover(candidate.name, timeout=60)
            assert new == candidate.name
            time.sleep(max(0.0, FLOOD_SECONDS - (time.monotonic() - t0)))
        stats = flood.stats
        time.sleep(2)
        done.set()
        for th in threads:
            th.join(30)

        seen = [p for p in probes if p["leader_me"] == 1.0]
        observed = seen[0]["observed"] if seen else None
        summary = {
            "etcd_last_old": etcd_seen.get("old"), "etcd_first_new": etcd_seen.get("new"),
            "agent_observed": observed,
            "delay_after_etcd_seconds": round(observed - etcd_seen["new"], 3)
            if observed and "new" in etcd_seen else None,
            "probes": len(probes), "health_codes": sorted({p["health"] for p in probes}),
            "flood_answers": dict(stats.answers), "flood_errors": stats.errors,
            "flood_rate_per_second": round(sum(stats.answers.values()) / FLOOD_SECONDS),
            "holders_opened": stats.opened, "holders_closed_by_agent": stats.closed_by_agent,
            "log_growth_bytes": log_path.stat().st_size - size0,
            "agent_http": json.loads(authed(agent.url + "/status")[1] or "{}").get("http"),
        }
        (run_dir / "flood_switchover.json").write_text(json.dumps(summary, indent=2))
        print("flood_switchover", json.dumps(summary))  # noqa: T201 (the figure bench/ reports)

        assert seen, "the agent never showed the switchover on /metrics"
        assert observed is not None and "old" in etcd_seen and observed >= etcd_seen["old"], summary
        assert all(p["health"] == 200 and p["metrics"] == 200 for p in probes), summary
        assert all(p["patroni_up"] == 1.0 and p["postgres_up"] == 1.0 for p in probes), summary
        events = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
        down = [e for e in events if e.get("event") in ("patroni_availability_changed",
                                                         "postgres_availability_changed") and not e.get("new")]
        assert down == [], down
        assert summary["log_growth_bytes"] < 1_000_000, summary
        assert sum(stats.answers.values()) > FLOOD_SECONDS * 100  # the flood really ran (rate printed)
        assert set(stats.answers) <= {401, 429}
    finally:
        agent.stop()
