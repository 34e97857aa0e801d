"""Options, the order of the runs, and cleanup on every exit (SIGTERM and ^C included)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from typing import Any

import bench.leader_latency as package
from bench.leader_latency.procs import Cleanup
from bench.leader_latency.report import Row, print_run
from bench.leader_latency.v3 import ETCD_VARIANTS, sampler_load, v3_phase
from bench.leader_latency.vip import ensure_vip_manager, vip_phase


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="leader_latency", description=(package.__doc__ or "").split("\n\n")[0],
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
        for variant, run in runs.items():
            print_run(variant, run, vip_rows if variant == variants[0] else {})
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
