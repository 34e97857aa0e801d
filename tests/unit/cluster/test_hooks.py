from __future__ import annotations

import functools
import sys
from pathlib import Path

import anyio
import pytest

from agent.cluster import hooks
from agent.core.config import parse
from agent.core.context import Context
from agent.core.events import PostgresAvailability

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_role_change_runs_the_hook_with_old_and_new_role(tmp_path: Path) -> None:
    out = tmp_path / "hook.out"
    script = "import os,sys; open(sys.argv[1],'a').write(os.environ['PGNODE_OLD_ROLE']+'>'+os.environ['PGNODE_NEW_ROLE']+'\\n')"
    cfg = parse({"node": {"name": "n"}, "etcd": {"scope": "s"},
                 "hooks": [{"command": [sys.executable, "-c", script, str(out)], "timeout": "10s"},
                           {"command": ["/nonexistent/hook"], "on": ["role_changed"]}]})
    ctx = Context.create(cfg)
    m = hooks.HookMetrics(ctx.registry)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(functools.partial(hooks.run, ctx, m))
            ctx.publish(PostgresAvailability(up=True, in_recovery=True))   # unknown -> replica
            ctx.publish(PostgresAvailability(up=True, in_recovery=False))  # replica -> primary
            while (ctx.registry.get_sample_value("pgnode_hook_runs_total", {"result": "success"}) or 0) < 2:
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert out.read_text().splitlines() == ["unknown>replica", "replica>primary"]
    assert ctx.registry.get_sample_value("pgnode_hook_runs_total", {"result": "failure"}) == 2
