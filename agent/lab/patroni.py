"""One Patroni node (PostgreSQL 15, or 17/18 from the lab wheels, under Patroni 4, etcd3 DCS) as the lab user.

Patroni's YAML config is written as JSON (YAML is a superset), so the lab needs no YAML library.
Patroni's HA timings are `PatroniTimings`: the lab runs `LAB_FAST` by default, a convenience that
keeps CI short, and the `patroni-defaults` test variant runs `PATRONI_DEFAULTS`, what a production
cluster runs when nobody tunes them. Every wait for a Patroni action derives its deadline from them.

The node's directory is its unix socket directory too: the agent and the tests (root) connect
there with peer auth, mapped by `pg_ident` map `lab` to the role `postgres`.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.lab import http, pgversions
from agent.lab.ports import free_port
from agent.lab.procs import Proc, chown_to_lab_user, descendants, pid_alive, signal_pids, wait_until
from agent.lab.rundir import check_socket_dir, lab_subdir
from agent.lab.tls import LabCA
from agent.status import AGENT_TAG

PATRONI_BIN = Path("/opt/pg-node-agent-lab/patroni-venv/bin/patroni")
PATRONI3_BIN = Path("/opt/pg-node-agent-lab/patroni3-venv/bin/patroni")  # Patroni 3.x, a lab variant
PG_BIN_DIR = pgversions.bin_dir()  # the default version's; a node may be given another

SUPERUSER = "postgres"
LAB_PASSWORD = "lab-secret"  # noqa: S105 - loopback-only lab; the agent itself uses peer auth

PG_HBA = [
    "local all all peer map=lab",
    "host replication all 127.0.0.1/32 scram-sha-256",
    "host all all 127.0.0.1/32 scram-sha-256",
]
PG_IDENT = ["lab root postgres", "lab pgtest postgres", "lab pgtest pgtest"]


# Room on top of Patroni's own timings for the work around them (initdb, promotion, crash recovery,
# REST round trips) on a loaded 2-core CI box. Deadlines are waits for an event, not measures of speed.
SLACK = 25.0


@dataclass(frozen=True, slots=True)
class PatroniTimings:
    """`ttl`, `loop_wait`, `retry_timeout` of bootstrap.dcs, and the deadlines that follow from them."""

    ttl: int
    loop_wait: int
    retry_timeout: int

    @property
    def cycle(self) -> int:
        """The longest HA cycle: its sleep and a DCS retry on either side (Patroni keeps this <= ttl)."""
        return self.loop_wait + 2 * self.retry_timeout

    def leader_lost(self) -> float:
        """A leader that stopped renewing: its key expires `ttl` after the last renewal, and a replica
        takes it within a cycle (woken by the DELETE, or at its next loop)."""
        return self.ttl + self.cycle + SLACK

    def in_place(self) -> float:
        """Patroni acts on what it finds (a dead postmaster, a demoted primary to rejoin) at its next
        cycle or the one after, then starts PostgreSQL."""
        return 2 * self.cycle + SLACK

    def switchover(self) -> float:
        """POST /switchover answers once the new leader holds the key, polling for up to
        2 * max(10, loop_wait) s (Patroni's `api.py` poll_failover_result)."""
        return 2 * max(10, self.loop_wait) + SLACK

    def bootstrap(self) -> float:
        """A new cluster: one member initdb's, the others find its key at their next cycle, clone it and stream."""
        return 2 * self.cycle + 2 * SLACK


# The lab's default: fast, so CI stays within budget. A convenience, not what production runs.
LAB_FAST = PatroniTimings(ttl=20, loop_wait=2, retry_timeout=3)
# Patroni's own defaults (`Config.get_default_config()` in patroni/config.py; a lab test compares).
PATRONI_DEFAULTS = PatroniTimings(ttl=30, loop_wait=10, retry_timeout=10)


@dataclass(frozen=True, slots=True)
class PatroniSettings:
    """What the three nodes of a cluster share."""

    scope: str = "lab"
    namespace: str = "/service"
    etcd_url: str = "http://127.0.0.1:2379"  # comma-separated for several members
    archive_dir: Path = Path("/tmp/pgna-archive")
    timings: PatroniTimings = LAB_FAST
    parameters: dict[str, Any] = field(default_factory=dict)
    tls: LabCA | None = None  # REST API over HTTPS with client certificates required
    etcd_tls: LabCA | None = None  # etcd's client URLs are https with client certificates required
    etcd_user: tuple[str, str] | None = None  # etcd RBAC (user, password)
    patroni_bin: Path = PATRONI_BIN
    pg_version: int | None = None  # None: the lab default (agent.lab.pgversions)
    agent_scheme: str = "http"  # of the `pg_node_agent` tag: "https" where the agents serve TLS


class PatroniNode:
    def __init__(self, run_dir: Path, name: str, settings: PatroniSettings) -> None:
        self.name = name
        self.settings = settings
        self.dir = lab_subdir(run_dir, name)
        self.socket_dir = check_socket_dir(self.dir)
        self.data_dir = self.dir / "data"
        self.pg_port = free_port()
        self.rest_port = free_port()
        # reserved for this node's agent and published as a Patroni tag (`status --cluster` reads it)
        self.agent_port = free_port()
        self.config_path = self.dir / "patroni.yml"
        self._write_config()
        if settings.tls is not None:  # the lab's own REST calls (readiness, switchover) use the lab CA
            ctx = ssl.create_default_context(cafile=str(settings.tls.ca))
            ctx.load_cert_chain(settings.tls.client_cert, settings.tls.client_key)
            http.trust(self.rest_url, ctx)
        self.patroni_proc = Proc(
            f"patroni-{name}",
            [str(settings.patroni_bin), str(self.config_path)],
            run_dir / f"patroni-{name}.log",
            as_lab_user=True,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.dir)},
            cwd=self.dir,
            accessible=self._rest_answers,
        )

    @property
    def rest_url(self) -> str:
        return f"{'https' if self.settings.tls else 'http'}://127.0.0.1:{self.rest_port}"

    def _etcd3(self) -> dict[str, Any]:
        s = self.settings
        etcd: dict[str, Any] = {"hosts": [u.split("://", 1)[-1] for u in s.etcd_url.split(",")]}
        if s.etcd_tls is not None:
            etcd.update(protocol="https", cacert=str(s.etcd_tls.ca), cert=str(s.etcd_tls.client_cert),
                        key=str(s.etcd_tls.client_key))
        if s.etcd_user is not None:
            etcd.update(username=s.etcd_user[0], password=s.etcd_user[1])
        return etcd

    def _restapi(self) -> dict[str, Any]:
        api: dict[str, Any] = {"listen": f"127.0.0.1:{self.rest_port}",
                               "connect_address": f"127.0.0.1:{self.rest_port}"}
        tls = self.settings.tls
        if tls is not None:
            api.update(certfile=str(tls.server_cert), keyfile=str(tls.server_key), cafile=str(tls.ca),
                       verify_client="required")
        return api

    def _config(self) -> dict[str, Any]:
        s = self.settings
        archive_command = f"test ! -f {s.archive_dir}/%f && cp %p {s.archive_dir}/%f"
        return {
            "scope": s.scope,
            "namespace": s.namespace.rstrip("/") + "/",
            "name": self.name,
            "log": {"level": "INFO"},
            "restapi": self._restapi(),
            # Patroni's own calls to other members (and patronictl) present a certificate too
            **({"ctl": {"certfile": str(s.tls.server_cert), "keyfile": str(s.tls.server_key),
                        "cacert": str(s.tls.ca)}} if s.tls else {}),
            "etcd3": self._etcd3(),
            "bootstrap": {
                "dcs": {
                    "ttl": s.timings.ttl,
                    "loop_wait": s.timings.loop_wait,
                    "retry_timeout": s.timings.retry_timeout,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "wal_level": "replica",
                            "wal_log_hints": "on",
                            "hot_standby": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "max_connections": 50,
                            "archive_mode": "on",
                            "archive_command": archive_command,
                            "archive_timeout": 0,
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.pg_port}",
                "connect_address": f"127.0.0.1:{self.pg_port}",
                "data_dir": str(self.data_dir),
                "bin_dir": str(pgversions.bin_dir(s.pg_version)),
                "pgpass": str(self.dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": LAB_PASSWORD},
                    "replication": {"username": "replicator", "password": LAB_PASSWORD},
                    "rewind": {"username": "rewinder", "password": LAB_PASSWORD},
                },
                "parameters": {
                    "unix_socket_directories": str(self.socket_dir),
                    "shared_buffers": "32MB",
                    "shared_preload_libraries": "pg_stat_statements",
                    **s.parameters,
                },
                "pg_hba": PG_HBA,
                "pg_ident": PG_IDENT,
            },
            "watchdog": {"mode": "off"},
            "tags": {AGENT_TAG: f"{s.agent_scheme}://127.0.0.1:{self.agent_port}"},
        }

    def _write_config(self) -> None:
        self.config_path.write_text(json.dumps(self._config(), indent=2) + "\n")
        self.config_path.chmod(0o600)
        chown_to_lab_user(self.config_path)

    # --- process control ---

    def _rest_answers(self) -> bool:
        status, _ = http.get(f"{self.rest_url}/patroni", timeout=1.0)
        return status in (200, 503)

    def start(self, max_wait: float = 30.0) -> None:
        """Spawn Patroni and wait for its REST API (not for PostgreSQL; the cluster waits for that)."""
        self.patroni_proc.start(max_wait)

    def spawn(self) -> None:
        self.patroni_proc.spawn()

    def postmaster_pid(self) -> int | None:
        """The postmaster's PID from postmaster.pid, or None when PostgreSQL is not running."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def pids(self) -> list[int]:
        """Every live process of this node: Patroni, the postmaster and all their descendants."""
        roots = [p for p in (self.patroni_proc.pid, self.postmaster_pid()) if p is not None and pid_alive(p)]
        found: list[int] = []
        for root in roots:
            for pid in [root, *descendants(root)]:
                if pid not in found and pid_alive(pid):
                    found.append(pid)
        return found

    def kill9_postmaster(self) -> int:
        pid = self.postmaster_pid()
        if pid is None:
            raise RuntimeError(f"{self.name}: PostgreSQL is not running")
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill9_patroni(self) -> None:
        self.patroni_proc.kill9()

    def kill9_all(self) -> list[int]:
        """Lose the node: SIGKILL Patroni, the postmaster and every backend at once. Returns the PIDs."""
        pids = self.pids()
        signal_pids(pids, signal.SIGKILL)
        self.patroni_proc.kill9()  # reaps our child
        wait_until(
            lambda: not any(pid_alive(p) for p in pids), 10, f"{self.name}: processes gone after kill -9"
        )
        return pids

    def stop(self, timeout: float = 30.0) -> None:
        """Stop Patroni (it shuts PostgreSQL down first), then any orphan postmaster left by a kill."""
        self.patroni_proc.stop(timeout=timeout)
        self._stop_orphans()

    def _stop_orphans(self) -> None:
        pm = self.postmaster_pid()
        if pm is not None:
            signal_pids(
                [pm], signal.SIGQUIT
            )  # immediate shutdown: the lab does not care about this node's data
            try:
                wait_until(lambda: not pid_alive(pm), 10, f"{self.name}: orphan postmaster {pm} stopped")
            except TimeoutError:
                signal_pids([pm, *descendants(pm)], signal.SIGKILL)

    def restart_postgres(self, timeout: float = 30.0) -> None:
        """Restart PostgreSQL through Patroni (`POST /restart`), which waits until it is up again."""
        status, body = http.post(f"{self.rest_url}/restart", {}, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"{self.name}: POST /restart -> {status}: {body!r}")

    def patroni_state(self) -> dict[str, Any] | None:
        status, body = http.get(f"{self.rest_url}/patroni", timeout=1.0)
        return body if status in (200, 503) and isinstance(body, dict) else None

    def __repr__(self) -> str:
        return f"<PatroniNode {self.name} pg={self.pg_port} rest={self.rest_port}>"
