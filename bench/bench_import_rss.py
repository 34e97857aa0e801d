"""Where the agent's resident memory goes before any work: its imports, by package, and the idle
real agent process.

    .venv/bin/python bench/bench_import_rss.py [--top 25] [--no-agent]

(1) A fresh interpreter imports what `python -m agent run` loads (`agent.cli`, `agent.app`, and
what the running agent imports later: Hypercorn's server, httpcore) with every module's execution
measured: Python memory (tracemalloc) and, in a second run without it, VmRSS; each module's own
share (its imports' shares excluded), summed by top-level package, with the chain that first loaded the package.
The RSS column is coarse: a new pymalloc arena or heap page, or a shared library's page, counts
for the module that first touched it; the Python column is exact.
(2) The real agent process (`bench_exporter_side_by_side.py`'s config: sampler on
pg_stat_statements, archive off, etcd and Patroni unused ports) on a PostgreSQL 15 with
pg_stat_statements and no bench statements: VmRSS after its first sampler read + 5 s, and its
mappings by kind (/proc/<pid>/smaps).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RUNTIME = ("agent.cli", "agent.app", "hypercorn.asyncio", "httpcore")

PROBE = r"""
import importlib.abc, json, sys, tracemalloc
if sys.argv.pop(1) == "py":  # tracemalloc's own traces would inflate VmRSS: one pass each
    tracemalloc.start(1)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1048576
def py():
    return tracemalloc.get_traced_memory()[0] / 1048576
own, stack, parent, names = {}, [], {}, []
class Loader(importlib.abc.Loader):
    def __init__(self, real): self.real = real
    def __getattr__(self, a): return getattr(self.real, a)  # resource readers (certifi)
    def create_module(self, spec): return self.real.create_module(spec)
    def exec_module(self, mod):
        parent[mod.__name__] = names[-1] if names else None
        names.append(mod.__name__); t0 = (py(), rss()); stack.append([0.0, 0.0])
        try:
            self.real.exec_module(mod)
        finally:
            names.pop(); child = stack.pop(); tot = (py() - t0[0], rss() - t0[1])
            own[mod.__name__] = (tot[0] - child[0], tot[1] - child[1])
            if stack:
                stack[-1][0] += tot[0]; stack[-1][1] += tot[1]
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        for f in sys.meta_path:
            if f is self or not hasattr(f, "find_spec"):
                continue
            spec = f.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = Loader(spec.loader)
                return spec
        return None
sys.meta_path.insert(0, Finder())
base = rss()
for m in sys.argv[1:]:
    __import__(m)
pkgs = {}
for n, (p, r) in own.items():
    top = pkgs.setdefault(n.split(".")[0], {"py": 0.0, "rss": 0.0, "modules": 0, "via": []})
    top["py"] += p; top["rss"] += r; top["modules"] += 1
    if not top["via"]:
        chain, q = [], parent.get(n)
        while q and len(chain) < 4:
            chain.append(q); q = parent.get(q)
        top["via"] = chain
tracemalloc.stop()
print(json.dumps({"base": base, "rss": rss(), "modules": len(sys.modules), "packages": pkgs}))
"""


def probe(mode: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode, *RUNTIME], capture_output=True, text=True, check=True)
    got: dict[str, Any] = json.loads(out.stdout)
    return got


def imports(top: int) -> None:
    got, by_rss = probe("py"), probe("rss")
    for name, p in got["packages"].items():
        p["rss"] = by_rss["packages"].get(name, {}).get("rss", 0.0)
    print(f"imports of {' '.join(RUNTIME)}: VmRSS {by_rss['base']:.1f} -> {by_rss['rss']:.1f} MiB, "
          f"{by_rss['modules']} modules")
    print(f"{'package':22} {'modules':>7} {'py MiB':>7} {'RSS MiB':>8}  first loaded via")
    rows = sorted(got["packages"].items(), key=lambda kv: -kv[1]["py"])
    for name, p in rows[:top]:
        print(f"{name:22} {p['modules']:7d} {p['py']:7.2f} {p['rss']:8.2f}  {' <- '.join(p['via'])}")


def smaps(pid: int) -> dict[str, float]:
    agg: collections.Counter[str] = collections.Counter()
    kind = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            p = line.split()
            if "-" in p[0] and not p[0].endswith(":"):
                path = p[5] if len(p) > 5 else "[anon]"
                kind = "psycopg_binary libs" if "psycopg_binary" in path else ".so" if ".so" in path else path
            elif p[0] == "Rss:":
                agg[kind] += int(p[1])
    return {k: round(v / 1024, 1) for k, v in agg.most_common(5)}


def idle_agent() -> None:
    sys.path.insert(0, str(HERE))
    import bench_exporter_side_by_side as side

    from agent.lab.ports import free_port
    from agent.lab.procs import Proc
    from agent.lab.rundir import new_run_dir, remove_run_dir

    run = new_run_dir("pgna-bench-import-rss-")
    pg = side.new_pg(run, 1)
    procs: list[Proc] = []
    try:
        pg.start()
        with pg.connect() as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        port = free_port()
        cfg = side.agent_config(run, pg, port)
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        agent = Proc("agent", [sys.executable, "-m", "agent", "-c", str(cfg), "run"], run / "agent.log",
                     env=env, cwd=side.ROOT, accessible=lambda: side.http_get(port, "/health")[0] in (200, 503))
        procs.append(agent)
        agent.start(30)
        assert agent.pid is not None
        side.wait_reads(port, 1, 60, agent.log_path)
        time.sleep(5)
        for _ in range(5):
            side.http_get(port, "/metrics")
        st = side.proc_status(agent.pid)
        print(f"idle agent process: VmRSS {st['VmRSS']:.1f} MiB (HWM {st['VmHWM']:.1f}); by mapping, MiB: "
              f"{smaps(agent.pid)}")
    finally:
        for p in reversed(procs):
            p.stop()
        pg.stop()
        remove_run_dir(run)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=25, help="packages to list")
    ap.add_argument("--no-agent", action="store_true", help="(1) only")
    args = ap.parse_args()
    imports(args.top)
    if not args.no_agent:
        idle_agent()
    return 0


if __name__ == "__main__":
    sys.exit(main())
