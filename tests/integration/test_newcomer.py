"""docs/installation.md followed as a newcomer would, on a freshly booted Debian 12 with systemd
as PID 1 (systemd-nspawn): `.ci/newcomer` runs every ```sh block of the page's walkthrough, in
order: a one-node Patroni on Debian's etcd and PostgreSQL 15, the wheel, the venv at
/opt/pg-node-agent, the shipped unit, a config, `systemctl enable --now`, `status --cluster`.

The machine reaches Debian's mirror and PyPI (apt and pip run inside it, as for a newcomer) and
shares the host's network, so 127.0.0.1 ports 2379, 2380, 5432, 8008 and 9188 must be free on
the host; the test says so and skips otherwise.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest
from testlab import nspawn

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
PORTS = (2379, 2380, 5432, 8008, 9188)


def busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def checkout_tar(dest: Path) -> Path:
    """The files a clone would have (tracked, plus new ones not ignored): the repository as a newcomer gets it."""
    names = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    out = dest / "checkout.tar"
    with tarfile.open(out, "w") as tar:
        for n in filter(None, names):
            if (ROOT / n).exists():
                tar.add(ROOT / n, arcname=n, recursive=False)
    return out


def test_installation_walkthrough_runs_on_a_fresh_debian(tmp_path: Path) -> None:
    why = nspawn.unavailable_reason()
    if why:
        pytest.skip(f"systemd-nspawn unavailable: {why}")
    taken = [p for p in PORTS if busy(p)]
    if taken:
        pytest.skip(f"127.0.0.1 ports {taken} are in use on the host; the walkthrough needs them")
    checkout_tar(tmp_path)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    with nspawn.booted(binds_ro={tmp_path: "/mnt/checkout"}, log_dir=log_dir) as ct:
        ct.run(["mkdir", "-p", "/root/project"])
        ct.run(["tar", "-xf", "/mnt/checkout/checkout.tar", "-C", "/root/project"])
        env = ct.share_host_registries()   # what a machine on this network has: resolver, apt sources, CAs
        r = ct.run(["bash", "/root/project/.ci/newcomer"], check=False, timeout=900, env=env)
        assert r.returncode == 0, f"rc={r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
        # what the walkthrough leaves behind: the agent as a service beside a Patroni leader
        assert ct.show("pg-node-agent.service", "ActiveState", "NRestarts") == {"ActiveState": "active",
                                                                                 "NRestarts": "0"}
        assert ct.show("patroni.service", "ActiveState")["ActiveState"] == "active"
        view = json.loads(ct.run(["/opt/pg-node-agent/bin/pg-node-agent", "status", "--cluster", "--json"]).stdout)
        assert view["problems"] == []
        (row,) = view["members"]
        assert row["member"]["name"] == "pg1" and row["agent"]["state"]["confirmed_primary"] is True
        assert row["agent"]["sampler"]["source"] == "pg_stat_statements"
        assert row["agent"]["watchdog"]["enabled"] is True   # WatchdogSec= of the shipped unit, fed
        assert "1.0 OK" in r.stdout  # systemd-analyze security of the unit as installed
        docs = ct.show("pg-node-agent.service", "Documentation")["Documentation"].replace('"', "").split()
        assert docs and all(ct.run(["test", "-s", u.removeprefix("file://")], check=False).returncode == 0
                            for u in docs), docs   # what the unit's Documentation= names is installed
