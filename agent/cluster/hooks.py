"""Optional commands on role/leader changes (like Patroni callbacks), argv only, under a deadline."""

from __future__ import annotations

import anyio
import anyio.abc
import structlog

from agent.core import proc
from agent.core.bus import Lagged
from agent.core.context import Context
from agent.core.events import LeaderChanged, RoleChanged

log = structlog.get_logger("hooks")


async def run(ctx: Context, *, task_status: anyio.abc.TaskStatus[None]) -> None:
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
                res = await proc.run(hook.command, timeout=hook.timeout, env=env, max_output=8192)
                log.info("hook_ran", hook_event=kind, command=hook.command[0], returncode=res.returncode,
                         timed_out=res.timed_out, stderr=res.stderr[-500:])
