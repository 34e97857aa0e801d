"""pg-node-agent: run | check-config | status | version | demo | repack plan | archive check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent import __version__
from agent.core.config import (
    DEFAULT_PATH,
    EX_CONFIG,
    Config,
    ConfigError,
    example_toml,
    load,
    reference_markdown,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pg-node-agent", description="The agent beside Patroni on each node.")
    p.add_argument("-c", "--config", type=Path, default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the agent (systemd Type=notify)")
    cc = sub.add_parser("check-config", help="validate the config file; exit 78 naming the bad key")
    cc.add_argument("--reference", action="store_true", help="print the configuration reference (Markdown)")
    cc.add_argument("--example", action="store_true", help="print a full example config (TOML)")
    st = sub.add_parser("status", help="this node's agent in a few lines, or --cluster: every member's agent")
    st.add_argument("--url", help="agent base URL (default: http.listen of the config)")
    st.add_argument("--json", action="store_true", help="raw JSON")
    st.add_argument("--cluster", action="store_true",
                    help="ask every member's agent, found through the local Patroni's member list; exit 1 on a problem")
    st.add_argument("--auth-file", type=Path, help="file with user:password for agents with http.basic_auth_users")
    st.add_argument("--auth-host", action="append", default=[], metavar="HOST",
                    help="with --cluster: also send the credentials (https only) to an agent at HOST although it "
                         "is not the member's own address in Patroni's member list (repeatable)")
    sub.add_parser("version", help="print the version")
    demo = sub.add_parser("demo", help="start a local demo cluster (etcd, 3 Patroni nodes, an agent each)")
    demo.add_argument("--nodes", type=int, default=3)
    demo.add_argument("--no-switchover", action="store_true")
    demo.add_argument("--keep", action="store_true", help="keep the run directory")
    demo.add_argument("--duration", type=float, default=0, help="stop this long after the lab is up (0: Ctrl-C)")
    rp = sub.add_parser("repack", help="pg_repack windows")
    rsub = rp.add_subparsers(dest="repack_cmd", required=True, metavar="SUBCOMMAND")
    rsub.add_parser("plan", help="show what the next window would repack and which guard would stop it now")
    ar = sub.add_parser("archive", help="WAL archive checks")
    asub = ar.add_subparsers(dest="archive_cmd", required=True, metavar="SUBCOMMAND")
    asub.add_parser("check", help="run the archive checks once; exit 1 when unhealthy")
    return p


def _load(path: Path) -> Config:
    return load(path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "version":
            print(__version__)
            return 0
        if args.cmd == "demo":
            from agent.lab.demo import main as demo_main

            return demo_main(nodes=args.nodes, switchover=not args.no_switchover, keep=args.keep,
                             duration=args.duration)
        if args.cmd == "check-config" and (args.reference or args.example):
            sys.stdout.write(reference_markdown() if args.reference else example_toml())
            return 0
        cfg = _load(args.config)
        if args.cmd == "check-config":
            print(f"{args.config}: OK")
            return 0
        if args.cmd == "run":
            from agent.app import run

            return run(cfg)
        if args.cmd == "status":
            from agent.status import main as status_main

            return status_main(cfg, args.url, args.json, args.cluster, args.auth_file, err=_stderr,
                               auth_hosts=args.auth_host)
        if args.cmd == "repack":
            from agent.repack.plan import main as plan_main

            return plan_main(cfg)
        if args.cmd == "archive":
            from agent.archive.cli import main as archive_main

            return archive_main(cfg)
    except ConfigError as e:
        print(f"pg-node-agent: config error: {e}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
    return 2


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)
