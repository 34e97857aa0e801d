from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import anyio
import pytest

from agent.cluster.watchdog.feeder import Feeder, WatchdogMetrics
from agent.core.config import parse
from agent.core.context import Context
from agent.core.sdnotify import Notifier

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_feeding_stops_while_a_heartbeat_is_stale_and_resumes(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    device = tmp_path / "watchdog1"  # a plain file stands in for the device node: it records the writes
    device.write_bytes(b"")
    cfg = parse({"node": {"name": "n"}, "etcd": {"scope": "s"},
                 "watchdog": {"device": str(device), "device_timeout": "1s"}})
    ctx = Context.create(cfg)
    name = f"pgnode-wd-{uuid.uuid4().hex}"
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        feeder = Feeder(ctx, WatchdogMetrics(ctx.registry), Notifier("@" + name))
        ctx.liveness.register("other", timeout=0.3)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(feeder.run, ctx)
                while ctx.registry.get_sample_value("pgnode_watchdog_feeds_total") < 3:
                    ctx.liveness.beat("other")
                    await anyio.sleep(0.05)
                # "other" stops beating: the feeder must withhold
                while not ctx.registry.get_sample_value("pgnode_watchdog_withheld_total"):
                    await anyio.sleep(0.05)
                fed = ctx.registry.get_sample_value("pgnode_watchdog_feeds_total")
                await anyio.sleep(0.5)
                assert ctx.registry.get_sample_value("pgnode_watchdog_feeds_total") == fed
                ctx.liveness.beat("other")
                while ctx.registry.get_sample_value("pgnode_watchdog_feeds_total") == fed:
                    ctx.liveness.beat("other")
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        msgs = []
        while True:
            try:
                msgs.append(sock.recv(100))
            except BlockingIOError:
                break
    assert msgs and set(msgs) == {b"WATCHDOG=1"}
    written = device.read_bytes()
    assert written.startswith(b"1") and written.endswith(b"V")  # keepalives, then the magic close


async def test_a_blocked_event_loop_stops_the_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    cfg = parse({"node": {"name": "n"}, "etcd": {"scope": "s"}})
    ctx = Context.create(cfg)
    name = f"pgnode-wd-{uuid.uuid4().hex}"
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        m = WatchdogMetrics(ctx.registry)
        feeder = Feeder(ctx, m, Notifier("@" + name))
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(feeder.run, ctx)
                while (ctx.registry.get_sample_value("pgnode_watchdog_feeds_total") or 0) < 2:
                    await anyio.sleep(0.05)
                time.sleep(1.0)  # noqa: ASYNC251 - the point: a wedged event loop
                while not ctx.registry.get_sample_value("pgnode_watchdog_withheld_total"):
                    await anyio.sleep(0.05)
                assert (ctx.registry.get_sample_value("pgnode_event_loop_lag_seconds") or 0) > 0.5
                tg.cancel_scope.cancel()


async def test_a_device_that_cannot_be_opened_stops_the_agent_with_78(tmp_path: Path,
                                                                       logs: list[dict[str, object]]) -> None:
    """Not a restart loop: under the shipped unit no device is visible, and retrying cannot change that."""
    from agent.core.supervisor import Component, Supervisor

    cfg = parse({"node": {"name": "n"}, "etcd": {"scope": "s"}, "http": {"listen": "127.0.0.1:0"},
                 "watchdog": {"device": str(tmp_path / "gone")}})  # vanished after check-config
    ctx = Context.create(cfg)
    feeder = Feeder(ctx, WatchdogMetrics(ctx.registry))
    sup = Supervisor(ctx, [Component("watchdog", feeder.run)], Notifier(""), backoff_max=0.05)
    with anyio.fail_after(10):
        assert await sup.run() == 78
    (err,) = [e for e in logs if e["event"] == "config_error"]
    assert err["key"] == "watchdog.device" and "PrivateDevices=no" in str(err["error"])
    assert not [e for e in logs if e["event"] == "component_failed"]
