"""The root task group: HTTP server, components with backoff restarts, signals, sd_notify.

Each component is `async def run(ctx, *, task_status)`; it calls `task_status.started()` once
it has done its first full sync. READY=1 goes out when every component has started, or after
`start_timeout` with the laggards named in STATUS= (an etcd outage at boot must not become a
systemd start timeout and a restart loop). A crash is logged with its traceback, counted and
restarted with exponential backoff; only a signal or a bad config ends the process.
"""

from __future__ import annotations

import resource
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

import anyio
import anyio.abc
import structlog

from agent import __version__
from agent.core import config as config_mod
from agent.core import http
from agent.core.conns import ConnectionStats
from agent.core.context import Context
from agent.core.events import Event
from agent.core.metrics import CoreMetrics, StateCollector
from agent.core.sdnotify import Notifier
from agent.core.state import StateStatus

log = structlog.get_logger("supervisor")

RunFn = Callable[..., Awaitable[None]]


class ComponentStatus(TypedDict):
    up: bool
    restarts: int
    last_error: str
    heartbeat_age_seconds: float | None


class NodeStatus(TypedDict):
    """/status without the jobs' sections (each job declares its own beside its producer;
    `agent.status.contract.AgentStatus` puts them together)."""

    version: str
    config: str
    node: str
    scope: str
    ready: bool
    uptime_seconds: float
    state: StateStatus
    components: dict[str, ComponentStatus]


class AuthStatus(TypedDict):
    hashed: int     # password checks run
    throttled: int  # answered 429 without a check


class HttpStatus(TypedDict):
    connections: ConnectionStats
    auth: AuthStatus | None


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    run: RunFn  # async def run(ctx: Context, *, task_status) -> None
    heartbeat_timeout: float | None = None
    # published when it stops: the facts only it observes become unknown (a dead watch must not
    # leave dcs_up and the leader it last saw behind, keeping confirmed_primary true)
    on_stop: tuple[Event, ...] = ()


# Read once at start (a connection, a socket, a component that exists or not, a heartbeat timeout):
# a reload that changes one of these is logged as needing a restart. Everything else is read where it
# is used and takes effect at once; `repack.enabled = false` stops a running table (its guard).
RESTART_KEYS = ("node", "etcd", "http", "postgres", "patroni", "watchdog", "sampler.enabled",
                "sampler.source", "sampler.labels", "sampler.interval", "archive.enabled", "repack.binary")


def keys_needing_restart(old: config_mod.Config, new: config_mod.Config, running: set[str]) -> list[str]:
    """The changed keys a reload cannot apply, given the components `running`."""
    def get(c: config_mod.Config, key: str) -> Any:
        for part in key.split("."):
            c = getattr(c, part)
        return c

    out = [k for k in RESTART_KEYS if get(old, k) != get(new, k)]
    if new.repack.enabled and not old.repack.enabled and "repack" not in running:
        out.append("repack.enabled")  # the component was not built at start
    return out


def _config_error(e: BaseException) -> config_mod.ConfigError | None:
    if isinstance(e, config_mod.ConfigError):
        return e
    if isinstance(e, BaseExceptionGroup):
        for sub in e.exceptions:
            found = _config_error(sub)
            if found is not None:
                return found
    return None


class _Started:
    """task_status that forwards the first started() of the first run only."""

    def __init__(self, event: anyio.Event) -> None:
        self._event = event

    def started(self, value: Any = None) -> None:
        self._event.set()


@dataclass
class _Health:
    up: bool = False
    restarts: int = 0
    last_error: str = ""
    started_at: float | None = None


@dataclass
class Supervisor:
    ctx: Context
    components: list[Component]
    notifier: Notifier = field(default_factory=Notifier)
    start_timeout: float = 20.0
    stop_timeout: float = 10.0
    backoff_max: float = 60.0
    health: dict[str, _Health] = field(default_factory=dict)
    ready: bool = False
    exit_code: int = 0
    started_wall: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.metrics = CoreMetrics(self.ctx.registry)
        self.health = {c.name: _Health() for c in self.components}
        self.ctx.registry.register(StateCollector(lambda: self.ctx.state.current,
                                                  lambda: {n: h.up for n, h in self.health.items()}))
        for c in self.components:
            self.metrics.restarts.labels(c.name)

    # ------------------------------------------------------------------ run
    async def run(self) -> int:
        cfg = self.ctx.config
        sock = http.bind(cfg.http.listen)
        api = http.Api(self.ctx.registry, self.health_view, self.status_view, cfg.http.basic_auth_users,
                       self.ctx.cached_metrics)
        self.ctx.status_sections["http"] = lambda: HttpStatus(
            connections=sock.gate.stats(),
            auth=AuthStatus(hashed=api.auth.hashed, throttled=api.auth.throttled) if api.auth else None)
        log.info("agent_starting", version=__version__, config=cfg.source, node=cfg.node.name,
                 listen=cfg.http.listen, nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                 http_max_connections=sock.gate.cap)
        async with anyio.create_task_group() as root:
            self._root = root.cancel_scope
            root.start_soon(self._signals, root.cancel_scope)
            await root.start(http.serve, api, sock, cfg.http.tls_cert_file, cfg.http.tls_key_file)
            started = {c.name: anyio.Event() for c in self.components}
            for c in self.components:
                root.start_soon(self._supervise, c, started[c.name])
            with anyio.move_on_after(self.start_timeout):
                for ev in started.values():
                    await ev.wait()
            pending = [n for n, ev in started.items() if not ev.is_set()]
            if pending:
                log.warning("components_not_started_in_time", components=pending, timeout_seconds=self.start_timeout)
            self.ready = True
            self.notifier.send("READY=1", f"STATUS={self.status_line()}")
            log.info("agent_ready", components=[c.name for c in self.components], pending=pending)
            root.start_soon(self._status_updates)
        return self.exit_code

    async def _supervise(self, comp: Component, started: anyio.Event) -> None:
        h = self.health[comp.name]
        delay = 1.0
        blog = log.bind(component=comp.name)
        while True:
            h.up, h.started_at = True, anyio.current_time()
            self.ctx.liveness.register(comp.name, comp.heartbeat_timeout)
            try:
                await comp.run(self.ctx, task_status=_Started(started))
                blog.warning("component_returned")
                h.last_error = "returned"
            except Exception as e:
                cfg_err = _config_error(e)
                if cfg_err is not None:  # a config the running system contradicts: not retried
                    blog.error("config_error", error=str(cfg_err), key=cfg_err.key)
                    self.exit_code = config_mod.EX_CONFIG
                    self._root.cancel()
                    return
                blog.exception("component_failed", retry_in_seconds=delay)
                h.last_error = f"{type(e).__name__}: {e}"[:300]
            finally:
                h.up = False
                self.ctx.liveness.stopped(comp.name)
                for ev in comp.on_stop:
                    self.ctx.publish(ev)
            started.set()
            h.restarts += 1
            self.metrics.restarts.labels(comp.name).inc()
            if h.started_at is not None and anyio.current_time() - h.started_at > 5 * self.backoff_max:
                delay = 1.0  # it was healthy a good while: start over from a short delay
            await anyio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for sig in sigs:
                if sig == signal.SIGHUP:
                    self.reload()
                    continue
                log.info("agent_stopping", signal=signal.Signals(sig).name)
                self.notifier.send("STOPPING=1", "STATUS=stopping")
                scope.cancel()
                return

    async def _status_updates(self) -> None:
        last = ""
        while True:
            line = self.status_line()
            if line != last and self.notifier.enabled:
                self.notifier.send(f"STATUS={line}")
                last = line
            with anyio.move_on_after(5):
                await self.ctx.state.changed()

    # ------------------------------------------------------------------ reload
    def reload(self) -> None:
        path = self.ctx.config.source
        try:
            new = config_mod.load(path)
        except config_mod.ConfigError as e:
            self.metrics.reloads.labels("failure").inc()
            log.error("config_reload_rejected", config=path, error=str(e), kept="previous")
            return
        old = self.ctx.config
        restart_needed = keys_needing_restart(old, new, {c.name for c in self.components})
        self.ctx.config = replace(new, source=path)
        from agent.core import logging as logmod

        logmod.setup(new.logging.level, new.logging.format)
        self.metrics.reloads.labels("success").inc()
        log.info("config_reloaded", config=path, restart_needed_for=restart_needed)

    # ------------------------------------------------------------------ views
    def status_line(self) -> str:
        s = self.ctx.state.current
        return (f"role={s.role.value} leader={s.leader or '-'} confirmed_primary={int(s.confirmed_primary)} "
                f"dcs={'up' if s.dcs_up else 'down'} postgres={'up' if s.postgres_up else 'down'}")

    def health_view(self) -> tuple[bool, dict[str, Any]]:
        """503 while a component is wedged (stale) or not running (down)."""
        stale = self.ctx.liveness.stale()
        down = sorted(n for n, h in self.health.items() if not h.up)
        status = "down" if down else "stale" if stale else "ok"
        return status == "ok", {"status": status, "stale_components": stale, "down_components": down}

    def node_status(self) -> NodeStatus:
        ages = self.ctx.liveness.ages()
        return NodeStatus(
            version=__version__, config=self.ctx.config.source, node=self.ctx.config.node.name,
            scope=self.ctx.config.etcd.scope, ready=self.ready,
            uptime_seconds=round(time.time() - self.started_wall, 3), state=self.ctx.state.current.as_dict(),
            components={n: ComponentStatus(up=h.up, restarts=h.restarts, last_error=h.last_error,
                                           heartbeat_age_seconds=round(ages[n], 3) if n in ages else None)
                        for n, h in self.health.items()})

    def status_view(self) -> Mapping[str, object]:
        out: dict[str, object] = dict(self.node_status())
        for name, fn in self.ctx.status_sections.items():
            try:
                out[name] = fn()
            except Exception as e:  # a broken section must not break /status
                out[name] = {"error": str(e)}
        return out
