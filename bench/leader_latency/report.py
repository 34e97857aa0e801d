"""The tables and ratios a run prints."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.leader_latency.v3 import V3Run


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


ORDER = ("put returned", "bare watch", "etcdctl watch", "agent state (observed_ts)", "agent scrape start",
         "agent /metrics", "agent state -> /metrics", "revealing scrape duration", "scrape duration",
         "scrape <20ms after put", "scrape otherwise")


def print_run(variant: str, run: V3Run, vip_rows: dict[str, Row]) -> None:
    """One v3 run's table (with the vip-manager rows beside the first), the ratios to the bare
    watch (the guarantee: agent /metrics p99 <= 2x), and what the agent process spent."""
    rows = run.rows
    print(f"\n=== etcd: {variant} ===")
    print_table([rows[k] for k in ORDER if k in rows] + list(vip_rows.values()), 0)
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
    for r in vip_rows.values():
        if r.ms:
            print(f"  {r.name} / agent /metrics  p50 {r.p(50) / agent.p(50):6.0f}x   "
                  f"p99 {r.p(99) / agent.p(99):6.0f}x")
    a = run.agent
    print(f"\nagent pid {a.pid}: VmRSS {a.rss} (before the changes {a.rss_before}),"
          f" VmHWM {a.hwm}, CPU {a.cpu_seconds} s over {a.elapsed_seconds} s of changes"
          + (f", {a.sampler_reads} sampler reads meanwhile" if a.sampler_reads is not None else ""))
