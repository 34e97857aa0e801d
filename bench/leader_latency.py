#!/usr/bin/env python3
"""Leader-change latency: from the start of the `put` of /service/<scope>/leader to each consumer.

In one run, side by side, N sequential leader changes with randomised gaps, seen by:
  1. a bare Python consumer of etcd's gateway `/v3/watch` stream (raw socket, chunked decoding
     by hand, in its own process) -- the floor;
  2. `etcdctl watch` (Debian etcd-client), its stdout lines timestamped as they arrive;
  3. the agent's `/metrics` showing `pgnode_leader{member="<new>"} 1.0`, polled in a tight loop
     over one keep-alive connection by its own process (scrape times reported too), plus the
     agent's own `pgnode_leader_change_observed_timestamp_seconds` (its state update, before any
     scrape) to split the agent's time into "watch + state" and "scrape";
  4. vip-manager 1.0.2 (Debian; polls etcd's v2 API) with --interval 1000 and 100, inside a
     network namespace made for the run (veth pair, TEST-NET addresses, its own etcd with
     --enable-v2=true), until `ip -o monitor address` shows the VIP added or removed.

With `--sampler-load N`, one more `defaults` run whose agent also samples pg_stat_statements
(every 10 s) of a real PostgreSQL 15 holding N distinct statements, busy re-running them.

Every timestamp is CLOCK_MONOTONIC (system-wide, comparable across processes), taken in the
process that saw the event. Run as root:

    /work/main/.venv/bin/python bench/leader_latency.py [--changes 200] [--skip-vip-manager]

Helper roles of this same file (run as child processes): `_watch`, `_scrape`, `_v2put`.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.integration.testlab.postgres import PgInstance

ROOT = Path(__file__).resolve().parents[1]
SCOPE = "demo"
LEADER_KEY = f"/service/{SCOPE}/leader"
NS_ADDR = "198.51.100.1/24"  # TEST-NET-2, on the veth end vip-manager manages
VIP = "198.51.100.10"
VIP_NODE = "vipnode"
NS_ETCD_CLIENT = "http://127.0.0.1:2379"  # inside the namespace: its own loopback, no clash
NS_ETCD_PEER = "http://127.0.0.1:2380"


def now_ns() -> int:
    return time.monotonic_ns()


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def hostport(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[1].rstrip("/").rpartition(":")
    return host, int(port)


# --------------------------------------------------------------------------- helper roles


def tls_context(tls_dir: str) -> ssl.SSLContext:
    """The lab CA's context with its client certificate (`agent.lab.tls.LabCA` file names)."""
    ctx = ssl.create_default_context(cafile=f"{tls_dir}/ca.crt")
    ctx.load_cert_chain(f"{tls_dir}/client.crt", f"{tls_dir}/client.key")
    return ctx


def role_watch(url: str, key: str, tls_dir: str = "") -> None:
    """Bare v3 watch consumer: raw socket, HTTP/1.1 chunked decoding by hand, one JSON per line.
    Prints `ready` once the watch is created, then `<mono_ns> <value>` per PUT on `key`."""
    host, port = hostport(url)
    body = json.dumps({"create_request": {"key": b64(key)}}).encode()
    raw = socket.create_connection((host, port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock = tls_context(tls_dir).wrap_socket(raw, server_hostname=host) if url.startswith("https") else raw
    sock.sendall(
        b"POST /v3/watch HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (host.encode(), port, len(body)) + body
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("watch: EOF in headers")
        buf += chunk
    head, buf = buf.split(b"\r\n\r\n", 1)
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise SystemExit(f"watch: {head!r}")
    chunked = b"chunked" in head.lower()
    data = b""  # de-chunked payload not yet split into lines
    out = sys.stdout
    while True:
        # decode whatever complete chunks are in `buf`
        if chunked:
            while True:
                crlf = buf.find(b"\r\n")
                if crlf < 0:
                    break
                size = int(buf[:crlf].split(b";", 1)[0], 16)
                if len(buf) < crlf + 2 + size + 2:
                    break
                if size == 0:
                    return
                data += buf[crlf + 2 : crlf + 2 + size]
                buf = buf[crlf + 2 + size + 2 :]
        else:
            data, buf = data + buf, b""
        while b"\n" in data:
            line, data = data.split(b"\n", 1)
            if not line.strip():
                continue
            t = now_ns()
            res = json.loads(line).get("result", {})
            if res.get("created"):
                out.write("ready\n")
            for ev in res.get("events", []):
                if ev.get("type", "PUT") == "PUT":
                    value = base64.b64decode(ev["kv"].get("value", "")).decode()
                    out.write(f"{t} {value}\n")
            out.flush()
        chunk = sock.recv(65536)
        if not chunk:
            return
        buf += chunk


LEADER_RE = re.compile(rb'^pgnode_leader\{member="([^"]*)"\} 1\.0$', re.M)
OBSERVED_RE = re.compile(rb"^pgnode_leader_change_observed_timestamp_seconds (\S+)$", re.M)


def role_scrape(url: str, interval: float) -> None:
    """Poll /metrics over one keep-alive connection until stdin closes. Prints
    `L <t_end_ns> <t_start_ns> <member> <observed_wall_s>` when the leader member changes, and at the end
    `D <json>` with the scrape durations (µs)."""
    host, port = hostport(url)
    stop = threading.Event()

    def wait_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_stdin, daemon=True).start()
    conn = http.client.HTTPConnection(host, port, timeout=5)
    durations: list[int] = []
    starts: list[int] = []
    sizes: list[int] = []
    last = b""
    out = sys.stdout
    while not stop.is_set():
        t0 = now_ns()
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        t1 = now_ns()
        durations.append((t1 - t0) // 1000)
        starts.append(t0)
        sizes.append(len(body))
        m = LEADER_RE.search(body)
        member = m.group(1) if m else b""
        if member != last:
            last = member
            o = OBSERVED_RE.search(body)
            out.write(f"L {t1} {t0} {member.decode() or '-'} {o.group(1).decode() if o else 'nan'}\n")
            out.flush()
        if interval > 0:
            time.sleep(interval)
    summary = {"durations_us": durations, "starts_ns": starts, "bytes": sizes[-1] if sizes else 0}
    out.write("D " + json.dumps(summary) + "\n")
    out.flush()


def role_v2put(url: str, key: str) -> None:
    """Inside the namespace: PUT `key` through etcd's v2 API for each value read on stdin; prints
    `ready`, then `<t_start_ns> <t_return_ns>` per put."""
    host, port = hostport(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            c = http.client.HTTPConnection(host, port, timeout=2)
            c.request("GET", "/v2/keys/")
            c.getresponse().read()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    conn = http.client.HTTPConnection(host, port, timeout=5)
    print("ready", flush=True)
    for line in sys.stdin:
        value = line.strip()
        t0 = now_ns()
        conn.request("PUT", f"/v2/keys{key}", body=f"value={value}",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        r.read()
        t1 = now_ns()
        if r.status not in (200, 201):
            raise SystemExit(f"v2 put -> {r.status}")
        print(f"{t0} {t1}", flush=True)


# --------------------------------------------------------------------------- process bookkeeping


@dataclass
class Cleanup:
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    files: list[IO[bytes]] = field(default_factory=list)

    def spawn(
        self, name: str, argv: Sequence[str], log: Path | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        out: Any = subprocess.PIPE
        if log is not None:
            f = log.open("ab")
            self.files.append(f)
            out = f
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", out)
        kw.setdefault("stderr", subprocess.STDOUT if log is not None else None)
        p = subprocess.Popen(list(argv), start_new_session=True, **kw)
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(5)

    def all(self) -> None:
        for _, p in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(p)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        self.namespaces.clear()
        for f in self.files:
            f.close()


class Seen:
    """First monotonic time each consumer saw each value, fed by reader threads."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.at: dict[str, dict[str, int]] = {}
        self.extra: dict[str, dict[str, tuple[int, float]]] = {}  # agent: value -> (scrape start, observed)

    def record(self, consumer: str, value: str, t: int) -> None:
        with self.cond:
            self.at.setdefault(consumer, {}).setdefault(value, t)
            self.cond.notify_all()

    def wait(self, consumers: Sequence[str], value: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(value in self.at.get(c, {}) for c in consumers):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True


def reader(stream: IO[bytes], on_line: Callable[[int, str], None]) -> threading.Thread:
    """Read a pipe with os.read (no userspace buffering delay); stamp each line when it arrives."""

    def run() -> None:
        fd = stream.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            t = now_ns()
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                on_line(t, line.decode(errors="replace"))

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


# --------------------------------------------------------------------------- statistics


def pct(xs: Sequence[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)] if s else float("nan")


@dataclass
class Row:
    name: str
    ms: list[float]
    note: str = ""

    def p(self, q: float) -> float:
        return pct(self.ms, q)


def print_table(rows: list[Row], n_expected: int) -> None:
    w = max(len(r.name) for r in rows) + 2
    print(f"\n{'consumer':<{w}}{'n':>5}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}   (ms)")
    for r in rows:
        miss = f"  missed {n_expected - len(r.ms)}" if n_expected and len(r.ms) < n_expected else ""
        print(f"{r.name:<{w}}{len(r.ms):>5}{r.p(50):>10.2f}{r.p(90):>10.2f}{r.p(99):>10.2f}"
              f"{max(r.ms) if r.ms else float('nan'):>10.2f}   {r.note}{miss}")


# --------------------------------------------------------------------------- the v3 phase


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


def http_json(url: str) -> dict[str, Any]:
    host, port = hostport(url.split("/", 3)[0] + "//" + url.split("/", 3)[2])
    c = http.client.HTTPConnection(host, port, timeout=2)
    try:
        c.request("GET", "/" + url.split("/", 3)[3])
        r = c.getresponse()
        return json.loads(r.read()) if r.status == 200 else {}
    except (OSError, ValueError):
        return {}
    finally:
        c.close()


def wait_for(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)


def proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def cpu_seconds(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


ETCD_VARIANTS = ("defaults", "progress-1s", "tls")


def sampler_reads(agent_url: str) -> int:
    section = http_json(agent_url + "/status").get("sampler") or {}
    return int(section.get("reads", 0)) if isinstance(section, dict) else 0


@contextlib.contextmanager
def sampler_load(cl: Cleanup, run_dir: Path, n: int) -> Iterator[PgInstance]:
    """A PostgreSQL 15 holding N distinct pg_stat_statements entries, kept busy by a process
    re-running them back to back (bench_exporter_side_by_side's setup and load)."""
    import bench_exporter_side_by_side as side

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


def v3_phase(args: argparse.Namespace, cl: Cleanup, run_dir: Path, variant: str = "defaults",
             pg: PgInstance | None = None) -> dict[str, Row]:
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
    me = Path(__file__).resolve()

    # 1. bare watch (own process)
    bare = cl.spawn("bare-watch", [sys.executable, str(me), "_watch", etcd.url, LEADER_KEY, tls_dir],
                    stdout=subprocess.PIPE)
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
    scr = cl.spawn("scraper", [sys.executable, str(me), "_scrape", agent_url, str(args.scrape_interval)],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
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
    rows["_agent"] = Row("_agent", [], json.dumps({
        "pid": agent.pid, "VmRSS_before": rss_before, "VmRSS": st.get("VmRSS", "?"),
        "VmHWM": st.get("VmHWM", "?"),
        "cpu_s": round(cpu1 - cpu0, 2), "elapsed_s": round(elapsed, 2),
        "sampler_reads": sampler_reads(agent_url) - reads0 if pg else None}))
    for name, p in reversed(cl.procs[:]):
        if name in ("scraper", "etcdctl", "bare-watch", "agent"):
            cl.stop(p)
    etcd.stop()
    return rows


# --------------------------------------------------------------------------- the vip-manager phase


def ensure_vip_manager() -> str | None:
    """Path of vip-manager, installing Debian's package if missing; None with a printed reason."""
    path = shutil.which("vip-manager")
    if path is None:
        if os.geteuid() != 0:
            print("vip-manager: skipped (not installed, and not root to apt-get install it)")
            return None
        print("vip-manager: not installed, running apt-get install -y vip-manager", flush=True)
        r = subprocess.run(["apt-get", "install", "-y", "vip-manager"], capture_output=True, text=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, check=False)
        path = shutil.which("vip-manager")
        if r.returncode != 0 or path is None:
            print(f"vip-manager: skipped (apt-get install failed: {r.stderr.strip()[-300:]})")
            return None
    v = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    if "1.0.2" not in v.stdout + v.stderr:
        print(f"vip-manager: note, version is {(v.stdout + v.stderr).strip()!r}, not 1.0.2")
    return path


def vip_phase(args: argparse.Namespace, cl: Cleanup, run_dir: Path, vip_bin: str) -> dict[str, Row]:
    ns = f"pgna-bench-{os.getpid()}"

    def ip(*a: str) -> None:
        subprocess.run(["ip", "-n", ns, *a], check=True, capture_output=True)

    subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    cl.namespaces.append(ns)
    ip("link", "set", "lo", "up")
    ip("link", "add", "vb0", "type", "veth", "peer", "name", "vb1")  # no dummy driver here
    ip("addr", "add", NS_ADDR, "dev", "vb0")
    ip("link", "set", "vb0", "up")
    ip("link", "set", "vb1", "up")
    nsexec = ["ip", "netns", "exec", ns]  # execs in place: the PID is the program's own
    etcd_bin = shutil.which("etcd") or "/usr/bin/etcd"
    cl.spawn("vip-etcd", [*nsexec, etcd_bin, "--name", "vip", "--data-dir", str(run_dir / "vip-etcd"),
                          "--listen-client-urls", NS_ETCD_CLIENT, "--advertise-client-urls", NS_ETCD_CLIENT,
                          "--listen-peer-urls", NS_ETCD_PEER, "--initial-advertise-peer-urls", NS_ETCD_PEER,
                          "--initial-cluster", f"vip={NS_ETCD_PEER}", "--enable-v2=true",
                          "--log-level", "warn"],
             run_dir / "vip-etcd.log")
    me = Path(__file__).resolve()
    putter = cl.spawn("v2put", [*nsexec, sys.executable, str(me), "_v2put", NS_ETCD_CLIENT, LEADER_KEY],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert putter.stdin is not None and putter.stdout is not None
    put_lines: list[str] = []
    put_cond = threading.Condition()

    def on_put(_t: int, line: str) -> None:
        with put_cond:
            put_lines.append(line)
            put_cond.notify_all()

    reader(putter.stdout, on_put)

    def put(value: str) -> tuple[int, int]:
        with put_cond:
            n = len(put_lines)
            putter.stdin.write(f"{value}\n".encode())  # type: ignore[union-attr]
            putter.stdin.flush()  # type: ignore[union-attr]
            if not put_cond.wait_for(lambda: len(put_lines) > n, 25):
                raise TimeoutError("v2 put helper did not answer")
            line = put_lines[-1]
        a, b = line.split()
        return int(a), int(b)

    with put_cond:
        if not put_cond.wait_for(lambda: bool(put_lines), 25):
            raise TimeoutError("etcd (v2) in the namespace did not answer")
        put_lines.clear()
    put("other-init")

    # the VIP as the kernel reports it
    vip_events: list[tuple[int, str]] = []
    vip_cond = threading.Condition()

    def on_mon(t: int, line: str) -> None:
        if f" {VIP}/" in line:
            with vip_cond:
                vip_events.append((t, "del" if line.startswith("Deleted") else "add"))
                vip_cond.notify_all()

    mon = cl.spawn("ip-monitor", ["ip", "-n", ns, "-o", "monitor", "address"], stdout=subprocess.PIPE)
    reader(mon.stdout, on_mon)  # type: ignore[arg-type]
    time.sleep(0.3)

    rows: dict[str, Row] = {}
    n = args.vip_changes if args.vip_changes is not None else args.changes
    for interval in (1000, 100):
        vm = cl.spawn(f"vip-manager-{interval}", [
            *nsexec, vip_bin, "--ip", VIP, "--netmask", "24", "--interface", "vb0",
            "--trigger-key", LEADER_KEY, "--trigger-value", VIP_NODE, "--dcs-type", "etcd",
            "--dcs-endpoints", NS_ETCD_CLIENT, "--interval", str(interval)],
            run_dir / f"vip-manager-{interval}.log")
        # settle: it has read "not ours", no VIP
        time.sleep(2 * interval / 1000 + 0.5)
        if vm.poll() is not None:
            tail = (run_dir / f"vip-manager-{interval}.log").read_text(errors="replace")[-500:]
            print(f"vip-manager --interval {interval}: exited with {vm.returncode}, skipped; "
                  f"log tail:\n{tail}")
            continue
        has_vip = False
        lat: list[float] = []
        print(f"vip-manager --interval {interval}: {n} changes, gaps 50-{50 + interval} ms", flush=True)
        for i in range(n):
            value = f"other-{i}" if has_vip else VIP_NODE
            want = "del" if has_vip else "add"
            with vip_cond:
                k = len(vip_events)
            t0, _t1 = put(value)
            def arrived(k: int = k, want: str = want) -> tuple[int, str] | None:
                return next((e for e in vip_events[k:] if e[1] == want), None)

            with vip_cond:
                ok = vip_cond.wait_for(arrived, 3 * interval / 1000 + 2)
                hit = arrived()
            if ok and hit is not None:
                lat.append((hit[0] - t0) / 1e6)
                has_vip = not has_vip
            else:
                print(f"  change {i}: VIP {want} not seen within {3 * interval / 1000 + 2:g}s", flush=True)
                has_vip = any(e[1] == "add" for e in vip_events[-1:])
            time.sleep(random.uniform(0.05, 0.05 + interval / 1000))
        name = f"vip-manager {interval}ms"
        rows[name] = Row(name, lat, "put start -> VIP add/del in `ip monitor`")
        cl.stop(vm)
        # vip-manager releases the VIP on stop; start the next one from "not ours"
        put("other-reset")
        time.sleep(0.3)
    return rows


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--changes", type=int, default=200, help="leader changes per consumer (default 200)")
    ap.add_argument("--vip-changes", type=int, default=None,
                    help="changes per vip-manager interval (default --changes)")
    ap.add_argument("--skip-vip-manager", action="store_true")
    ap.add_argument("--gap-min", type=float, default=0.05, help="min gap between v3 changes, s (default .05)")
    ap.add_argument("--gap-max", type=float, default=0.25, help="max gap between v3 changes, s (default .25)")
    ap.add_argument("--scrape-interval", type=float, default=0.0,
                    help="sleep between /metrics scrapes, s (default 0: tight loop)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs) even on success")
    ap.add_argument("--sampler-load", type=int, default=0, metavar="N",
                    help="also a `defaults` run whose agent samples pg_stat_statements every 10 s from a\n"
                         "PostgreSQL 15 holding N distinct statements that a load process keeps re-running\n"
                         "(N <= 10000; default 0: no such run)")
    ap.add_argument("--etcd", default="defaults,tls",
                    help="comma-separated etcd variants, one v3 run each: defaults (production settings),\n"
                         "progress-1s (--experimental-watch-progress-notify-interval=1s), tls (client\n"
                         "and peer TLS, client certificates required); default: defaults,tls")
    args = ap.parse_args(argv)
    if not 0 <= args.sampler_load <= 10000:
        ap.error("--sampler-load must be within 0..10000")

    sys.path.insert(0, str(ROOT))
    from agent.lab.rundir import new_run_dir, remove_run_dir

    def on_term(_sig: int, _frm: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    run_dir = new_run_dir("pgna-bench-leader-")
    cl = Cleanup()
    ok = False
    try:
        print(f"run dir {run_dir}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}", flush=True)
        variants = [v.strip() for v in args.etcd.split(",") if v.strip()]
        bad = [v for v in variants if v not in ETCD_VARIANTS]
        if bad or not variants:
            raise SystemExit(f"--etcd: unknown variant(s) {bad}; choose from {', '.join(ETCD_VARIANTS)}")
        runs = {v: v3_phase(args, cl, run_dir, v) for v in variants}
        if args.sampler_load > 0:
            with sampler_load(cl, run_dir, args.sampler_load) as pg:
                runs[f"defaults, sampler N={args.sampler_load} busy"] = v3_phase(args, cl, run_dir, "defaults", pg)
        vip_rows: dict[str, Row] = {}
        if args.skip_vip_manager:
            print("vip-manager: skipped (--skip-vip-manager)")
        elif os.geteuid() != 0:
            print("vip-manager: skipped (needs root for the network namespace)")
        elif (vip_bin := ensure_vip_manager()) is not None:
            try:
                vip_rows = vip_phase(args, cl, run_dir, vip_bin)
            except (subprocess.CalledProcessError, TimeoutError, OSError) as e:
                err = ""
                if isinstance(e, subprocess.CalledProcessError) and e.stderr:
                    err = e.stderr.decode(errors="replace").strip()
                print(f"vip-manager: skipped ({type(e).__name__}: {e} {err})")
        order = ["put returned", "bare watch", "etcdctl watch", "agent state (observed_ts)",
                 "agent scrape start", "agent /metrics", "agent state -> /metrics", "revealing scrape duration",
                 "scrape duration",
                 "scrape <20ms after put", "scrape otherwise"]
        for variant, rows in runs.items():
            agent_info = json.loads(rows.pop("_agent").note)
            print(f"\n=== etcd: {variant} ===")
            table = [rows[k] for k in order if k in rows] + (list(vip_rows.values()) if variant == variants[0] else [])
            print_table(table, 0)
            bare, agent = rows["bare watch"], rows["agent /metrics"]
            print("\nratios")
            held = "HELD" if agent.p(99) <= 2 * bare.p(99) else "NOT HELD"
            print(f"  agent /metrics / bare watch   p50 {agent.p(50) / bare.p(50):6.2f}x   "
                  f"p99 {agent.p(99) / bare.p(99):6.2f}x   max {max(agent.ms) / max(bare.ms):6.2f}x   "
                  f"(guarantee: p99 <= 2x -> {held}; agent /metrics max {max(agent.ms):.1f} ms, aim <= 30)")
            st = rows["agent state (observed_ts)"]
            if st.ms:
                print(f"  agent state / bare watch      p50 {st.p(50) / bare.p(50):6.2f}x   "
                      f"p99 {st.p(99) / bare.p(99):6.2f}x")
            if variant == variants[0]:
                for r in vip_rows.values():
                    if r.ms:
                        print(f"  {r.name} / agent /metrics  p50 {r.p(50) / agent.p(50):6.0f}x   "
                              f"p99 {r.p(99) / agent.p(99):6.0f}x")
            a = agent_info
            print(f"\nagent pid {a['pid']}: VmRSS {a['VmRSS']} (before the changes {a['VmRSS_before']}),"
                  f" VmHWM {a['VmHWM']}, CPU {a['cpu_s']} s over {a['elapsed_s']} s of changes"
                  + (f", {a['sampler_reads']} sampler reads meanwhile" if a.get("sampler_reads") is not None else ""))
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        cl.all()
        if ok and not args.keep:
            remove_run_dir(run_dir)
        else:
            print(f"logs kept in {run_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        role, rest = sys.argv[1], sys.argv[2:]
        with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
            if role == "_watch":
                role_watch(rest[0], rest[1], *rest[2:3])
            elif role == "_scrape":
                role_scrape(rest[0], float(rest[1]))
            elif role == "_v2put":
                role_v2put(rest[0], rest[1])
            else:
                raise SystemExit(f"unknown role {role}")
        sys.exit(0)
    sys.exit(main(sys.argv[1:]))
