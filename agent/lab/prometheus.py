"""Debian's Prometheus (2.42) as a lab child process: scrapes the agents and Patroni, loads the rules.

The generated config scrapes every lab agent as `job: pg-node-agent` and every Patroni REST API's
`/metrics` as `job: patroni`, each target labelled `cluster: <scope>` (what the shipped rules group
by) and `instance: <member name>` (one name for the agent and the Patroni of a node). Scrape and
rule evaluation run every second, so a switchover shows up within a couple of seconds.

The alert rules are `config/prometheus/pg-node-agent.rules.yml`. Their `for:` durations are
production values (1m to 15m), far longer than a demo. `lab_rules()` therefore writes a *lab copy*
into the run directory with one documented transform: every `for: <duration>` is divided by
`for_divisor` (default 60, so `1m` -> `1s`, `5m` -> `5s`, `15m` -> `15s`) and rounded up to whole
seconds, never below 1 s. Nothing else changes (expressions, range windows, labels); the shipped
file is only read. `for_divisor=None` loads the shipped file as it is.

A switchover restarts the demoted primary's PostgreSQL as a replica (~5 s): the shipped
`PgNodePostgresDown` (for: 1m, 1 s in the lab copy) goes pending -> firing -> resolved, which is
what the demo's timeline shows, read back from Prometheus.

Prometheus runs as the invoking user (never the Debian `prometheus.service`), on a free loopback
port, with its TSDB in the run directory; `Proc` stops it by PID like every other lab process.
"""

from __future__ import annotations

import math
import re
import shutil
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.lab import http
from agent.lab.ports import free_port
from agent.lab.procs import Proc, wait_until

PROMETHEUS_BIN = "/usr/bin/prometheus"
RULES_FILE = Path(__file__).resolve().parents[2] / "config" / "prometheus" / "pg-node-agent.rules.yml"
AGENT_JOB = "pg-node-agent"
PATRONI_JOB = "patroni"

_FOR_LINE = re.compile(r"^(?P<indent>\s*)for:\s*(?P<dur>\S+)\s*$")
_DUR_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class PromQLError(RuntimeError):
    """Prometheus answered a query with `status: error` (bad PromQL, bad range...)."""


def parse_duration(text: str) -> float:
    """A Prometheus duration (`90s`, `1m30s`, `2h`) in seconds."""
    parts = _DUR_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def shorten_for(rules_text: str, divisor: float) -> str:
    """The lab transform: every `for: D` becomes `for: ceil(D / divisor)s` (at least 1s)."""
    out = []
    for line in rules_text.splitlines(keepends=True):
        m = _FOR_LINE.match(line.rstrip("\n"))
        if m is None:
            out.append(line)
            continue
        seconds = max(1, math.ceil(parse_duration(m["dur"]) / divisor))
        out.append(f"{m['indent']}for: {seconds}s\n")
    return "".join(out)


def lab_rules(run_dir: Path, divisor: float | None = 60.0, source: Path = RULES_FILE) -> Path:
    """The rules file Prometheus loads: the shipped one, or a lab copy with shortened `for:`."""
    if divisor is None:
        return source
    dest = run_dir / "prometheus-rules.lab.yml"
    header = (f"# LAB COPY of {source} (agent.lab.prometheus.shorten_for):\n"
              f"# every `for:` divided by {divisor:g}, rounded up to whole seconds, at least 1s.\n")
    dest.write_text(header + shorten_for(source.read_text(), divisor))
    return dest


@dataclass(frozen=True, slots=True)
class Target:
    address: str  # host:port
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScrapeJob:
    name: str
    targets: Sequence[Target]
    metrics_path: str = "/metrics"


def _address(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def lab_jobs(agents: Iterable[Any], cluster: Any) -> list[ScrapeJob]:
    """`pg-node-agent` (every agent) and `patroni` (every node's REST /metrics) of one lab cluster.

    `agents` are `agent.lab.agents.Agent`s and `cluster` an `agent.lab.cluster.Cluster` (typed
    loosely so this module does not import psycopg through the cluster module)."""
    scope = str(cluster.scope)
    return [
        ScrapeJob(AGENT_JOB, [Target(_address(a.url), {"cluster": scope, "instance": a.name}) for a in agents]),
        ScrapeJob(PATRONI_JOB, [Target(_address(n.rest_url), {"cluster": scope, "instance": n.name})
                                for n in cluster.nodes]),
    ]


def render_config(jobs: Sequence[ScrapeJob], rule_files: Sequence[Path], interval: str = "1s") -> str:
    """prometheus.yml as JSON (YAML is a superset of JSON; the lab needs no YAML library)."""
    import json

    cfg = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": j.name,
                "metrics_path": j.metrics_path,
                "static_configs": [{"targets": [t.address], "labels": t.labels} for t in j.targets],
            }
            for j in jobs
        ],
    }
    return json.dumps(cfg, indent=2) + "\n"


class Prometheus:
    """One Prometheus server: `start()` waits for `/-/ready`; `query()`, `alerts()` read its API."""

    def __init__(
        self,
        run_dir: Path,
        jobs: Sequence[ScrapeJob],
        *,
        name: str = "prometheus",
        interval: str = "1s",
        for_divisor: float | None = 60.0,
        rules: Path = RULES_FILE,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.data_dir = run_dir / f"{name}-data"
        self.config_path = run_dir / f"{name}.yml"
        self.rules_path = lab_rules(run_dir, for_divisor, rules)
        rule_files = [self.rules_path]
        self.config_path.write_text(render_config(jobs, rule_files, interval))
        argv = [
            shutil.which("prometheus") or PROMETHEUS_BIN,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
        self.proc = Proc(name, argv, run_dir / f"{name}.log", accessible=self.ready)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def ready(self) -> bool:
        status, _ = http.get(f"{self.url}/-/ready", timeout=1.0)
        return status == 200

    def start(self, max_wait: float = 30.0) -> None:
        self.proc.start(max_wait)

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        self.proc.stop(kill, timeout)

    # --- HTTP API ---

    def _api(self, path: str, params: dict[str, str] | None = None, timeout: float = 5.0) -> Any:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        status, body = http.get(url, timeout=timeout)
        if not isinstance(body, dict):
            raise RuntimeError(f"prometheus {path}: HTTP {status}, no JSON answer")
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        return body.get("data")

    def query_data(self, promql: str) -> dict[str, Any]:
        """`/api/v1/query` data: `{"resultType": ..., "result": ...}`; PromQLError when it does not parse."""
        data = self._api("query", {"query": promql})
        return data if isinstance(data, dict) else {}

    def query(self, promql: str) -> list[Any]:
        """An instant query's result: vector samples (`{"metric": {...}, "value": [t, "v"]}`), or a
        one-element list for a scalar/string result."""
        data = self.query_data(promql)
        result = data.get("result", [])
        if data.get("resultType") in ("scalar", "string"):
            return [result]
        return list(result)

    def value(self, promql: str) -> float | None:
        """The single value of a query that yields one sample (None for an empty result)."""
        result = self.query(promql)
        if not result:
            return None
        sample = result[0]
        pair = sample["value"] if isinstance(sample, dict) else sample
        return float(pair[1])

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (`/api/v1/alerts`): each with `labels`, `state` (pending/firing), `activeAt`."""
        data = self._api("alerts")
        return list(data.get("alerts", [])) if isinstance(data, dict) else []

    def targets(self) -> list[dict[str, Any]]:
        data = self._api("targets", {"state": "active"})
        return list(data.get("activeTargets", [])) if isinstance(data, dict) else []

    def rule_groups(self) -> list[dict[str, Any]]:
        data = self._api("rules")
        return list(data.get("groups", [])) if isinstance(data, dict) else []

    def wait_for_series(self, promql: str, timeout: float = 20.0, min_results: int = 1) -> list[Any]:
        """Wait until `promql` returns at least `min_results` samples; return them."""
        box: list[list[Any]] = [[]]

        def check() -> bool:
            try:
                box[0] = self.query(promql)
            except (PromQLError, RuntimeError):
                return False
            return len(box[0]) >= min_results

        wait_until(check, timeout, f"prometheus: {promql!r} with >= {min_results} results", 0.2,
                   detail=lambda: box[0])
        return box[0]

    def wait_targets_up(self, job: str, count: int, timeout: float = 20.0) -> None:
        """Wait until `count` targets of `job` were scraped successfully (`up == 1`)."""
        self.wait_for_series(f'up{{job="{job}"}} == 1', timeout, count)

    def __repr__(self) -> str:
        return f"<Prometheus {self.url} pid={self.pid}>"
