"""The vip-manager phase: vip-manager 1.0.2 (polls etcd's v2 API) at --interval 1000 and 100, in a
network namespace of the run's own, until the kernel reports the VIP added or removed."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.leader_latency.net import LEADER_KEY, ROOT
from bench.leader_latency.procs import Cleanup, reader
from bench.leader_latency.report import Row

NS_ADDR = "198.51.100.1/24"  # TEST-NET-2, on the veth end vip-manager manages
VIP = "198.51.100.10"
VIP_NODE = "vipnode"
NS_ETCD_CLIENT = "http://127.0.0.1:2379"  # inside the namespace: its own loopback, no clash
NS_ETCD_PEER = "http://127.0.0.1:2380"


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
    putter = cl.spawn("v2put", [*nsexec, sys.executable, "-m", "bench.leader_latency.roles.v2put", NS_ETCD_CLIENT,
                                LEADER_KEY], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
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
