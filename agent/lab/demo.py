"""`pg-node-agent demo`: etcd, a Patroni cluster, one agent per node and a little pgbench load.

After about ten seconds it asks Patroni for a switchover and prints, per agent, when its
`/status` showed the leader and role change, next to when Patroni's REST API named the new
leader. A Prometheus (Debian's, `agent.lab.prometheus`) scrapes every agent and Patroni with the
project's alert rules loaded (lab copy, shortened `for:`); the timeline also shows the alerts
Prometheus itself reported going pending -> firing -> resolved, read from its `/api/v1/alerts`.
It runs until Ctrl-C (or `duration` seconds), then stops every process it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import anyio

from agent.lab.agents import Agents
from agent.lab.cluster import Cluster
from agent.lab.etcd import ETCD_BIN, Etcd
from agent.lab.patroni import PATRONI_BIN, PG_BIN_DIR, PatroniNode
from agent.lab.procs import Proc, lab_user, pid_alive, pss_kib
from agent.lab.prometheus import PROMETHEUS_BIN, Prometheus, lab_jobs
from agent.lab.rundir import new_run_dir, remove_run_dir
from agent.status import fetch_cluster, render_cluster

SWITCHOVER_AFTER = 10.0
POLL = 0.05
ARCHIVE_PRUNE_EVERY = 60.0  # seconds between prunes of the cluster's `cp` WAL archive


@dataclass(frozen=True, slots=True)
class Observation:
    at: float  # time.monotonic()
    who: str
    what: str


class Timeline:
    """Changes seen by polling: each agent's /status (role, leader) and Patroni's /cluster leader."""

    def __init__(self, agents: Agents, cluster: Cluster) -> None:
        self.agents = agents
        self.cluster = cluster
        self.events: list[Observation] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch_agent, args=(a.name,), daemon=True) for a in agents
        ] + [threading.Thread(target=self._watch_patroni, daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(2)

    def note(self, who: str, what: str) -> None:
        with self._lock:
            self.events.append(Observation(time.monotonic(), who, what))

    def _watch_agent(self, name: str) -> None:
        agent = self.agents[name]
        last: dict[str, Any] = {}
        while not self._stop.wait(POLL):
            status = agent.status()
            state = status.get("state") if isinstance(status, dict) else None
            if not isinstance(state, dict):
                continue
            for key in ("leader", "role"):
                value = state.get(key)
                if key in last and last[key] != value:
                    self.note(f"agent {name}", f"{key}: {last[key]} -> {value}")
                last[key] = value

    def _watch_patroni(self) -> None:
        last: str | None = self.cluster.leader_name()
        while not self._stop.wait(POLL):
            leader = self.cluster.leader_name()
            if leader != last:
                self.note("patroni REST", f"/cluster leader: {last} -> {leader}")
                last = leader

    def render(self, since: float) -> str:
        with self._lock:
            events = sorted((e for e in self.events if e.at >= since), key=lambda e: e.at)
        width = max((len(e.who) for e in events), default=10)
        return "\n".join(f"  +{e.at - since:7.3f}s  {e.who:<{width}}  {e.what}" for e in events)


class AlertWatch:
    """Alert states as Prometheus reports them (`/api/v1/alerts`), noted into the timeline.

    An alert is keyed by its labels; a change of `state` (pending -> firing) is one observation,
    and an alert that leaves the list is `resolved`. What was active when the watch started is
    kept apart (`baseline`) and left out of the timeline: the demo did not cause it."""

    def __init__(self, prom: Prometheus, timeline: Timeline) -> None:
        self.prom = prom
        self.timeline = timeline
        self.baseline: dict[str, str] = {}
        self.active: dict[str, str] = {}
        self.changed: set[str] = set()  # alerts that changed state since the watch started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def key(alert: dict[str, Any]) -> str:
        labels = dict(alert.get("labels", {}))
        name = str(labels.pop("alertname", "?"))
        shown = {k: v for k, v in labels.items() if k in ("instance", "cluster", "component", "reason")}
        if "instance" in shown:
            shown.pop("cluster", None)
        return name + "{" + ",".join(f"{k}={v}" for k, v in sorted(shown.items())) + "}"

    def _read(self) -> dict[str, str] | None:
        try:
            return {self.key(a): str(a.get("state")) for a in self.prom.alerts()}
        except Exception:
            return None

    def start(self) -> None:
        self.baseline = self._read() or {}
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)

    def settled(self) -> bool:
        """No alert that changed since the start is still pending or firing."""
        return not any(k in self.changed for k in self.active)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            now = self._read()
            if now is None:
                continue
            now = {k: v for k, v in now.items() if k not in self.baseline}
            for k, state in sorted(now.items()):
                if self.active.get(k) != state:
                    self.changed.add(k)
                    self.timeline.note("prometheus", f"alert {k} {state}")
            for k in sorted(set(self.active) - set(now)):
                self.changed.add(k)
                self.timeline.note("prometheus", f"alert {k} resolved")
            self.active = now


def _missing() -> list[str]:
    need = [Path(ETCD_BIN), PATRONI_BIN, PG_BIN_DIR / "postgres", PG_BIN_DIR / "pgbench",
            Path(PROMETHEUS_BIN)]
    missing = [str(p) for p in need if not p.exists()]
    if os.geteuid() == 0 and lab_user() is not None:
        try:
            import pwd

            pwd.getpwnam(lab_user() or "")
        except KeyError:
            missing.append(f"OS user {lab_user()}")
    return missing


def _pgbench(run_dir: Path, leader: PatroniNode, *args: str) -> list[str]:
    return [str(PG_BIN_DIR / "pgbench"), "-h", str(leader.socket_dir), "-p", str(leader.pg_port),
            "-U", "postgres", *args, "postgres"]  # fmt: skip


class _Interrupted(Exception):
    pass


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted


def main(nodes: int = 3, switchover: bool = True, keep: bool = False, duration: float | None = None) -> int:
    if duration is None or duration <= 0:
        duration = float(os.environ.get("PG_NODE_AGENT_DEMO_DURATION", "0") or 0)
    missing = _missing()
    if missing:
        print("demo: missing " + ", ".join(missing))
        installer = Path(__file__).resolve().parents[2] / ".ci" / "install"
        if installer.exists():
            print(f"demo: set them up with: sudo {installer}")
        return 1
    if os.geteuid() != 0:
        print("demo: note: not root, so PostgreSQL runs as you; peer auth maps only root/pgtest")

    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t0:5.1f}s] {msg}", flush=True)

    run_dir = new_run_dir("pgna-demo-")
    say(f"run directory {run_dir}")
    old_term = signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`&`)
    etcd = Etcd(run_dir)
    cluster = Cluster(run_dir, etcd.url, nodes=nodes, scope="demo")
    agents = Agents(run_dir, cluster, [etcd.url])
    pgbench = Proc("pgbench", [], run_dir / "pgbench.log")
    prom = Prometheus(run_dir, lab_jobs(agents, cluster))
    timeline = Timeline(agents, cluster)
    alerts = AlertWatch(prom, timeline)
    all_pids: list[int] = []
    ok = False
    try:
        etcd.start()
        say(f"etcd up at {etcd.url}")
        say(f"starting {nodes} Patroni nodes (PostgreSQL 15, scope demo)")
        cluster.start(progress=say)
        leader = cluster.leader()
        say(f"cluster healthy: leader {leader.name}, {nodes - 1} replicas streaming")
        agents.start()
        say(f"{nodes} agents healthy")
        prom.start()
        prom.wait_targets_up("pg-node-agent", nodes, timeout=30)
        say(f"prometheus up at {prom.url}, scraping {nodes} agents and {nodes} Patroni every 1s")
        subprocess.run(_pgbench(run_dir, leader, "-i", "-s", "1", "-q"), check=True, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        pgbench.argv = _pgbench(run_dir, leader, "-c", "2", "-R", "50", "-T", "86400", "-n")
        pgbench.spawn()
        say("pgbench running: 2 clients, 50 tps")
        all_pids = [p for p in [etcd.pid, *cluster.pids(), *agents.pids(), prom.pid] if p is not None]
        mem = sum(pss_kib(p) for p in all_pids) / 1024
        print()
        print(
            f"Lab up in {time.monotonic() - t0:.1f}s, {len(all_pids)} processes, {mem:.0f} MiB PSS. Look at:"
        )
        for a in agents:
            print(f"  {a.name}: {a.url}/status  {a.url}/metrics   (log {a.proc.log_path})")
        print(f"  patroni:  {' '.join(cluster.patronictl_argv('list'))}")
        print(
            f"  etcd:     ETCDCTL_API=3 etcdctl --endpoints={etcd.url} "
            "get --prefix /service/demo/ --keys-only"
        )
        print(f"  psql:     psql -h {leader.socket_dir} -p {leader.pg_port} -U postgres")
        print(f"  prometheus: {prom.url}/alerts  {prom.url}/graph   (rules {prom.rules_path})")
        print(f"  cluster:  {sys.executable} -m agent -c {agents.agents[0].config_path} status --cluster")
        print()
        timeline.start()
        alerts.start()
        if alerts.baseline:
            say("alerts already active before the switchover (Prometheus): "
                + ", ".join(f"{k} {v}" for k, v in sorted(alerts.baseline.items())))
            if any(k.startswith("PgNodeWatchdogNotFed") for k in alerts.baseline):
                say("  (lab agents run without a systemd watchdog, so their last-feed timestamp stays 0)")
        deadline = time.monotonic() + duration if duration else None
        if switchover:
            wait = SWITCHOVER_AFTER if deadline is None else min(SWITCHOVER_AFTER, duration / 3)
            say(f"switchover in {wait:.0f}s (Ctrl-C to stop)")
            time.sleep(wait)
            _do_switchover(cluster, timeline, pgbench, say, alerts)
        say(
            "running; Ctrl-C to stop" if deadline is None else f"running until {duration:.0f}s after the lab came up"
        )
        _idle(deadline, cluster, say)
        ok = True
    except (KeyboardInterrupt, _Interrupted):
        print()
        say("interrupted")
        ok = True
    except Exception as e:
        say(f"demo failed: {e}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave orphans
        try:
            say("stopping")
            timeline.stop()
            alerts.stop()
            all_pids += [p for p in [etcd.pid, *cluster.pids(), *agents.pids(), pgbench.pid, prom.pid]
                         if p is not None]
            steps: list[Callable[[], object]] = [pgbench.stop, prom.stop, agents.stop, cluster.stop, etcd.stop]
            for step in steps:
                try:  # one failing step must not leave the later processes running
                    step()
                except Exception as e:
                    say(f"stop step failed: {e!r}")
                    ok = False
            left = sorted({p for p in all_pids if pid_alive(p)})
            say("all processes stopped" if not left else f"still alive: {left}")
            ok = ok and not left
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, old_term)
        if keep or not ok:
            say(f"kept {run_dir} (logs, configs, data)")
        else:
            remove_run_dir(run_dir)
    return 0 if ok else 1


def _idle(deadline: float | None, cluster: Cluster, say: Callable[[str], None],
          prune_every: float = ARCHIVE_PRUNE_EVERY) -> None:
    """Wait for `deadline` (None: until Ctrl-C), pruning the cluster's WAL archive every
    `prune_every` seconds as the tests do (agent.lab.archive): pgbench keeps the primary archiving,
    and a demo left running for hours would otherwise fill the disk with archived segments."""
    next_prune = time.monotonic() + prune_every
    while deadline is None or time.monotonic() < deadline:
        time.sleep(min(0.5, prune_every))
        if time.monotonic() >= next_prune:
            try:
                cluster.prune_archive()
            except (OSError, subprocess.SubprocessError) as e:  # the demo goes on; the disk may fill
                say(f"archive prune failed: {e!r}")
            next_prune = time.monotonic() + prune_every


ALERTS_SETTLE = 30.0


def _do_switchover(cluster: Cluster, timeline: Timeline, pgbench: Proc, say: Any, alerts: AlertWatch) -> None:
    old = cluster.leader_name()
    candidate = next(n.name for n in cluster.nodes if n.name != old)
    say(f"switchover {old} -> {candidate} (POST /switchover)")
    timeline.note("lab", f"POST /switchover leader={old} candidate={candidate}")
    started = timeline.events[-1].at
    new = cluster.switchover(candidate)
    settle = time.monotonic() + 10
    while time.monotonic() < settle and not _agents_settled(timeline.agents, new):
        time.sleep(0.1)
    # alerts: wait until the ones the switchover raised have resolved (rule evaluation is every 1s)
    settle = time.monotonic() + ALERTS_SETTLE
    while time.monotonic() < settle and not (alerts.changed and alerts.settled()):
        time.sleep(0.2)
    time.sleep(0.3)  # let the pollers record the last change they just saw
    print(f"\nTimeline of the switchover (t=0: request sent):\n{timeline.render(started)}\n", flush=True)
    if not alerts.changed:
        say(f"prometheus: no alert changed state within {ALERTS_SETTLE:.0f}s of the switchover")
    elif not alerts.settled():
        say("prometheus: still active: " + ", ".join(k for k in alerts.active if k in alerts.changed))
    _say_prometheus_view(alerts.prom, cluster.scope, say)
    say(f"new leader {new}")
    view = anyio.run(fetch_cluster, cluster.node(new).rest_url, timeline.agents.agents[0].url)
    print(f"\n`pg-node-agent status --cluster` now:\n{render_cluster(view)}\n", flush=True)
    if pgbench.popen is not None:  # its sessions on the old primary are gone: follow the leader
        pgbench.stop(timeout=5)
        pgbench.argv = _pgbench(
            cluster.run_dir, cluster.node(new), "-c", "2", "-R", "50", "-T", "86400", "-n"
        )
        pgbench.spawn()
        say(f"pgbench restarted against {new}")


def _say_prometheus_view(prom: Prometheus, scope: str, say: Any) -> None:
    """What Prometheus's own query API says about the cluster now (not the agents' /status)."""
    try:
        leaders = prom.query(f'max by (member) (pgnode_leader{{cluster="{scope}"}})')
        primaries = prom.query(f'pgnode_confirmed_primary{{cluster="{scope}"}} == 1')
        changes = prom.value(f'max(pgnode_leader_changes_total{{cluster="{scope}"}})')
    except Exception as e:
        say(f"prometheus query failed: {e}")
        return
    seen = "none yet" if changes is None else f"{changes:.0f}"
    say(f"prometheus /api/v1/query: leader key names {sorted(r['metric'].get('member') for r in leaders)}, "
        f"confirmed primary on {sorted(r['metric'].get('instance') for r in primaries)}, "
        f"leader changes counted by an agent: {seen}")


def _agents_settled(agents: Agents, leader: str) -> bool:
    """True once every agent names `leader`, `leader`'s agent says primary and the others replica."""
    for a in agents:
        status = a.status() or {}
        state = status.get("state")
        if not isinstance(state, dict) or state.get("leader") != leader:
            return False
        if state.get("role") != ("primary" if a.name == leader else "replica"):
            return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
