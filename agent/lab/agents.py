"""One pg-node-agent per Patroni node, run as root like the tests (peer auth mapped to `postgres`).

The config is written by hand as TOML (the schema is `agent/core/config.py`; unknown keys are
errors there, so this writes only keys that exist).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.lab import http
from agent.lab.cluster import Cluster
from agent.lab.patroni import PatroniNode
from agent.lab.procs import Proc


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


class Agent:
    def __init__(
        self,
        run_dir: Path,
        node: PatroniNode,
        etcd_endpoints: list[str],
        *,
        scope: str,
        namespace: str = "/service",
        extra_toml: str = "",
        etcd_toml: str = "",
    ) -> None:
        self.name = node.name
        self.node = node
        self.http_port = node.agent_port
        self.state_dir = run_dir / f"agent-{node.name}"
        self.state_dir.mkdir(exist_ok=True)
        self.config_path = run_dir / f"agent-{node.name}.toml"
        self.config_path.write_text(
            self.render_config(node, etcd_endpoints, scope=scope, namespace=namespace, etcd_toml=etcd_toml)
            + extra_toml
        )
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        self.proc = Proc(
            f"agent-{node.name}",
            [sys.executable, "-m", "agent", "-c", str(self.config_path), "run"],
            run_dir / f"agent-{node.name}.log",
            env=env,
            accessible=self.healthy,
        )

    def render_config(self, node: PatroniNode, endpoints: list[str], *, scope: str, namespace: str,
                      etcd_toml: str = "") -> str:
        return "\n".join(
            [
                "[node]",
                f"name = {_toml_str(node.name)}",
                f"state_dir = {_toml_str(str(self.state_dir))}",
                "[etcd]",
                "endpoints = [" + ", ".join(_toml_str(e) for e in endpoints) + "]",
                f"namespace = {_toml_str(namespace)}",
                f"scope = {_toml_str(scope)}",
                *etcd_toml.splitlines(),  # TLS, RBAC
                "[patroni]",
                f"url = {_toml_str(node.rest_url)}",
                *([f"ca_file = {_toml_str(str(tls.ca))}", f"cert_file = {_toml_str(str(tls.client_cert))}",
                   f"key_file = {_toml_str(str(tls.client_key))}"] if (tls := node.settings.tls) else []),
                "[postgres]",
                f"host = {_toml_str(str(node.socket_dir))}",
                f"port = {node.pg_port}",
                'user = "postgres"',
                "[http]",
                f'listen = "127.0.0.1:{self.http_port}"',
                "[logging]",
                'format = "json"',
                "",
            ]
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def healthy(self) -> bool:
        status, _ = http.get(f"{self.url}/health", timeout=1.0)
        return status == 200

    def status(self) -> dict[str, Any] | None:
        code, body = http.get(f"{self.url}/status", timeout=1.0)
        return body if code == 200 and isinstance(body, dict) else None

    def metrics(self) -> str:
        code, body = http.get(f"{self.url}/metrics", timeout=2.0)
        return body if code == 200 and isinstance(body, str) else ""

    def start(self, max_wait: float = 30.0) -> None:
        self.proc.start(max_wait)

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        self.proc.stop(kill, timeout)

    def kill9(self) -> None:
        self.proc.kill9()


class Agents:
    """One agent per node of `cluster`, started together, each waited for on GET /health."""

    def __init__(
        self, run_dir: Path, cluster: Cluster, etcd_endpoints: list[str], extra_toml: str = "",
        etcd_toml: str = "",
    ) -> None:
        self.agents = [
            Agent(
                run_dir,
                n,
                etcd_endpoints,
                scope=cluster.scope,
                namespace=cluster.namespace,
                extra_toml=extra_toml,
                etcd_toml=etcd_toml,
            )
            for n in cluster.nodes
        ]

    def __iter__(self) -> Iterator[Agent]:
        return iter(self.agents)

    def __getitem__(self, name: str) -> Agent:
        for a in self.agents:
            if a.name == name:
                return a
        raise KeyError(name)

    def start(self, max_wait: float = 30.0) -> None:
        for a in self.agents:
            a.proc.spawn()
        for a in self.agents:
            a.proc.wait_accessible(max_wait)

    def stop(self) -> None:
        for a in self.agents:
            p = a.proc.popen
            if p is not None and p.poll() is None:
                p.terminate()
        for a in self.agents:
            a.stop()

    def pids(self) -> list[int]:
        return [a.pid for a in self.agents if a.pid is not None and a.proc.is_running()]
