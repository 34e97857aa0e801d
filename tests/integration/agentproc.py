"""A bare agent process for tests that need no Patroni: our own config, env and NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from agent.lab.ports import free_port
from agent.lab.procs import wait_until

ROOT = Path(__file__).resolve().parents[2]


class AgentProc:
    def __init__(
        self,
        run_dir: Path,
        etcd_url: str,
        *,
        extra: str = "",
        env: dict[str, str] | None = None,
        name: str = "node1",
        scope: str = "demo",
        nofile: tuple[int, int] | None = None,
        etcd_toml: str = "",
    ) -> None:
        self.nofile = nofile  # (soft, hard) RLIMIT_NOFILE the agent starts with
        self.port = free_port()
        self.run_dir = run_dir
        self.config = run_dir / f"agent-{name}-{self.port}.toml"
        self.log_path = run_dir / f"agent-{name}-{self.port}.log"
        self.config.write_text(self.render(etcd_url, extra, name, scope, etcd_toml))
        self.env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        self.env.update(env or {})
        self.p: subprocess.Popen[bytes] | None = None

    def render(self, etcd_url: str, extra: str, name: str, scope: str, etcd_toml: str = "") -> str:
        """`etcd_toml`: more [etcd] keys (TLS files, RBAC user), one a line."""
        return (
            f'[node]\nname = "{name}"\nstate_dir = "{self.run_dir}/state-{self.port}"\n'
            f'[etcd]\nscope = "{scope}"\nendpoints = ["{etcd_url}"]\nwatch_deadline = "3s"\n'
            + (etcd_toml + "\n" if etcd_toml else "") +
            f'[patroni]\nurl = "http://127.0.0.1:{free_port()}"\n'
            f'[postgres]\nhost = "{self.run_dir}"\nport = {free_port()}\n'
            f"[sampler]\nenabled = false\n[archive]\nenabled = false\n"
            f'[http]\nlisten = "127.0.0.1:{self.port}"\n[logging]\nformat = "json"\n' + extra
        )

    def _limits(self) -> None:
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def fds(self) -> int:
        assert self.p is not None
        return len(os.listdir(f"/proc/{self.p.pid}/fd"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> AgentProc:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "agent", "-c", str(self.config), "run"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            preexec_fn=self._limits if self.nofile else None,
        )
        if wait:
            wait_until(lambda: self.get("/health")[0] in (200, 503), 20, "agent /health", detail=self.tail)
        return self

    def wait_ready(self, timeout: float = 20) -> AgentProc:
        wait_until(
            lambda: self.status().get("ready") and self.status()["state"]["dcs_up"],
            timeout,
            "agent ready with etcd up",
            detail=self.tail,
        )
        return self

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as r:  # noqa: S310
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        return json.loads(body) if code == 200 else {}

    def metric(self, line_prefix: str) -> float | None:
        _, body = self.get("/metrics")
        for line in body.splitlines():
            if line.startswith(line_prefix + " ") or (line.startswith(line_prefix + "{") and " " in line):
                name, _, value = line.rpartition(" ")
                if name == line_prefix:
                    return float(value)
        return None

    def signal(self, sig: signal.Signals) -> None:
        assert self.p is not None
        self.p.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.p is not None
        return self.p.wait(timeout)

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def __enter__(self) -> AgentProc:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
