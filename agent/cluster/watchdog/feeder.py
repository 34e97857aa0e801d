"""Feed systemd's watchdog (and an optional device) only while every component's heartbeat is
fresh. An external outage does not stop the feeding (components keep beating while they retry);
a wedged loop does, and then systemd restarts the agent."""

from __future__ import annotations

import time
from typing import TypedDict

import anyio
import anyio.abc
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.cluster.watchdog.base import Device, NullDevice
from agent.cluster.watchdog.linux import LinuxDevice
from agent.core.context import Context
from agent.core.sdnotify import Notifier, watchdog_period

log = structlog.get_logger("watchdog")


class WatchdogMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.feeds = Counter("pgnode_watchdog_feeds", "Watchdog keepalives sent (systemd and/or device).",
                             registry=registry)
        self.last_feed = Gauge("pgnode_watchdog_last_feed_timestamp_seconds", "Wall-clock time of the last feed.",
                               registry=registry)
        self.withheld = Counter("pgnode_watchdog_withheld", "Feeds withheld because a heartbeat was stale.",
                                registry=registry)
        self.loop_lag = Gauge("pgnode_event_loop_lag_seconds", "How late the watchdog tick ran (event loop lag).",
                              registry=registry)
        self.enabled = Gauge("pgnode_watchdog_enabled", "1 when a systemd watchdog or a device is being fed.",
                             registry=registry)


class WatchdogStatus(TypedDict):
    enabled: bool
    systemd_period_seconds: float | None
    device: str | None
    withholding: list[str]                   # the stale components while feeds are withheld
    last_feed_age_seconds: float | None


class Feeder:
    def __init__(self, ctx: Context, metrics: WatchdogMetrics, notifier: Notifier | None = None) -> None:
        self.ctx = ctx
        self.m = metrics
        self.notifier = notifier or Notifier()
        self.period = watchdog_period() if self.notifier.enabled else None
        self.device_name: str | None = None
        self.enabled = False
        self.last_feed: float | None = None
        self.withholding: list[str] = []

    def status(self) -> WatchdogStatus:
        return WatchdogStatus(enabled=self.enabled, systemd_period_seconds=self.period, device=self.device_name,
                              withholding=list(self.withholding),
                              last_feed_age_seconds=round(time.time() - self.last_feed, 1) if self.last_feed else None)

    def _device(self) -> Device:
        cfg = self.ctx.config.watchdog
        return LinuxDevice(cfg.device, cfg.device_timeout) if cfg.device else NullDevice()

    async def run(self, ctx: Context, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        device = self._device()
        device.open()
        dev_timeout = device.get_timeout()
        periods = [p for p in (self.period, dev_timeout) if p]
        interval = min(periods) / 2 if periods else 1.0
        interval = min(interval, 1.0)  # never slower than 1 s: keeps /health honest
        self.enabled = bool(periods)
        self.device_name = device.describe if self.ctx.config.watchdog.device else None
        self.m.enabled.set(1 if periods else 0)
        log.info("watchdog_started", systemd_period_seconds=self.period, device=device.describe,
                 device_timeout_seconds=dev_timeout, interval_seconds=interval)
        task_status.started()
        # an event loop this late on a 1 s tick is blocked by something: don't vouch for it
        max_lag = max(0.5, (min(periods) / 2) if periods else 2.0)
        expected = anyio.current_time()
        try:
            while True:
                lag = max(0.0, anyio.current_time() - expected)
                self.m.loop_lag.set(lag)
                ctx.liveness.beat("watchdog")
                stale = [n for n in ctx.liveness.stale() if n != "watchdog"]
                if lag > max_lag:
                    stale.append("event_loop")
                if stale:
                    if stale != self.withholding:
                        log.error("watchdog_feed_withheld", stale_components=stale,
                                  ages_seconds={n: round(a, 1) for n, a in ctx.liveness.ages().items() if n in stale})
                    self.m.withheld.inc()
                else:
                    if self.withholding:
                        log.info("watchdog_feed_resumed")
                    if periods:
                        if self.period:
                            self.notifier.send("WATCHDOG=1")
                        device.keepalive()
                        self.m.feeds.inc()
                        self.last_feed = time.time()
                        self.m.last_feed.set(self.last_feed)
                self.withholding = stale
                expected = anyio.current_time() + interval
                await anyio.sleep(interval)
        finally:
            device.close()  # clean stop: magic close, the machine must not reboot
