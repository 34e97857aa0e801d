"""Which failed etcd connects are the unit's IP firewall (agent/cluster/ipfilter.py)."""

from __future__ import annotations

import errno

import etcd3gw
import pytest
import requests

from agent.cluster.ipfilter import blocked_by_ip_filter, eperm_in, outside_shipped_allow

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(("address", "outside"), [
    ("100.64.1.1", True), ("8.8.8.8", True), ("2001:db8::1", True), ("fd00::1", True),
    ("10.1.2.3", False), ("172.31.0.1", False), ("192.168.7.7", False), ("127.0.0.1", False), ("::1", False),
    ("::ffff:10.0.0.1", False),
])
def test_the_shipped_allow_list(address: str, outside: bool) -> None:
    assert outside_shipped_allow(address) is outside


def _wrapped(inner: BaseException) -> etcd3gw.exceptions.Etcd3Exception:
    """As etcd3gw raises it: its own exception while handling requests' (the implicit context)."""
    try:
        raise inner
    except requests.exceptions.RequestException:
        try:
            raise etcd3gw.exceptions.ConnectionFailedError("etcd3gw") from None
        except etcd3gw.exceptions.Etcd3Exception as outer:
            outer.__context__ = inner
            return outer


async def test_eperm_anywhere_inside_is_proof(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    sock_err = PermissionError(errno.EPERM, "Operation not permitted")
    conn = requests.exceptions.ConnectionError(sock_err)
    err = _wrapped(conn)
    assert eperm_in(err)
    assert await blocked_by_ip_filter("http://203.0.113.9:2379", err) == {"address": "203.0.113.9",
                                                                       "evidence": "EPERM"}


async def test_a_connect_timeout_outside_the_allow_list_is_named_only_under_systemd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timeout = _wrapped(requests.exceptions.ConnectTimeout("connect timeout"))
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    assert await blocked_by_ip_filter("http://100.64.0.1:2379", timeout) is None  # no unit, no filter
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    why = await blocked_by_ip_filter("http://100.64.0.1:2379", timeout)
    assert why is not None and why["address"] == "100.64.0.1" and "IPAddressAllow=" in why["evidence"]
    assert await blocked_by_ip_filter("http://10.0.0.5:2379", timeout) is None  # allowed by the unit
    refused = _wrapped(requests.exceptions.ConnectionError(ConnectionRefusedError(errno.ECONNREFUSED, "refused")))
    assert await blocked_by_ip_filter("http://100.64.0.1:2379", refused) is None  # an answer: not the filter
