"""Optional commands on role/leader changes (like Patroni callbacks), argv only, under a deadline."""

from __future__ import annotations

import anyio
import anyio.abc
import structlog
from prometheus_client import CollectorRegistry, Counter

from agent.core import proc
from agent.core.bus import Lagged
from agent.core.context import Context
from agent.core.events import LeaderChanged, RoleChanged

log = structlog.get_logger("hooks")


class HookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter("pgnode_hook_runs", "Hook commands run, by result.", ["result"], registry=registry)
        for r in ("success", "failure", "timeout"):
            self.runs.labels(r)


async def run(ctx: Context, m: HookMetrics, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    async with ctx.bus.subscribe() as events:
        task_status.started()
        async for ev in events:
            ctx.liveness.beat("hooks")
            if isinstance(ev, Lagged):
                log.warning("hooks_lagged", dropped=ev.dropped)
                continue
            kind = "role_changed" if isinstance(ev, RoleChanged) else \
                "leader_changed" if isinstance(ev, LeaderChanged) else None
            if kind is None:
                continue
            s = ctx.state.current
            env = {"PGNODE_EVENT": kind, "PGNODE_MEMBER": s.member, "PGNODE_ROLE": s.role.value,
                   "PGNODE_LEADER": s.leader or "", "PGNODE_SCOPE": ctx.config.etcd.scope}
            if isinstance(ev, RoleChanged):
                env.update(PGNODE_OLD_ROLE=ev.old.value, PGNODE_NEW_ROLE=ev.new.value)
            for hook in ctx.config.hooks:
                if kind not in hook.on:
                    continue
                try:
                    res = await proc.run(hook.command, timeout=hook.timeout, env=env, max_output=8192)
                except OSError as e:
                    m.runs.labels("failure").inc()
                    log.error("hook_failed", hook_event=kind, command=hook.command[0], error=str(e))
                    continue
                m.runs.labels("timeout" if res.timed_out else "success" if res.returncode == 0 else "failure").inc()
                log.info("hook_ran", hook_event=kind, command=hook.command[0], returncode=res.returncode,
                         timed_out=res.timed_out, stderr=res.stderr[-500:])
