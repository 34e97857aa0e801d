"""The agent as a process: endpoints, signals, sd_notify, reload — against a real etcd."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import AgentProc

from agent.lab.etcd import Etcd
from agent.lab.procs import wait_until


@pytest.fixture
def agent(run_dir: Path, etcd: Etcd) -> Iterator[AgentProc]:
    a = AgentProc(run_dir, etcd.url, scope=f"s{uuid.uuid4().hex[:8]}").start().wait_ready()
    yield a
    a.stop()


def test_agent_serves_metrics_health_status_and_404(agent: AgentProc) -> None:
    code, body = agent.get("/metrics")
    assert code == 200 and "pgnode_dcs_up 1.0" in body and 'pgnode_up{component="cluster_watch"} 1.0' in body
    assert agent.get("/health")[0] == 200
    st = agent.status()
    assert st["node"] == "node1" and st["state"]["dcs_up"] is True
    assert set(st["components"]) >= {"cluster_watch", "patroni_api", "pg_role", "watchdog"}
    assert agent.get("/nope")[0] == 404


def test_sigterm_stops_the_agent_with_exit_0_within_5s(agent: AgentProc) -> None:
    t0 = time.monotonic()
    agent.signal(signal.SIGTERM)
    assert agent.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 5
    assert any(e.get("event") == "agent_stopping" for e in agent.logs())


def test_sighup_with_a_broken_file_keeps_the_old_config_serving(agent: AgentProc) -> None:
    good = agent.config.read_text()
    agent.config.write_text(good + "\n[bogus]\nkey = 1\n")
    agent.signal(signal.SIGHUP)
    wait_until(
        lambda: any(e.get("event") == "config_reload_rejected" for e in agent.logs()),
        10,
        "reload rejected",
        detail=agent.tail,
    )
    assert agent.get("/health")[0] == 200
    assert agent.metric('pgnode_config_reloads_total{result="failure"}') == 1.0
    rejected = next(e for e in agent.logs() if e.get("event") == "config_reload_rejected")
    assert "bogus" in rejected["error"]
    agent.config.write_text(good.replace('level = "info"', "") + "\n")
    agent.signal(signal.SIGHUP)
    wait_until(lambda: agent.metric('pgnode_config_reloads_total{result="success"}') == 1.0, 10, "reload ok")
    assert agent.p is not None and agent.p.poll() is None


def test_notify_socket_gets_ready_watchdog_status_and_stopping(run_dir: Path, etcd: Etcd) -> None:
    name = f"pgnode-notify-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(15)
        a = AgentProc(
            run_dir,
            etcd.url,
            env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"},
            scope=f"s{uuid.uuid4().hex[:8]}",
        ).start(wait=False)
        try:
            got: list[str] = []
            deadline = time.monotonic() + 15
            while not (any("READY=1" in m for m in got) and any(m == "WATCHDOG=1" for m in got)):
                assert time.monotonic() < deadline, got
                got.append(sock.recv(4096).decode())
            ready = next(m for m in got if "READY=1" in m)
            assert "STATUS=role=" in ready and "dcs=up" in ready
            a.signal(signal.SIGTERM)
            while not any("STOPPING=1" in m for m in got):
                assert time.monotonic() < deadline + 10, got
                got.append(sock.recv(4096).decode())
            assert a.wait(10) == 0
        finally:
            a.stop()


def test_bad_watchdog_device_exits_78_at_start(run_dir: Path, etcd: Etcd) -> None:
    a = AgentProc(run_dir, etcd.url, extra='[watchdog]\ndevice = "/dev/watchdog"\n')
    a.start(wait=False)
    try:
        assert a.wait(30) == 78
    finally:
        a.stop()


def test_password_never_reaches_logs_or_status(run_dir: Path, etcd: Etcd) -> None:
    secret = run_dir / "pgpass"
    secret.write_text("sup3r-s3cret-pw\n")
    secret.chmod(0o600)
    a = AgentProc(run_dir, etcd.url, scope=f"s{uuid.uuid4().hex[:8]}")
    a.config.write_text(a.config.read_text().replace(
        "[postgres]\n", f'[postgres]\npassword_file = "{secret}"\nconnect_timeout = "1s"\n', 1))
    a.start().wait_ready()
    try:
        wait_until(lambda: any(e.get("event") == "postgres_unreachable" for e in a.logs()), 15, "pg error logged")
        assert "sup3r-s3cret-pw" not in a.log_path.read_text()
        assert "sup3r-s3cret-pw" not in a.get("/status")[1]
    finally:
        a.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_tls_and_basic_auth_protect_the_endpoints(run_dir: Path, etcd: Etcd) -> None:
    key, cert = run_dir / "key.pem", run_dir / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    digest = hashlib.sha256(b"scrape-pw").hexdigest()
    a = AgentProc(run_dir, etcd.url, scope=f"s{uuid.uuid4().hex[:8]}")
    a.config.write_text(a.config.read_text().replace(
        "[http]\n", f'[http]\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
                    f'basic_auth_users = {{ prom = "sha256:{digest}" }}\n', 1))
    a.start(wait=False)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        ctx.check_hostname = False

        def get(auth: str | None) -> int:
            req = urllib.request.Request(f"https://127.0.0.1:{a.port}/metrics")
            if auth:
                req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=2) as r:  # noqa: S310
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)
            except OSError:
                return 0

        wait_until(lambda: get("prom:scrape-pw") == 200, 20, "TLS /metrics with auth", detail=a.tail)
        assert get(None) == 401 and get("prom:wrong") == 401
        assert a.get("/metrics")[0] == 0  # plain HTTP is not served
        # the status CLI: https from the config's tls_cert_file, the CA from SSL_CERT_FILE, the
        # password from a file
        auth = run_dir / "status-auth"
        auth.write_text("prom:scrape-pw\n")
        cli = [sys.executable, "-m", "agent", "-c", str(a.config), "status", "--auth-file", str(auth)]
        env = {**os.environ, "SSL_CERT_FILE": str(cert)}
        r = subprocess.run(cli, capture_output=True, text=True, timeout=30, env=env, check=False)
        assert r.returncode == 0 and r.stdout.startswith("node "), r.stderr
        untrusted = subprocess.run(cli, capture_output=True, text=True, timeout=30, check=False,
                                   env={k: v for k, v in env.items() if k != "SSL_CERT_FILE"})
        assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    finally:
        a.stop()
