"""A Patroni cluster of N nodes on one etcd, with the fault primitives the tests use.

Readiness is Patroni's own view (`GET /cluster`): one leader `running` and every other member
`streaming`. Switchover and failover go through the REST API, as `patronictl` does. Waits for
Patroni's actions default to deadlines derived from the cluster's `timings` (agent.lab.patroni).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

from agent.lab import archive, http, pgversions
from agent.lab.patroni import LAB_FAST, PATRONI_BIN, PatroniNode, PatroniSettings, PatroniTimings
from agent.lab.procs import LabTimeout, pid_alive, pss_kib, wait_until
from agent.lab.rundir import lab_subdir
from agent.lab.tls import LabCA

ClusterJSON = dict[str, Any]


class Cluster:
    def __init__(
        self,
        run_dir: Path,
        etcd_url: str,
        *,
        nodes: int = 3,
        scope: str = "lab",
        namespace: str = "/service",
        parameters: dict[str, Any] | None = None,
        tls: LabCA | None = None,
        etcd_tls: LabCA | None = None,
        etcd_user: tuple[str, str] | None = None,
        patroni_bin: Path = PATRONI_BIN,
        pg_version: int | None = None,
        agent_scheme: str = "http",
        timings: PatroniTimings = LAB_FAST,
    ) -> None:
        self.run_dir = run_dir
        self.scope = scope
        self.namespace = namespace
        self.timings = timings
        self.archive_dir = lab_subdir(run_dir, f"archive-{scope}", 0o700)
        settings = PatroniSettings(
            scope=scope,
            namespace=namespace,
            etcd_url=etcd_url,
            archive_dir=self.archive_dir,
            parameters=dict(parameters or {}),
            tls=tls,
            etcd_tls=etcd_tls,
            etcd_user=etcd_user,
            patroni_bin=patroni_bin,
            pg_version=pg_version,
            agent_scheme=agent_scheme,
            timings=timings,
        )
        self.nodes = [PatroniNode(run_dir, f"node{i}", settings) for i in range(1, nodes + 1)]
        self.pg_version = pg_version
        self.started_at: float | None = None
        self.ready_after: float | None = None

    # --- lifecycle ---

    def start(self, max_wait: float | None = None, progress: Callable[[str], None] | None = None) -> None:
        """Spawn every Patroni at once (they race for the initialize key) and wait until healthy."""
        max_wait = self.timings.bootstrap() if max_wait is None else max_wait
        t0 = time.monotonic()
        self.started_at = t0
        for n in self.nodes:
            n.spawn()
        for n in self.nodes:
            n.patroni_proc.wait_accessible(max_wait)
        if progress:
            progress(f"patroni REST up on {len(self.nodes)} nodes after {time.monotonic() - t0:.1f}s")
        self.wait_healthy(max_wait - (time.monotonic() - t0), progress=progress)
        # what an operator does once on a new cluster (docs/installation.md): the sampler's source
        self.psql(self.leader(), "create extension if not exists pg_stat_statements")
        self.ready_after = time.monotonic() - t0

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every Patroni together (each stops its PostgreSQL), reap them, then any orphans."""
        for n in self.nodes:
            p = n.patroni_proc.popen
            if p is not None and p.poll() is None:
                p.terminate()
        for n in self.nodes:
            n.stop(timeout)

    def prune_archive(self) -> int:
        """The nodes' shared archive bounded (agent.lab.archive); how many segments went."""
        return archive.prune(self.archive_dir, pgversions.bin_dir(self.pg_version))

    def pids(self) -> list[int]:
        return [pid for n in self.nodes for pid in n.pids()]

    def pss_kib(self) -> int:
        return sum(pss_kib(pid) for pid in self.pids())

    # --- what Patroni says ---

    def node(self, name: str) -> PatroniNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def cluster_json(self, via: PatroniNode | None = None) -> ClusterJSON | None:
        """`GET /cluster` from `via`, or from the first node that answers."""
        for n in [via] if via is not None else self.nodes:
            if n.patroni_proc.is_running():
                status, body = http.get(f"{n.rest_url}/cluster", timeout=1.0)
                if status == 200 and isinstance(body, dict):
                    return body
        return None

    def leader_name(self) -> str | None:
        cj = self.cluster_json()
        if cj is None:
            return None
        leaders = [m["name"] for m in cj.get("members", []) if m.get("role") == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def leader(self) -> PatroniNode:
        name = self.leader_name()
        if name is None:
            raise RuntimeError(f"no single leader: {self.cluster_json()!r}")
        return self.node(name)

    def replicas(self) -> list[PatroniNode]:
        leader = self.leader_name()
        return [n for n in self.nodes if n.name != leader]

    def is_healthy(self, members: Sequence[str] | None = None) -> bool:
        """One leader `running` and every other expected member `streaming`."""
        cj = self.cluster_json()
        if cj is None:
            return False
        expected = set(members) if members is not None else {n.name for n in self.nodes}
        seen = {m["name"]: m for m in cj.get("members", [])}
        if set(seen) != expected:
            return False
        leaders = [m for m in seen.values() if m.get("role") == "leader" and m.get("state") == "running"]
        streaming = [m for m in seen.values() if m.get("role") != "leader" and m.get("state") == "streaming"]
        return len(leaders) == 1 and len(streaming) == len(expected) - 1

    def wait_healthy(self, timeout: float = 60.0, progress: Callable[[str], None] | None = None) -> None:
        said: set[str] = set()

        def check() -> bool:
            if progress:
                leader = self.leader_name()
                if leader and leader not in said:
                    said.add(leader)
                    progress(f"leader {leader} elected, waiting for replicas to stream")
            return self.is_healthy()

        wait_until(check, timeout, "1 leader running + replicas streaming", 0.2, detail=self._summary)

    def wait_for_leader(self, predicate: Callable[[str], bool] = bool, timeout: float = 60.0) -> str:
        """Wait until Patroni reports a single leader satisfying `predicate(name)`; return its name."""
        box: list[str | None] = [None]

        def check() -> bool:
            box[0] = self.leader_name()
            return box[0] is not None and predicate(box[0])

        wait_until(check, timeout, "leader matching predicate", 0.1, detail=self._summary)
        return str(box[0])

    def wait_writable(self, name: str, timeout: float = 30.0) -> None:
        """Wait until `name` accepts writes: Patroni names a leader as soon as it holds the lock,
        a moment before its promotion finishes (`pg_is_in_recovery()` still true)."""

        def writable() -> bool:
            try:
                return self.psql(name, "select not pg_is_in_recovery()") == [(True,)]
            except psycopg.Error:
                return False

        wait_until(writable, timeout, f"{name} out of recovery", 0.1)

    def dcs_timings(self) -> PatroniTimings | None:
        """The timings Patroni runs with, from the dynamic configuration it keeps in etcd (`GET /config`)."""
        for n in self.nodes:
            if n.patroni_proc.is_running():
                status, body = http.get(f"{n.rest_url}/config", timeout=1.0)
                if status == 200 and isinstance(body, dict):
                    return PatroniTimings(int(body["ttl"]), int(body["loop_wait"]), int(body["retry_timeout"]))
        return None

    def _summary(self) -> object:
        cj = self.cluster_json()
        if cj is None:
            return "no node answers GET /cluster"
        return [(m.get("name"), m.get("role"), m.get("state")) for m in cj.get("members", [])]

    # --- faults ---

    def switchover(self, candidate: str | None = None, timeout: float | None = None) -> str:
        """Planned switchover through the leader's REST API; returns the new leader once Patroni shows it."""
        timeout = self.timings.switchover() if timeout is None else timeout
        leader = self.leader()
        body: dict[str, Any] = {"leader": leader.name}
        if candidate is not None:
            body["candidate"] = candidate
        status, resp = http.post(f"{leader.rest_url}/switchover", body, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"switchover {body} -> {status}: {resp!r}")
        want = candidate
        return self.wait_for_leader(lambda n: n != leader.name and (want is None or n == want), timeout)

    def failover(self, candidate: str, timeout: float | None = None) -> str:
        """Manual failover to `candidate` (works without a healthy leader)."""
        timeout = self.timings.switchover() if timeout is None else timeout
        via = self.node(candidate)
        status, resp = http.post(f"{via.rest_url}/failover", {"candidate": candidate}, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"failover to {candidate} -> {status}: {resp!r}")
        return self.wait_for_leader(lambda n: n == candidate, timeout)

    def kill9_leader(self) -> tuple[str, list[int]]:
        leader = self.leader()
        return leader.name, leader.kill9_all()

    def patronictl_argv(self, *args: str, node: PatroniNode | None = None) -> list[str]:
        cfg = (node or self.nodes[0]).config_path
        return [str(self.nodes[0].settings.patroni_bin.with_name("patronictl")), "-c", str(cfg), *args]

    # --- SQL ---

    def psql(
        self, node: PatroniNode | str, sql: str, params: Sequence[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement over the node's socket as `postgres` (peer auth) and return its rows."""
        return psql(self.node(node) if isinstance(node, str) else node, sql, params)


def connect(node: PatroniNode, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
    return psycopg.connect(
        host=str(node.socket_dir),
        port=node.pg_port,
        user="postgres",
        dbname=dbname,
        autocommit=True,
        connect_timeout=3,
    )


def psql(node: PatroniNode, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    with connect(node) as conn, conn.cursor() as cur:
        cur.execute(sql.encode(), params)  # lab SQL is test-authored text, not user input
        return cur.fetchall() if cur.description is not None else []


def all_dead(pids: Sequence[int]) -> bool:
    return not any(pid_alive(p) for p in pids)


__all__ = ["Cluster", "LabTimeout", "all_dead", "connect", "psql"]
