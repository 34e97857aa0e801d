"""pg-node-agent vs postgres_exporter 0.11.1 on the same PostgreSQL 15, in one run.

One throwaway PostgreSQL 15 (tests/integration/testlab/postgres.py, pg_stat_statements preloaded, its `max`
raised above N) gets N distinct statements (distinct by shape: `SELECT c<a> FROM t WHERE c<b> = $1`
over a 100-column table, so each has its own queryid). Then, one after the other:

(a) the real agent process (`python -m agent -c CFG run`, `[sampler] source = "pg_stat_statements"`,
    etcd and Patroni pointing at unused ports: the agent keeps serving through both outages).
    Its first read primes; the N statements run once more, and once a read after that has
    ingested the deltas, `/metrics` is scraped over one persistent HTTP connection;
(b) Debian's `prometheus-postgres-exporter` 0.11.1 run directly (not the service) over the
    socket, with `--extend.query-path` holding a PG15-correct pg_stat_statements section
    (every row exported, 19 series per row, like the anchors), scraped the same way.

(c) the sampler component in this process's event loop for `--lag-minutes`, while another
    process re-runs the N statements: the loop's stalls during sampler steps (a probe task, and
    the CPU time of each loop callback) and the bytes written to the state file per minute.

Prints p50/p99 scrape time, bytes, series, VmRSS/VmHWM of each process and the exporter/agent
ratios, then (c). Every process is stopped by PID at the end, also on error.

    .venv/bin/python bench/bench_exporter_side_by_side.py [--n 10000] [--scrapes 30] [--lag-minutes 5] [--lag-only]
        [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import math
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg import sql

from agent.lab.ports import free_port
from agent.lab.procs import Proc, wait_until
from agent.lab.rundir import new_run_dir, remove_run_dir
from bench.loopprobe import LoopProbe, Window
from tests.integration.testlab.postgres import PgInstance

ROOT = Path(__file__).resolve().parent.parent
EXPORTER = Path("/usr/bin/prometheus-postgres-exporter")
COLUMNS = 100  # N distinct shapes from (select column, where column) pairs: up to 10,000
SAMPLER_INTERVAL = 2.0

# Debian's example queries.yaml has pre-PG13 names (total_time ...); these are PG15's.
# 3 labels + 19 values per row, every row of the view exported (as in the anchors).
EXPORTER_QUERIES = """\
pg_stat_statements:
  query: >-
    SELECT r.rolname, d.datname, s.queryid, s.calls,
           s.total_exec_time / 1000 AS total_time_seconds, s.min_exec_time / 1000 AS min_time_seconds,
           s.max_exec_time / 1000 AS max_time_seconds, s.mean_exec_time / 1000 AS mean_time_seconds,
           s.stddev_exec_time / 1000 AS stddev_time_seconds, s.rows,
           s.shared_blks_hit, s.shared_blks_read, s.shared_blks_dirtied, s.shared_blks_written,
           s.local_blks_hit, s.local_blks_read, s.local_blks_dirtied, s.local_blks_written,
           s.temp_blks_read, s.temp_blks_written,
           s.blk_read_time / 1000 AS blk_read_time_seconds, s.blk_write_time / 1000 AS blk_write_time_seconds
    FROM pg_stat_statements s JOIN pg_roles r ON s.userid = r.oid JOIN pg_database d ON s.dbid = d.oid
  master: true
  metrics:
{metrics}
"""
_LABELS = ("rolname", "datname", "queryid")
_VALUES = (("calls", "COUNTER"), ("total_time_seconds", "COUNTER"), ("min_time_seconds", "GAUGE"),
           ("max_time_seconds", "GAUGE"), ("mean_time_seconds", "GAUGE"), ("stddev_time_seconds", "GAUGE"),
           ("rows", "COUNTER"), ("shared_blks_hit", "COUNTER"), ("shared_blks_read", "COUNTER"),
           ("shared_blks_dirtied", "COUNTER"), ("shared_blks_written", "COUNTER"),
           ("local_blks_hit", "COUNTER"), ("local_blks_read", "COUNTER"), ("local_blks_dirtied", "COUNTER"),
           ("local_blks_written", "COUNTER"), ("temp_blks_read", "COUNTER"), ("temp_blks_written", "COUNTER"),
           ("blk_read_time_seconds", "COUNTER"), ("blk_write_time_seconds", "COUNTER"))


def exporter_queries() -> str:
    lines = [f'    - {n}:\n        usage: "LABEL"\n        description: "{n}"' for n in _LABELS]
    lines += [f'    - {n}:\n        usage: "{u}"\n        description: "{n}"' for n, u in _VALUES]
    return EXPORTER_QUERIES.format(metrics="\n".join(lines))


@dataclass
class Result:
    name: str
    p50_ms: float
    p99_ms: float
    max_ms: float
    bytes: int
    series: int
    rss_mib: float
    hwm_mib: float


def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of `pid`, in MiB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def percentile(xs: list[float], p: float) -> float:
    """Nearest rank."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def scrape(name: str, port: int, path: str, pid: int, n: int) -> Result:
    """`n` GETs over one persistent connection (after one warm-up GET), timed to the last byte."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        times: list[float] = []
        body = b""
        for i in range(n + 1):
            t = time.perf_counter()
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            dt = time.perf_counter() - t
            if r.status != 200:
                raise RuntimeError(f"{name} {path}: HTTP {r.status}")
            if i:
                times.append(dt)
    finally:
        conn.close()
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    st = proc_status(pid)
    return Result(name, statistics.median(times) * 1000, percentile(times, 99) * 1000, max(times) * 1000,
                  len(body), series, st["VmRSS"], st["VmHWM"])


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def new_pg(run: Path, n: int) -> PgInstance:
    """A PostgreSQL 15 whose pg_stat_statements keeps N entries plus the agent's/exporter's/setup's
    own, never evicted (not started)."""
    return PgInstance(run, settings={"pg_stat_statements.max": max(5000, 2 * n + 1000), "max_connections": 50})


def prepare(pg: PgInstance, n: int) -> None:
    """The extension, the 100-column table, and one call of each of the N distinct statements."""
    cols = sql.SQL(", ").join(sql.SQL("{} int").format(sql.Identifier(f"c{i}")) for i in range(COLUMNS))
    with pg.connect() as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        c.execute(sql.SQL("CREATE TABLE bench_t ({})").format(cols))
        got_max = c.execute("SELECT current_setting('pg_stat_statements.max')").fetchone()
    t = time.perf_counter()
    fill(pg, n)
    with pg.connect() as c:
        row = c.execute("SELECT count(*), (SELECT dealloc FROM pg_stat_statements_info) "
                        "FROM pg_stat_statements").fetchone()
    assert row is not None and got_max is not None
    print(f"PostgreSQL {pg.version} {pg.socket_dir} port {pg.port}: pg_stat_statements.max={got_max[0]}, "
          f"{row[0]} entries after filling N={n} in {time.perf_counter() - t:.1f}s, dealloc={row[1]}", flush=True)


def fill(pg: PgInstance, n: int) -> None:
    """One call of each of the N distinct statements, in one session (pipelined)."""
    with pg.connect() as c, c.pipeline():
        for i in range(n):
            a, b = i % COLUMNS, i // COLUMNS
            c.execute(sql.SQL("SELECT {} FROM bench_t WHERE {} = %s").format(
                sql.Identifier(f"c{a}"), sql.Identifier(f"c{b}")), (i,))


def agent_config(run: Path, pg: PgInstance, http_port: int) -> Path:
    cfg = run / "agent.toml"
    state = run / "agent-state"
    state.mkdir(exist_ok=True)
    cfg.write_text(
        f'[node]\nname = "bench"\nstate_dir = {json.dumps(str(state))}\n'
        f'[etcd]\nscope = "bench"\nendpoints = ["http://127.0.0.1:{free_port()}"]\n'
        f'[patroni]\nurl = "http://127.0.0.1:{free_port()}"\n'
        f'[postgres]\nhost = {json.dumps(str(pg.socket_dir))}\nport = {pg.port}\nuser = "postgres"\n'
        f'dbname = "postgres"\n'
        f'[sampler]\nsource = "pg_stat_statements"\ninterval = "{SAMPLER_INTERVAL:g}s"\n'
        f"[archive]\nenabled = false\n"
        f'[http]\nlisten = "127.0.0.1:{http_port}"\n[logging]\nformat = "json"\n'
    )
    return cfg


def sampler_status(port: int) -> dict[str, Any]:
    code, body = http_get(port, "/status")
    if code != 200:
        return {}
    section = json.loads(body).get("sampler") or {}
    return section if isinstance(section, dict) else {}


def wait_reads(port: int, at_least: int, timeout: float, log: Path) -> dict[str, Any]:
    def tail() -> str:
        return log.read_text(errors="replace")[-2000:] if log.exists() else ""

    got = wait_until(lambda: (s := sampler_status(port)) and s.get("reads", 0) >= at_least and s,
                     timeout, f"agent sampler reads >= {at_least}", interval=0.2, detail=tail)
    assert isinstance(got, dict)
    return got


def run_agent(run: Path, pg: PgInstance, n: int, scrapes: int, procs: list[Proc],
              rounds: int = 0) -> tuple[Result, dict[str, Any]]:
    port = free_port()
    cfg = agent_config(run, pg, port)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    agent = Proc("agent", [sys.executable, "-m", "agent", "-c", str(cfg), "run"], run / "agent.log",
                 env=env, cwd=ROOT, accessible=lambda: http_get(port, "/health")[0] in (200, 503))
    procs.append(agent)
    agent.start(30)
    assert agent.pid is not None
    wait_reads(port, 1, 60, agent.log_path)  # the first read primes on the N entries
    primed = proc_status(agent.pid)
    fill(pg, n)  # one more call of each: N deltas for the next read
    after_fill = sampler_status(port).get("reads", 0)
    st = wait_reads(port, after_fill + 2, 60, agent.log_path)  # a read that began after the fill
    ingested = proc_status(agent.pid)
    res = scrape("pg-node-agent", port, "/metrics", agent.pid, scrapes)
    for _ in range(rounds):  # the steady state: memory a read and a scrape leave behind
        fill(pg, n)
        after_fill = sampler_status(port).get("reads", 0)
        wait_reads(port, after_fill + 2, 60, agent.log_path)
        scrape("pg-node-agent", port, "/metrics", agent.pid, 3)
    return res, {"status": st, "rss_primed": primed, "rss_ingested": ingested, "rss_rounds": proc_status(agent.pid),
                 "written": written_bytes(port), "state_size": (run / "agent-state" / "sampler.json").stat().st_size}


def written_bytes(port: int) -> float:
    _, body = http_get(port, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("pgnode_sampler_state_written_bytes_total "):
            return float(line.split()[1])
    return float("nan")


def run_exporter(run: Path, pg: PgInstance, scrapes: int, procs: list[Proc]) -> Result:
    qpath = run / "queries-pg15.yaml"
    qpath.write_text(exporter_queries())
    port = free_port()
    env = {"PATH": "/usr/bin:/bin",
           "DATA_SOURCE_NAME": f"host={pg.socket_dir} port={pg.port} user=postgres dbname=postgres sslmode=disable"}
    exp = Proc("postgres_exporter",
               [str(EXPORTER), f"--web.listen-address=127.0.0.1:{port}", f"--extend.query-path={qpath}",
                "--log.level=warn"],
               run / "exporter.log", env=env, accessible=lambda: http_get(port, "/")[0] == 200)
    procs.append(exp)
    exp.start(30)
    assert exp.pid is not None
    return scrape("postgres_exporter 0.11.1", port, "/metrics", exp.pid, scrapes)


LONG_CALLBACK_MS = 2.0  # a step's callbacks listed above this CPU time


@dataclass
class LoopLag:
    steps: int
    step_max_ms: list[float]  # the longest loop stall seen during each sampler step
    step_net_ms: list[float]  # the same less the time the loop's thread waited for a CPU
    step_saved: list[bool]  # whether the step wrote the state file
    step_cpu_ms: list[float]  # the longest CPU time of one event-loop callback during each step
    worst_callback: str
    idle_max_ms: float  # the longest stall outside steps (the probe's own noise floor)
    idle_net_ms: float
    state_bytes: int
    minutes: float


async def _loop_lag(pg: PgInstance, n: int, minutes: float, state_dir: Path, period: float,
                    name_tasks: bool, interval: float) -> LoopLag:
    """The sampler's real component in this process's event loop, with a probe task
    (bench/loopprobe.py) recording the loop's stalls, split by whether a sampler step was
    running. Another process re-runs the N statements back to back, so every read has up to N
    deltas (the worst case; `period` > 0: one pass every `period` seconds, which at the sampler's
    interval still gives every read N deltas, with less CPU taken from the agent). Bytes written
    to the state file come from the sampler's counter."""
    import anyio
    from prometheus_client import CollectorRegistry

    from agent.core import config as config_mod
    from agent.core.context import Context
    from agent.sampler.component import Sampler, components

    cfg = config_mod.parse({
        "node": {"name": "bench", "state_dir": str(state_dir)}, "etcd": {"scope": "bench"},
        "postgres": {"host": str(pg.socket_dir), "port": pg.port, "user": "postgres", "dbname": "postgres"},
        "sampler": {"source": "pg_stat_statements", "interval": f"{interval:g}s"}})
    ctx = Context.create(cfg, CollectorRegistry())
    (comp,) = components(ctx)
    sampler: Sampler = comp.run.__self__  # type: ignore[attr-defined]
    in_step = False
    primed = anyio.Event()
    probe = LoopProbe()
    steps: list[Window] = []
    step_saved: list[bool] = []
    real_step = sampler.step

    # The probe's wall-clock lag includes waiting for a CPU on a busy box; the CPU time of each
    # loop callback (thread_time around asyncio's Handle._run) is the agent's own share of it.
    step_cpu: list[float] = []
    worst: list[Any] = [0.0, ""]
    long_cbs: list[tuple[float, str]] = []
    real_run = asyncio.events.Handle._run

    def timed_run(handle: asyncio.events.Handle) -> None:
        t = time.thread_time()
        real_run(handle)
        dt = (time.thread_time() - t) * 1000
        if in_step and step_cpu:
            step_cpu[-1] = max(step_cpu[-1], dt)
            if dt > worst[0] or dt > LONG_CALLBACK_MS:
                at = where(handle)
                if dt > worst[0]:
                    worst[:] = [dt, at]
                if dt > LONG_CALLBACK_MS:
                    long_cbs.append((dt, at))

    def where(handle: asyncio.events.Handle) -> str:
        """A task's callback as its coroutine and where it yielded after it. A wakeup (a future
        done) names its task always; a plain step (after sleep(0)) only with --name-tasks."""
        task = getattr(handle._callback, "__self__", None)  # a task's bound wakeup, or a _PyTask's step
        if not hasattr(task, "get_coro"):
            return repr(handle)[:300]
        frames, coro = [], task.get_coro()
        while coro is not None and getattr(coro, "cr_frame", None) is not None:  # down the await chain
            frames.append(f"{coro.cr_frame.f_code.co_qualname}:{coro.cr_frame.f_lineno}")
            coro = getattr(coro, "cr_await", None)
        return f"task {task.get_coro().__qualname__}, yielded at " + " -> ".join(frames[-5:])

    if name_tasks:  # the pure-Python Task, whose step callbacks are bound methods too (slower: diagnosis only)
        asyncio.get_running_loop().set_task_factory(
            lambda loop, coro, **kw: asyncio.tasks._PyTask(coro, loop=loop, **kw))  # type: ignore[attr-defined]

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign,assignment]
    loop_ident = threading.get_ident()
    gc_loop: list[tuple[int, float]] = []  # (generation, ms) of collections run by the loop's thread
    gc_t = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != loop_ident:
            return
        if phase == "start":
            gc_t[0] = time.thread_time()
        elif in_step:
            gc_loop.append((info["generation"], (time.thread_time() - gc_t[0]) * 1000))

    gc.callbacks.append(on_gc)

    async def timed_step(c: Context, conn: Any) -> float:
        nonlocal in_step
        in_step = True
        steps.append(probe.open())
        step_cpu.append(0.0)
        written = sampler.health.state_bytes_written
        try:
            return await real_step(c, conn)
        finally:
            in_step = False
            probe.close()
            step_saved.append(sampler.health.state_bytes_written != written)
            if sampler.health.reads >= 1:
                primed.set()

    sampler.step = timed_step  # type: ignore[method-assign,assignment]

    ctx.liveness.register("sampler")
    # the load runs in a process of its own: in a thread it would hold this process's GIL
    load = Proc("load", [sys.executable, __file__, "--fill-forever", str(pg.socket_dir), str(pg.port), str(n),
                         str(period)],
                state_dir.parent / "load.log", env=dict(os.environ), cwd=ROOT)
    async with anyio.create_task_group() as tg:
        tg.start_soon(probe.run)
        await tg.start(comp.run, ctx)  # type: ignore[arg-type]
        await primed.wait()  # the priming read and its write are not the steady state
        steps.clear()
        step_saved.clear()
        step_cpu.clear()
        worst[:] = [0.0, ""]
        long_cbs.clear()
        probe.outside = Window()
        b0, t0 = getattr(sampler.health, "state_bytes_written", -1), time.monotonic()
        load.start(10)
        try:
            await anyio.sleep(minutes * 60)
        finally:
            load.stop()
        b1, t1 = getattr(sampler.health, "state_bytes_written", -1), time.monotonic()
        tg.cancel_scope.cancel()
    asyncio.events.Handle._run = real_run  # type: ignore[method-assign]
    gc.callbacks.remove(on_gc)
    by_gen = {g: max((ms for gg, ms in gc_loop if gg == g), default=0.0) for g in (0, 1, 2)}
    print(f"garbage collections in the loop's thread during steps: {len(gc_loop)}, longest (CPU) by generation "
          + ", ".join(f"gen{g} {ms:.2f} ms" for g, ms in by_gen.items()))
    print(f"loop callbacks over {LONG_CALLBACK_MS:g} ms of CPU during steps: {len(long_cbs)}"
          + "".join(f"\n  {ms:.2f} ms {at}" for ms, at in sorted(long_cbs, reverse=True)[:8]))
    saved = [w.net_ms for w, wrote in zip(steps, step_saved, strict=False) if wrote]
    print(f"steps that wrote the state file: {len(saved)}, their stall less waiting for a CPU max "
          f"{max(saved, default=0):.2f} ms; other steps max "
          f"{max((w.net_ms for w, wrote in zip(steps, step_saved, strict=False) if not wrote), default=0):.2f} ms")
    return LoopLag(len(steps), [w.wall_ms for w in steps], [w.net_ms for w in steps], step_saved, step_cpu,
                   str(worst[1]), probe.outside.wall_ms, probe.outside.net_ms, b1 - b0, (t1 - t0) / 60)


def run_loop_lag(run: Path, pg: PgInstance, n: int, minutes: float, period: float,
                 switch_interval: float | None, name_tasks: bool = False,
                 interval: float = SAMPLER_INTERVAL) -> LoopLag:
    import anyio

    from agent.app import tune_runtime

    tune_runtime()  # as agent.app.run does before its event loop starts
    if switch_interval is not None:
        sys.setswitchinterval(switch_interval)
    print(f"sampler interval {interval:g} s; GIL switch interval {sys.getswitchinterval() * 1000:g} ms; load: "
          + (f"one pass every {period:g} s" if period > 0 else "back to back")
          + "; load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    try:
        return anyio.run(_loop_lag, pg, n, minutes, run / "inproc-state", period, name_tasks, interval)
    finally:
        print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


def table(rows: list[Result]) -> str:
    hdr = f"{'':26} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'bytes':>11} {'series':>8} {'VmRSS MiB':>10} {'VmHWM MiB':>10}"
    out = [hdr]
    for r in rows:
        out.append(f"{r.name:26} {r.p50_ms:9.2f} {r.p99_ms:9.2f} {r.max_ms:9.2f} {r.bytes:11d} {r.series:8d} "
                   f"{r.rss_mib:10.1f} {r.hwm_mib:10.1f}")
    return "\n".join(out)


def fill_forever(socket_dir: str, port: int, n: int, period: float) -> None:
    """The load of the loop-lag phase: the N statements again and again (a pass every `period`
    seconds when > 0, else back to back), until stopped."""
    import psycopg

    with psycopg.connect(host=socket_dir, port=port, user="postgres", dbname="postgres", autocommit=True) as c:
        stmts = [sql.SQL("SELECT {} FROM bench_t WHERE {} = %s").format(
            sql.Identifier(f"c{i % COLUMNS}"), sql.Identifier(f"c{i // COLUMNS}")) for i in range(n)]
        while True:
            t = time.monotonic()
            with c.pipeline():
                for i, q in enumerate(stmts):
                    c.execute(q, (i,))
            if period > 0:
                time.sleep(max(0.0, t + period - time.monotonic()))


def side_by_side(run: Path, pg: PgInstance, args: argparse.Namespace, procs: list[Proc]) -> bool:
    """(a) the agent process, (b) postgres_exporter, on the same N entries; whether the agent met its targets."""
    have_exporter = not args.no_exporter and (
        EXPORTER.exists() or shutil.which("prometheus-postgres-exporter") is not None)
    agent_res, extra = run_agent(run, pg, args.n, args.scrapes, procs, args.rounds)
    st = extra["status"]
    print(f"agent sampler: reads={st.get('reads')} series={st.get('series')} "
          f"queryids_kept={st.get('queryids_kept')}; RSS after priming read "
          f"{extra['rss_primed']['VmRSS']:.1f} MiB (HWM {extra['rss_primed']['VmHWM']:.1f}), "
          f"after ingesting N deltas {extra['rss_ingested']['VmRSS']:.1f} MiB "
          f"(HWM {extra['rss_ingested']['VmHWM']:.1f})")
    if args.rounds:
        print(f"agent after {args.rounds} more rounds (the N statements again, two reads, 3 scrapes): "
              f"VmRSS {extra['rss_rounds']['VmRSS']:.1f} MiB (HWM {extra['rss_rounds']['VmHWM']:.1f})")
    print(f"agent process: state file {extra['state_size'] / 1000:.1f} KB, "
          f"{extra['written'] / 1000:.1f} KB written in all (pgnode_sampler_state_written_bytes_total)")
    procs[-1].stop()  # the agent is not running while the exporter is measured
    with pg.connect() as c:
        row = c.execute("SELECT count(*) FROM pg_stat_statements").fetchone()
    assert row is not None
    print(f"pg_stat_statements rows seen by the exporter: {row[0]}")
    results = [agent_res]
    if have_exporter:
        results.append(run_exporter(run, pg, args.scrapes, procs))
    elif not args.no_exporter:
        print(f"{EXPORTER} is not installed (apt-get install -y --no-install-recommends "
              "prometheus-postgres-exporter): exporter side skipped")
    print()
    print(f"N={args.n}, {args.scrapes} scrapes each over one persistent HTTP connection")
    print(table(results))
    if len(results) == 2:
        a, e = results
        ratio: Callable[[float, float], str] = lambda x, y: f"{x / y:.0f}x" if y else "n/a"  # noqa: E731
        print(f"exporter/agent: scrape p50 {ratio(e.p50_ms, a.p50_ms)}, p99 {ratio(e.p99_ms, a.p99_ms)}, "
              f"bytes {ratio(e.bytes, a.bytes)}, series {ratio(e.series, a.series)}, "
              f"VmRSS {e.rss_mib / a.rss_mib:.1f}x, VmHWM {e.hwm_mib / a.hwm_mib:.1f}x")
    ok = agent_res.p99_ms <= 10 and agent_res.rss_mib * 1.048576 <= 80  # MiB -> MB
    print(f"agent target (scrape <= 10 ms, RSS <= 80 MB): {'met' if ok else 'MISSED'} "
          f"(p99 {agent_res.p99_ms:.2f} ms, VmRSS {agent_res.rss_mib * 1.048576:.1f} MB, "
          f"peak VmHWM {agent_res.hwm_mib * 1.048576:.1f} MB)")
    return ok


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--fill-forever":
        fill_forever(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="distinct statements (at most 10000)")
    ap.add_argument("--scrapes", type=int, default=30)
    ap.add_argument("--keep", action="store_true", help="keep the run directory")
    ap.add_argument("--lag-minutes", type=float, default=5.0,
                    help="minutes of the in-process loop-lag and write-rate phase (0: skip it)")
    ap.add_argument("--lag-only", action="store_true", help="only the loop-lag phase")
    ap.add_argument("--no-exporter", action="store_true", help="(a) without (b): the agent's figures only")
    ap.add_argument("--rounds", type=int, default=0,
                    help="(a) then runs the N statements, two reads and 3 scrapes this many more times and "
                         "prints the agent's VmRSS (its steady state)")
    ap.add_argument("--sampler-interval", type=float, default=SAMPLER_INTERVAL,
                    help="loop-lag phase: the sampler's interval (default 2 s, the worst case; the agent's is 10 s)")
    ap.add_argument("--load-period", type=float, default=None,
                    help="loop-lag phase: seconds between passes of the N statements (0: back to back; default the "
                         "sampler interval); "
                         "at the sampler's interval every read still has N deltas")
    ap.add_argument("--switch-interval", type=float, default=None,
                    help="loop-lag phase: sys.setswitchinterval() instead of the agent's (seconds)")
    ap.add_argument("--name-tasks", action="store_true",
                    help="loop-lag phase: name plain task steps too, not only wakeups (pure-Python tasks: "
                         "slower, for diagnosis)")
    args = ap.parse_args()
    if not 1 <= args.n <= COLUMNS * COLUMNS:
        ap.error(f"--n must be within 1..{COLUMNS * COLUMNS}")
    run = new_run_dir("pgna-bench-side-")
    pg = new_pg(run, args.n)
    procs: list[Proc] = []
    ok = False
    try:
        pg.start()
        prepare(pg, args.n)
        ok = args.lag_only or side_by_side(run, pg, args, procs)
        if args.lag_minutes > 0:
            period = args.sampler_interval if args.load_period is None else args.load_period
            lag = run_loop_lag(run, pg, args.n, args.lag_minutes, period, args.switch_interval,
                               args.name_tasks, args.sampler_interval)
            per_min = lag.state_bytes / 1000 / lag.minutes
            worst = max(lag.step_max_ms, default=0.0)
            print(f"\nin-process sampler, N={args.n} statements re-run, {lag.minutes:.1f} min, "
                  f"{lag.steps} steps: loop stall during a step p50 {statistics.median(lag.step_max_ms or [0]):.2f} ms, "
                  f"p99 {percentile(lag.step_max_ms or [0], 99):.2f} ms, max {worst:.2f} ms "
                  f"(outside steps max {lag.idle_max_ms:.2f} ms); less waiting for a CPU: p50 "
                  f"{statistics.median(lag.step_net_ms or [0]):.2f} ms, p99 {percentile(lag.step_net_ms or [0], 99):.2f} ms, "
                  f"max {max(lag.step_net_ms, default=0):.2f} ms (outside steps max {lag.idle_net_ms:.2f} ms); longest loop callback (CPU) during a step "
                  f"p50 {statistics.median(lag.step_cpu_ms or [0]):.2f} ms, p99 {percentile(lag.step_cpu_ms or [0], 99):.2f} ms, "
                  f"max {max(lag.step_cpu_ms, default=0):.2f} ms; "
                  f"state file {per_min:.1f} KB/min ({lag.state_bytes} bytes)\nlongest callback: {lag.worst_callback}")
            # The target is judged on the stall the agent causes: the wall clock less the time
            # the loop's thread waited for a CPU. That wait is the box's (a loop with nothing to
            # do shows it too: "outside steps"); on two saturated CPUs it is tens of ms for any
            # process. Both are printed; the wall clock is reported, not judged.
            net_ok = max(lag.step_net_ms, default=0) <= 5
            own_ok = max(lag.step_cpu_ms, default=0) <= 5
            print(f"sampler target, stall during a step caused by the agent (less run-queue wait) <= 5 ms: "
                  f"{'met' if net_ok else 'MISSED'}; longest loop callback (CPU) <= 5 ms: "
                  f"{'met' if own_ok else 'MISSED'}; <= 100 KB/min: {'met' if per_min <= 100 else 'MISSED'}; "
                  f"wall clock (reported, not judged): max {worst:.2f} ms during steps, "
                  f"{lag.idle_max_ms:.2f} ms outside them")
            lag_ok = net_ok and own_ok and per_min <= 100
            ok = ok and lag_ok
    finally:
        for p in reversed(procs):
            p.stop()
        pg.stop()
        if ok and not args.keep:
            remove_run_dir(run)
        else:
            print(f"run directory kept: {run}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
