"""`status --cluster --auth-file` hands the operator's password only to agents it should reach.

A member's agent URL is a Patroni tag: whoever writes one node's patroni.yml, or etcd, chooses
it. Here a real 3-node cluster whose tags say https (its agents serve TLS with basic auth) gets
two extra member keys written straight into etcd, as such an attacker would: one whose tag
points away from the member's own address, one over plain http. Both point at collectors that
record every Authorization header they are sent.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.lab.agents import Agents
from agent.lab.cluster import Cluster
from agent.lab.etcd import Etcd
from agent.lab.ports import free_port
from agent.lab.procs import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")]


class Collector:
    """An HTTP(S) server that answers 401 and keeps what each request carried in Authorization."""

    def __init__(self, ctx: ssl.SSLContext | None) -> None:
        self.seen: list[str | None] = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization"))
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="x"')
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        if ctx is not None:
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if ctx else 'http'}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tls_cluster(run_dir: Path, etcd: Etcd) -> Iterator[Cluster]:
    c = Cluster(run_dir, etcd.url, scope=f"tls{os.getpid()}", agent_scheme="https")
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _member(host: str, tag: str) -> str:
    return json.dumps({"conn_url": f"postgres://{host}:5432/postgres", "api_url": f"http://{host}:8008/patroni",
                       "state": "running", "role": "replica", "version": "4.0.0", "timeline": 1,
                       "tags": {"pg_node_agent": tag}})


def test_credentials_go_over_https_to_the_members_own_address_only(
        run_dir: Path, tls_cluster: Cluster, etcd: Etcd) -> None:
    key, cert = run_dir / "key.pem", run_dir / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    digest = hashlib.sha256(b"s3cret").hexdigest()
    agents = Agents(run_dir, tls_cluster, [etcd.url])
    client_ctx = ssl.create_default_context(cafile=str(cert))

    def answers_401(url: str) -> bool:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1, context=client_ctx)  # noqa: S310
        except urllib.error.HTTPError as e:
            return e.code == 401
        except OSError:
            return False
        return False

    for a in agents:
        a.config_path.write_text(a.config_path.read_text().replace(
            "[http]\n", f'[http]\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
                        f'basic_auth_users = {{ ops = "sha256:{digest}" }}\n', 1))
        a.proc._accessible = lambda a=a: answers_401(f"https://127.0.0.1:{a.http_port}")
    auth = run_dir / "status-auth"
    auth.write_text("ops:s3cret\n")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(str(cert), str(key))
    members = f"/service/{tls_cluster.scope}/members/"
    env = {**os.environ, "SSL_CERT_FILE": str(cert)}

    def status(*args: str) -> tuple[int, Any]:
        r = subprocess.run([sys.executable, "-m", "agent", "-c", str(agents.agents[0].config_path), "status",
                            "--cluster", "--json", "--auth-file", str(auth), *args],
                           capture_output=True, text=True, timeout=30, env=env, check=False)
        return r.returncode, json.loads(r.stdout)

    with Collector(server_ctx) as far, Collector(None) as plain:
        etcd.put(members + "evil-far", _member("127.0.0.2", far.url))  # tag away from the member's address
        etcd.put(members + "evil-http", _member("127.0.0.1", plain.url))  # its own address, but http
        try:
            agents.start()
            box: dict[str, Any] = {}

            def seen_by_view() -> bool:
                box["rc"], box["view"] = status()
                names = {r["member"]["name"] for r in box["view"]["members"]}
                real_ok = all(r["agent"] for r in box["view"]["members"] if not r["member"]["name"].startswith("evil"))
                return {"evil-far", "evil-http"} <= names and real_ok

            wait_until(seen_by_view, 30, "Patroni lists the forged members; the real agents answer with auth",
                       detail=lambda: box)
            problems = box["view"]["problems"]
            assert box["rc"] == 1
            assert (f"evil-far: credentials not sent to {far.url}: 127.0.0.1 is not the member's address "
                    "(127.0.0.2); name it with --auth-host if it is the agent's") in problems, problems
            assert f"evil-http: credentials not sent to {plain.url}: https only" in problems, problems
            assert not [p for p in problems if str(p).startswith("node")], problems  # the real agents: fine
            assert far.seen and plain.seen and set(far.seen + plain.seen) == {None}  # asked, never given

            # The operator vouches for the host: now (and only now) the collector gets the password.
            _, view = status("--auth-host", "127.0.0.1")
            assert not any(str(p).startswith("evil-far: credentials") for p in view["problems"])
            assert far.seen[-1] is not None and far.seen[-1].startswith("Basic ")
            assert set(plain.seen) == {None}
        finally:
            agents.stop()
            etcd.delete(members + "evil-far")
            etcd.delete(members + "evil-http")
