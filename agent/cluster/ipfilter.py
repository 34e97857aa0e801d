"""Naming a connect that the unit's IP firewall blocked, instead of a bare "etcd down".

The shipped unit has `IPAddressDeny=any` and allows loopback and private IPv4 only, so etcd on a
public, CGNAT (100.64/10) or IPv6 address is unreachable for the agent alone. What a blocked
connect looks like was measured under systemd 252 (kernel 6.18): the BPF filter drops the SYN and
TCP swallows the EPERM, so connect() *times out*; EPERM reaches the caller only on some paths
(UDP, a send on an established socket). So: EPERM anywhere in the error is proof; otherwise a
connect that timed out, under systemd, to an address outside the shipped allow-list is named as
the likely cause, with the address, so the operator widens `IPAddressAllow=` (docs/installation.md).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import anyio
import httpx
import requests

SHIPPED_ALLOW = tuple(ipaddress.ip_network(n) for n in
                      ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def _any_in_chain(exc: BaseException, test: Callable[[BaseException], bool]) -> bool:
    """`test` on the error and everything it wraps (requests/urllib3/httpx/etcd3gw wrap the socket's)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if test(e):
            return True
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
    return False


def eperm_in(exc: BaseException) -> bool:
    return _any_in_chain(exc, lambda e: isinstance(e, OSError) and e.errno == errno.EPERM)


def connect_timed_out(exc: BaseException) -> bool:
    """A TCP connect that got no answer at all: what a dropped SYN gives (an etcd that is down
    but reachable answers with a reset, a refused connect)."""
    return _any_in_chain(exc, lambda e: isinstance(e, requests.exceptions.ConnectTimeout | httpx.ConnectTimeout))


def outside_shipped_allow(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not any(ip in net for net in SHIPPED_ALLOW)


async def addresses(endpoint: str) -> list[str]:
    u = urlsplit(endpoint)
    host = u.hostname or ""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    with anyio.move_on_after(2):
        try:
            infos = await anyio.getaddrinfo(host, u.port or 2379, type=socket.SOCK_STREAM)
        except OSError:
            return []
        return sorted({str(i[4][0]) for i in infos})
    return []


async def blocked_by_ip_filter(endpoint: str, exc: BaseException) -> dict[str, str] | None:
    """The address and the evidence when `exc` (a failed call to `endpoint`) is the unit's IP filter."""
    if eperm_in(exc):
        return {"address": ",".join(await addresses(endpoint)) or endpoint, "evidence": "EPERM"}
    if not os.environ.get("INVOCATION_ID") or not connect_timed_out(exc):  # no unit, or not a dropped SYN
        return None
    outside = [a for a in await addresses(endpoint) if outside_shipped_allow(a)]
    if not outside:
        return None
    return {"address": ",".join(outside),
            "evidence": "connect timed out to an address outside the shipped unit's IPAddressAllow="}
