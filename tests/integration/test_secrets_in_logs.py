"""A failing connect with a password, logged with its traceback through the agent's own log chain:
the password is nowhere in what reaches the journal.

The connect is real (PostgreSQL 15 over scram, etcd with RBAC); the component that lets the error
escape stands for any bug that does, since the supervisor logs such errors with their traceback.
structlog renders a traceback's local variables by default, and the connect call's frames (ours,
psycopg's, etcd3gw's) hold the password it sends.
"""

from __future__ import annotations

import io
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import structlog
from psycopg import sql
from testlab.postgres import PgInstance

from agent.cluster.etcd import Etcd as EtcdClient
from agent.core import config as config_mod
from agent.core import logging as logmod
from agent.core.context import Context
from agent.core.sdnotify import Notifier
from agent.core.supervisor import Component, Supervisor
from agent.lab.etcd import Etcd

pytestmark = pytest.mark.integration

ROLE = "pgna_secret_t"


@pytest.fixture
def restore_logging() -> Any:
    yield
    structlog.reset_defaults()


def _secret_file(d: Path, value: str) -> Path:
    p = d / "secret"
    p.write_text(value + "\n")
    p.chmod(0o600)
    return p


async def _run_until_failed(cfg: config_mod.Config, job: Any, fmt: str) -> str:
    """`job` as a component under the real supervisor, logging with the real chain, until it failed once."""
    out = io.StringIO()
    logmod.setup("info", fmt, out)
    ctx = Context.create(cfg)
    sup = Supervisor(ctx, [Component("leaky", job)], Notifier(""), backoff_max=0.05)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sup.run)
            while '"component_failed"' not in out.getvalue() and "component_failed" not in out.getvalue():
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    return out.getvalue()


def _failure(text: str) -> dict[str, Any]:
    return next(e for e in map(json.loads, text.splitlines()) if e["event"] == "component_failed")


@pytest.mark.parametrize("fmt", ["json", "console"])
async def test_password_of_a_failed_postgres_connect_is_not_in_the_traceback(
    pg15: PgInstance, tmp_path: Path, restore_logging: None, fmt: str
) -> None:
    with pg15.connect() as c:
        c.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))
        c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(ROLE), sql.Literal(secrets.token_urlsafe(16))))
    wrong = "wr0ng-" + secrets.token_hex(12)
    cfg = config_mod.parse({
        "node": {"name": "n1", "state_dir": str(tmp_path)}, "etcd": {"scope": "s"},
        "http": {"listen": "127.0.0.1:0"},
        "postgres": {"host": "127.0.0.1", "port": pg15.port, "user": ROLE, "dbname": "postgres",
                     "password_file": str(_secret_file(tmp_path, wrong))}})

    async def leaky(ctx: Context, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await ctx.pg_connect("leaky")

    text = await _run_until_failed(cfg, leaky, fmt)
    assert "password authentication failed" in text, text[-3000:]  # the real refusal, with its traceback
    assert "agent/core/pg.py" in text, text[-3000:]
    if fmt == "json":
        exc = _failure(text)["exception"][0]
        assert exc["exc_type"] == "OperationalError" and len(exc["frames"]) >= 3
    assert wrong not in text


async def test_password_and_token_of_a_failed_etcd_login_are_not_in_the_traceback(
    fresh_etcd: Etcd, tmp_path: Path, restore_logging: None
) -> None:
    def etcdctl(*args: str) -> None:
        subprocess.run(["etcdctl", f"--endpoints={fresh_etcd.url}", *args], check=True, capture_output=True,
                       timeout=30, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})

    etcdctl("user", "add", f"root:{secrets.token_urlsafe(12)}")
    etcdctl("auth", "enable")
    wrong = "wr0ng-" + secrets.token_hex(12)
    cfg = config_mod.parse({"node": {"name": "n1", "state_dir": str(tmp_path)}, "etcd": {"scope": "s"},
                            "http": {"listen": "127.0.0.1:0"}})
    secret = str(_secret_file(tmp_path, wrong))

    async def leaky(ctx: Context, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await EtcdClient([fresh_etcd.url], 3.0, 3.0, username="root", password_file=secret).auth_headers()

    text = await _run_until_failed(cfg, leaky, "json")
    exc = _failure(text)["exception"][0]
    # etcd's gateway answers a wrong password with 400 ("authentication failed"): the real refusal
    assert exc["exc_type"] == "Etcd3Exception", text[-3000:]
    assert any(f["name"] == "auth_headers" for f in exc["frames"]), exc
    assert wrong not in text
