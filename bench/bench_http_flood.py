#!/usr/bin/env python3
"""The agent under a connection and auth flood: descriptors, CPU, RSS and /health latency.

Starts a real etcd (lab) and a real agent process (basic auth with a production-cost bcrypt
hash), measures it idle, then while `Flood` (tests/integration/testlab/flood.py) holds N idle connections (default
5,000; the agent evicts the quietest past its cap, the flood re-opens them at most 200 a second)
and sends wrong-password requests (default ~1,000 a second), then after. Every second it reads
the agent's /proc/<pid>/fd count, CPU time and VmRSS, and times a /health with good credentials
on a fresh connection. Loopback only.

    /work/main/.venv/bin/python bench/bench_http_flood.py [--holders 5000] [--rate 1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import bcrypt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # the flood client lives with the lab tests

from testlab.flood import Flood  # noqa: E402

from agent.lab.etcd import Etcd  # noqa: E402
from agent.lab.ports import free_port  # noqa: E402

USER, PASSWORD = "prom", "bench-secret"
TICK = os.sysconf("SC_CLK_TCK")


FAILURES: list[str] = []


def get(url: str, path: str) -> bytes:
    req = urllib.request.Request(url + path, headers={  # noqa: S310
        "Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()})
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
        return bytes(r.read())


def health(url: str) -> float | None:
    t = time.monotonic()
    try:
        get(url, "/health")
        return time.monotonic() - t
    except (urllib.error.URLError, OSError) as e:
        FAILURES.append(f"{round(time.monotonic() - t, 2)} s: {e!r}")
        return None


def proc_sample(pid: int) -> dict[str, float]:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    rss = next(int(x.split()[1]) for x in Path(f"/proc/{pid}/status").read_text().splitlines()
               if x.startswith("VmRSS:"))
    return {"t": time.monotonic(), "cpu": (int(stat[11]) + int(stat[12])) / TICK,
            "fds": len(os.listdir(f"/proc/{pid}/fd")), "rss_kib": rss}


def phase(name: str, pid: int, url: str, seconds: float) -> dict[str, Any]:
    samples, lat = [proc_sample(pid)], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        lat.append(health(url))
        time.sleep(max(0.0, 1.0 - (time.monotonic() - samples[-1]["t"])))
        samples.append(proc_sample(pid))
    ok = sorted(x for x in lat if x is not None)
    cpu = (samples[-1]["cpu"] - samples[0]["cpu"]) / (samples[-1]["t"] - samples[0]["t"])
    return {"phase": name, "fds_max": max(s["fds"] for s in samples), "cpu_percent": round(100 * cpu, 1),
            "rss_mib_max": round(max(s["rss_kib"] for s in samples) / 1024, 1),
            "health_ok": f"{len(ok)}/{len(lat)}",
            "health_p50_ms": round(1000 * ok[len(ok) // 2], 1) if ok else None,
            "health_max_ms": round(1000 * ok[-1], 1) if ok else None}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--holders", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--nofile", type=int, default=1024, help="the agent's soft and hard RLIMIT_NOFILE")
    args = ap.parse_args()
    run = Path(tempfile.mkdtemp(prefix="bench-flood-"))
    etcd = Etcd(run)
    etcd.start()
    port = free_port()
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt()).decode()
    cfg = run / "agent.toml"
    cfg.write_text(
        f'[node]\nname = "node1"\nstate_dir = "{run}/state"\n'
        f'[etcd]\nscope = "bench"\nendpoints = ["{etcd.url}"]\n'
        f'[patroni]\nurl = "http://127.0.0.1:{free_port()}"\n[postgres]\nhost = "{run}"\nport = {free_port()}\n'
        f"[sampler]\nenabled = false\n[archive]\nenabled = false\n"
        f'[http]\nlisten = "127.0.0.1:{port}"\nbasic_auth_users = {{ {USER} = "{hashed}" }}\n'
        f'[logging]\nformat = "json"\n')
    log = (run / "agent.log").open("ab")

    def limits() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))

    agent = subprocess.Popen([sys.executable, "-m", "agent", "-c", str(cfg), "run"], cwd=ROOT,
                             stdout=log, stderr=subprocess.STDOUT, preexec_fn=limits)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            if health(url) is not None:
                break
            time.sleep(0.2)
        FAILURES.clear()  # connects before the agent listened
        rows = [phase("idle", agent.pid, url, 5)]
        size0 = (run / "agent.log").stat().st_size
        with Flood(port, holders=args.holders, rate=args.rate, workers=100, user=USER) as flood:
            rows.append(phase(f"hold {args.holders} + {args.rate:.0f} wrong/s", agent.pid, url, args.seconds))
        stats = flood.stats
        rows.append(phase("after", agent.pid, url, 5))
        out = {"rows": rows, "nofile": args.nofile,
               "flood": {"answers": dict(stats.answers), "errors": stats.errors, "opened": stats.opened,
                         "closed_by_agent": stats.closed_by_agent,
                         "answered_per_second": round(sum(stats.answers.values()) / args.seconds)},
               "health_failures": FAILURES,
               "agent_http": json.loads(get(url, "/status"))["http"],
               "log_growth_bytes": (run / "agent.log").stat().st_size - size0,
               "agent_alive": agent.poll() is None}
        print(json.dumps(out, indent=2))
        return 0 if out["agent_alive"] else 1
    finally:
        agent.terminate()
        agent.wait(10)
        etcd.stop()


if __name__ == "__main__":
    raise SystemExit(main())
