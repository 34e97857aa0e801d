"""A network namespace for one etcd member, so a test can cut it off from its peers while its
clients still reach it (a real partition; no proxy can do this, because etcd peers talk over
connections dialed from both sides).

Addresses (10.213.k.0/24, on a veth pair this lab creates and deletes): inside the namespace
`inner` serves clients and `inner_peer` serves peers; outside, `outer` is where clients come
from and `outer_peer` is where the other members listen for peers. Root's route to `inner_peer`
takes `outer_peer` as source, so one blackhole route inside the namespace (to `outer_peer`)
drops every peer packet in both directions (outgoing by the route, incoming by strict reverse-path
filtering against it) and leaves client traffic alone. Needs root.
"""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _ip_out(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10).stdout


CAP_NET_ADMIN = 12  # linux/capability.h


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    # root without CAP_NET_ADMIN (a container sharing the host's network, e.g. nspawn without
    # --private-network) cannot make the veth pair: say so instead of failing in `ip link add`
    status = Path("/proc/self/status").read_text()
    eff = next((int(ln.split()[1], 16) for ln in status.splitlines() if ln.startswith("CapEff:")), 0)
    if not eff & (1 << CAP_NET_ADMIN):
        return "network namespaces need CAP_NET_ADMIN, which this process lacks (a container without its own network?)"
    return None


class Netns:
    def __init__(self) -> None:
        used = _ip_out("-o", "addr", "show")
        free = [k for k in range(10, 250) if f"10.213.{k}." not in used]
        self.k = random.choice(free)  # noqa: S311
        self.name = f"pgna-{os.getpid()}-{self.k}"
        self.outer, self.inner, self.outer_peer, self.inner_peer = (f"10.213.{self.k}.{i}" for i in (1, 2, 3, 4))
        self._veth = (f"pgr{self.k}", f"pgn{self.k}")
        self.partitioned = False

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def _in(self, *args: str) -> None:
        _ip("netns", "exec", self.name, "ip", *args)

    def create(self) -> None:
        out, inside = self._veth
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", out, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", self.name)
            _ip("addr", "add", f"{self.outer}/24", "dev", out)
            _ip("addr", "add", f"{self.outer_peer}/32", "dev", out)
            _ip("link", "set", out, "up")
            self._in("addr", "add", f"{self.inner}/24", "dev", inside)
            self._in("addr", "add", f"{self.inner_peer}/24", "dev", inside)
            self._in("link", "set", inside, "up")
            self._in("link", "set", "lo", "up")
            # strict reverse-path filter: with the blackhole route in place, packets FROM the peers
            # are dropped too (a received segment is delivered even when its ACK cannot leave)
            subprocess.run([*self.exec_prefix, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"],
                           check=True, capture_output=True, timeout=10)
            _ip("route", "add", f"{self.inner_peer}/32", "dev", out, "src", self.outer_peer)
        except Exception:
            self.delete()
            raise

    def partition(self) -> None:
        """Drop every packet between the member inside and its peers (both directions)."""
        self._in("route", "add", "blackhole", f"{self.outer_peer}/32")
        self.partitioned = True

    def heal(self) -> None:
        self._in("route", "del", "blackhole", f"{self.outer_peer}/32")
        self.partitioned = False

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10, check=False)
        subprocess.run(["ip", "link", "del", self._veth[0]], capture_output=True, timeout=10, check=False)
