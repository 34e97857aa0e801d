"""The v3 phase: N leader changes through etcd's v3 gateway, seen by the bare watch, etcdctl and
the agent's /metrics, side by side."""

from __future__ import annotations

import argparse
import bisect
import contextlib
import http.client
import json
import math
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.leader_latency.net import LEADER_KEY, ROOT, SCOPE, b64, hostport, now_ns, tls_context
from bench.leader_latency.procs import Cleanup, Seen, cpu_seconds, http_json, proc_status, reader, wait_for
from bench.leader_latency.report import Row

if TYPE_CHECKING:
    from tests.integration.testlab.postgres import PgInstance


class V3Put:
    """Puts through the v3 gateway over one keep-alive connection (no connect in the timed path)."""

    def __init__(self, url: str, tls_dir: str = "") -> None:
        host, port = hostport(url)
        self.conn = (http.client.HTTPSConnection(host, port, timeout=5, context=tls_context(tls_dir))
                     if url.startswith("https") else http.client.HTTPConnection(host, port, timeout=5))

    def put(self, key: str, value: str) -> None:
        body = json.dumps({"key": b64(key), "value": b64(value)})
        self.conn.request("POST", "/v3/kv/put", body=body, headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"put -> {r.status}")


def agent_config(run_dir: Path, etcd_url: str, port: int, tls_dir: str = "", pg: PgInstance | None = None) -> Path:
    """No Patroni; without `pg` no PostgreSQL and no sampler, with it the sampler on
    pg_stat_statements every 10 s (the default top_n)."""
    from agent.lab.ports import free_port

    cfg = run_dir / f"agent-{port}.toml"
    tls = (f'ca_file = "{tls_dir}/ca.crt"\ncert_file = "{tls_dir}/client.crt"\nkey_file = "{tls_dir}/client.key"\n'
           if tls_dir else "")
    postgres = (f'host = "{pg.socket_dir}"\nport = {pg.port}\nuser = "postgres"\ndbname = "postgres"\n'
                if pg else f'host = "{run_dir}"\nport = {free_port()}\n')
    sampler = 'source = "pg_stat_statements"\ninterval = "10s"\n' if pg else "enabled = false\n"
    cfg.write_text(
        f'[node]\nname = "node1"\nstate_dir = "{run_dir}/agent-state-{port}"\n'
        f'[etcd]\nscope = "{SCOPE}"\nendpoints = ["{etcd_url}"]\nwatch_deadline = "3s"\n{tls}'
        f'[patroni]\nurl = "http://127.0.0.1:{free_port()}"\n'
        f"[postgres]\n{postgres}"
        f"[sampler]\n{sampler}[archive]\nenabled = false\n"
        f'[http]\nlisten = "127.0.0.1:{port}"\n[logging]\nformat = "json"\n'
    )
    return cfg


ETCD_VARIANTS = ("defaults", "progress-1s", "tls")


def sampler_reads(agent_url: str) -> int:
    section = http_json(agent_url + "/status").get("sampler") or {}
    return int(section.get("reads", 0)) if isinstance(section, dict) else 0


@contextlib.contextmanager
def sampler_load(cl: Cleanup, run_dir: Path, n: int) -> Iterator[PgInstance]:
    """A PostgreSQL 15 holding N distinct pg_stat_statements entries, kept busy by a process
    re-running them back to back (bench_exporter_side_by_side's setup and load)."""
    from bench import bench_exporter_side_by_side as side

    pg = side.new_pg(run_dir, n)
    pg.start()
    try:
        side.prepare(pg, n)
        cl.spawn("sampler-load", [sys.executable, side.__file__, "--fill-forever", str(pg.socket_dir),
                                  str(pg.port), str(n)], run_dir / "sampler-load.log", cwd=ROOT)
        yield pg
    finally:
        for name, p in cl.procs:
            if name == "sampler-load":
                cl.stop(p)
        pg.stop()


@dataclass(frozen=True)
class AgentUsage:
    """What the agent process spent over the changes (from /proc), and its sampler's reads."""

    pid: int
    rss_before: str
    rss: str
    hwm: str
    cpu_seconds: float
    elapsed_seconds: float
    sampler_reads: int | None  # None: no sampler in this run


@dataclass(frozen=True)
class V3Run:
    rows: dict[str, Row]  # by row name; `report.ORDER` says which are printed, in which order
    agent: AgentUsage


def role(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"bench.leader_latency.roles.{name}", *args]


def v3_phase(args: argparse.Namespace, cl: Cleanup, run_dir: Path, variant: str = "defaults",
             pg: PgInstance | None = None) -> V3Run:
    """One run against an etcd with production defaults, with progress notifications every 1 s,
    or with TLS for clients and peers and client certificates required (lab CA). With `pg`, the
    agent also samples pg_stat_statements of that (busy) PostgreSQL."""
    from agent.lab.etcd import Etcd
    from agent.lab.ports import free_port
    from agent.lab.tls import LabCA

    tls_dir = str(LabCA.create(run_dir / f"tls-{variant}").dir) if variant == "tls" else ""
    tag = variant + ("-sampler" if pg else "")
    etcd = Etcd(run_dir, f"etcd-{tag}", progress_notify="1s" if variant == "progress-1s" else "",
                tls=LabCA(Path(tls_dir)) if tls_dir else None)
    etcd.start()
    cl.procs.append(("etcd", etcd.proc.popen))  # type: ignore[arg-type]
    putter = V3Put(etcd.url, tls_dir)
    putter.put(LEADER_KEY, "member-init")

    # the agent
    port = free_port()
    agent_url = f"http://127.0.0.1:{port}"
    cfg = agent_config(run_dir, etcd.url, port, tls_dir, pg)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    agent = cl.spawn("agent", [sys.executable, "-m", "agent", "-c", str(cfg), "run"], run_dir / f"agent-{tag}.log",
                     cwd=ROOT, env=env)
    wait_for(lambda: (s := http_json(agent_url + "/status")).get("ready") and s["state"].get("dcs_up")
             and s["state"].get("leader") == "member-init", 30, "agent ready with leader member-init")
    if pg is not None:  # the priming read of N entries is not the steady state: measure after it
        wait_for(lambda: sampler_reads(agent_url) >= 1, 180, "agent sampler's first read")
    reads0 = sampler_reads(agent_url)

    seen = Seen()

    # 1. bare watch (own process)
    bare = cl.spawn("bare-watch", role("watch", etcd.url, LEADER_KEY, tls_dir), stdout=subprocess.PIPE, cwd=ROOT)
    ready = threading.Event()

    def on_bare(_t: int, line: str) -> None:
        if line == "ready":
            ready.set()
        else:
            ts, _, value = line.partition(" ")
            seen.record("bare watch", value, int(ts))

    reader(bare.stdout, on_bare)  # type: ignore[arg-type]
    if not ready.wait(10):
        raise TimeoutError("bare watch not created within 10s")

    # 2. etcdctl watch
    consumers = ["bare watch", "agent /metrics"]
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        print("etcdctl: not installed (Debian etcd-client) -- skipped")
    else:
        certs = ["--cacert", f"{tls_dir}/ca.crt", "--cert", f"{tls_dir}/client.crt", "--key",
                 f"{tls_dir}/client.key"] if tls_dir else []
        ectl = cl.spawn("etcdctl", [etcdctl, "--endpoints", etcd.url, *certs, "watch", LEADER_KEY],
                        stdout=subprocess.PIPE, env={**os.environ, "ETCDCTL_API": "3"})
        reader(ectl.stdout, lambda t, line: seen.record("etcdctl watch", line.strip(), t))  # type: ignore[arg-type]
        consumers.insert(1, "etcdctl watch")

    # 3. the agent's /metrics, polled by its own process
    scr = cl.spawn("scraper", role("scrape", agent_url, str(args.scrape_interval)),
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
    scrape_summary: dict[str, Any] = {}
    done = threading.Event()

    def on_scrape(_t: int, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "L":
            t1, t0, member, observed = rest.split(" ")
            seen.record("agent /metrics", member, int(t1))
            seen.extra.setdefault("agent", {}).setdefault(member, (int(t0), float(observed)))
        elif kind == "D":
            scrape_summary.update(json.loads(rest))
            done.set()

    reader(scr.stdout, on_scrape)  # type: ignore[arg-type]

    # warm-up: every consumer sees a few changes before we count
    # (etcdctl says nothing when its watch is set up: retry until 5 changes in a row reach everyone)
    in_a_row = 0
    for i in range(40):
        v = f"warmup-{i}"
        putter.put(LEADER_KEY, v)
        in_a_row = in_a_row + 1 if seen.wait(consumers, v, 1.0) else 0
        if in_a_row == 5:
            break
        time.sleep(0.05)
    else:
        raise TimeoutError(f"warm-up: changes not seen by all of {consumers}: {list(seen.at)}")

    rss_before = proc_status(agent.pid).get("VmRSS", "?")
    cpu0 = cpu_seconds(agent.pid)
    t_phase0 = time.monotonic()
    starts: dict[str, tuple[int, int, float]] = {}  # value -> (t0 mono, t_return mono, t0 wall)
    print(f"v3 phase: {args.changes} changes, gaps {args.gap_min*1000:.0f}-{args.gap_max*1000:.0f} ms, "
          f"consumers: {', '.join(consumers)}", flush=True)
    for i in range(args.changes):
        v = f"member-{i:04d}"
        wall0 = time.time()
        t0 = now_ns()
        putter.put(LEADER_KEY, v)
        t1 = now_ns()
        starts[v] = (t0, t1, wall0)
        if not seen.wait(consumers, v, 5):
            missing = [c for c in consumers if v not in seen.at.get(c, {})]
            print(f"  change {v}: not seen within 5 s by {missing}", flush=True)
        time.sleep(random.uniform(args.gap_min, args.gap_max))
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{args.changes}", flush=True)
    elapsed = time.monotonic() - t_phase0
    cpu1 = cpu_seconds(agent.pid)
    st = proc_status(agent.pid)

    assert scr.stdin is not None
    scr.stdin.close()
    done.wait(10)

    rows: dict[str, Row] = {}
    rows["put returned"] = Row("put returned", [(t1 - t0) / 1e6 for t0, t1, _ in starts.values()])
    for c in consumers:
        got = seen.at.get(c, {})
        rows[c] = Row(c, [(got[v] - t0) / 1e6 for v, (t0, _, _) in starts.items() if v in got])
    ag = seen.extra.get("agent", {})
    rows["agent state (observed_ts)"] = Row(
        "agent state (observed_ts)",
        [(ag[v][1] - w0) * 1e3 for v, (_, _, w0) in starts.items() if v in ag and not math.isnan(ag[v][1])],
        "agent's own wall-clock stamp of the change, minus the put's wall-clock start",
    )
    rows["agent scrape start"] = Row(
        "agent scrape start", [(ag[v][0] - t0) / 1e6 for v, (t0, _, _) in starts.items() if v in ag],
        "start of the first scrape that showed it (lower bound)",
    )
    rows["agent /metrics"].note = "end of the first scrape that showed it"
    durs = [d / 1000 for d in scrape_summary.get("durations_us", [])]
    rows["scrape duration"] = Row("scrape duration", durs,
                                  f"{len(durs)} scrapes, {len(durs) / elapsed:.0f}/s, "
                                  f"{scrape_summary.get('bytes', 0)} bytes each")
    # the same scrapes, split by whether they started within 20 ms after a put's start
    put_t0 = sorted(t0 for t0, _, _ in starts.values())
    near: list[float] = []
    far: list[float] = []
    for t, d in zip(scrape_summary.get("starts_ns", []), durs, strict=False):
        k = bisect.bisect_right(put_t0, t) - 1
        (near if k >= 0 and t - put_t0[k] < 20_000_000 else far).append(d)
    rows["scrape <20ms after put"] = Row("scrape <20ms after put", near,
                                         "scrapes started within 20 ms after a put")
    rows["scrape otherwise"] = Row("scrape otherwise", far, "all other scrapes")
    gap = [(seen.at["agent /metrics"][v] / 1e6 - t0 / 1e6) - (ag[v][1] - w0) * 1e3
           for v, (t0, _, w0) in starts.items() if v in ag and v in seen.at.get("agent /metrics", {})]
    rows["agent state -> /metrics"] = Row("agent state -> /metrics", gap,
                                          "per change: /metrics seen minus agent's observed_ts (scrape side)")
    shown = seen.at.get("agent /metrics", {})
    rows["revealing scrape duration"] = Row(
        "revealing scrape duration", [(shown[v] - ag[v][0]) / 1e6 for v in starts if v in ag and v in shown],
        "duration of the first scrape that showed the change")
    usage = AgentUsage(pid=agent.pid, rss_before=rss_before, rss=st.get("VmRSS", "?"), hwm=st.get("VmHWM", "?"),
                       cpu_seconds=round(cpu1 - cpu0, 2), elapsed_seconds=round(elapsed, 2),
                       sampler_reads=sampler_reads(agent_url) - reads0 if pg else None)
    for name, p in reversed(cl.procs[:]):
        if name in ("scraper", "etcdctl", "bare-watch", "agent"):
            cl.stop(p)
    etcd.stop()
    return V3Run(rows, usage)
