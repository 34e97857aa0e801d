"""The unit's IP firewall under a real systemd 252 that enforces it (nspawn with BPF allowed).

The shipped unit admits loopback and private IPv4 only. An etcd endpoint on a CGNAT address
(100.64.0.0/10) is therefore blocked for the agent: the connect times out (the filter drops the
SYN; measured, see agent/etcd/ipfilter.py). The agent must say so, with the address, and keep
working through the next endpoint (the lab's etcd on the host's loopback).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest
from testlab import nspawn

from agent.lab.etcd import Etcd
from agent.lab.ports import free_port
from agent.lab.procs import wait_until

ROOT = Path(__file__).resolve().parents[2]
UNIT = "pg-node-agent.service"
BLOCKED = "100.64.0.1"

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_etcd_blocked_by_the_units_ip_filter_is_named_with_its_address(etcd: Etcd) -> None:
    reason = nspawn.unavailable_reason()
    if reason:
        pytest.skip(f"systemd-nspawn unavailable: {reason}")
    log_dir = Path(f"/var/tmp/pgna-nspawn-logs/{time.strftime('%Y%m%d-%H%M%S')}-ipf-{uuid.uuid4().hex[:6]}")
    log_dir.mkdir(parents=True, exist_ok=True)
    lower = nspawn.ensure_rootfs(log_dir / "build.log")
    agent_dir, deps_dir = nspawn.agent_wheels(ROOT, log_dir / "wheels.log")
    scope = f"ipf{uuid.uuid4().hex[:8]}"
    etcd.put(f"/service/{scope}/leader", "node-x")
    port = free_port()
    config = f"""[node]
name = "ct1"
[etcd]
endpoints = ["http://{BLOCKED}:2379", "{etcd.url}"]
scope = "{scope}"
timeout = "2s"
watch_deadline = "3s"
[patroni]
url = "http://127.0.0.1:{free_port()}"
[postgres]
host = "127.0.0.1"
port = {free_port()}
[sampler]
enabled = false
[archive]
enabled = false
[http]
listen = "127.0.0.1:{port}"
[logging]
format = "json"
"""
    binds = nspawn.agent_binds(ROOT, agent_dir, deps_dir)
    ok = False
    try:
        with nspawn.Container(lower, binds_ro=binds, log_dir=log_dir, bpf=True) as ct:
            nspawn.install_agent(ct, ROOT)  # steps 2-4: venv, user, the unit unchanged
            ct.write_file("/etc/pg-node-agent/agent.toml", config, mode="0640", owner="root:postgres")
            ct.systemctl("daemon-reload", check=True)
            # The filter, not the network, must be what drops it: an unfiltered unit's connect is answered.
            probe = ("import socket; s = socket.socket(); s.settimeout(3)\n"
                     f"try:\n s.connect(('{BLOCKED}', 2379)); print('answered')\n"
                     "except ConnectionRefusedError: print('answered')\n"
                     "except OSError as e: print(type(e).__name__)")
            free = ct.run(["systemd-run", "-P", "--wait", "-q", "python3", "-c", probe], check=False).stdout.strip()
            if free == "TimeoutError":
                pytest.skip(f"{BLOCKED} does not answer here even unfiltered: the filter cannot be told apart")
            walled = ct.run(["systemd-run", "-P", "--wait", "-q", "-p", "IPAddressDeny=any", "python3", "-c", probe],
                            check=False).stdout.strip()
            if walled == "answered":  # e.g. a container nested in one without cgroup BPF for it
                pytest.skip("systemd's IPAddressDeny= is not enforced in this container: nothing to tell apart")
            assert walled == "TimeoutError", (free, walled)  # enforced here, and a timeout, not EPERM
            r = ct.systemctl("start", UNIT)
            assert r.returncode == 0, r.stderr + ct.journal(UNIT)[-3000:]

            def blocked_event() -> dict[str, object] | None:
                for line in ct.journal(UNIT, "-o", "cat").splitlines():
                    if '"dcs_connect_blocked_by_ip_filter"' in line:
                        return dict(json.loads(line))
                return None

            ev = wait_until(blocked_event, 60, "dcs_connect_blocked_by_ip_filter in the journal",
                            detail=lambda: ct.journal(UNIT)[-3000:])
            assert isinstance(ev, dict)
            assert ev["address"] == BLOCKED and ev["endpoint"] == f"http://{BLOCKED}:2379", ev
            assert ev["component"] == "etcd" and "IPAddressAllow=" in str(ev["fix"]), ev
            ok = True
    finally:
        shutil.rmtree(agent_dir.parent, ignore_errors=True)
        if ok:
            shutil.rmtree(log_dir, ignore_errors=True)
