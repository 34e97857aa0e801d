"""Archive checks against a real PostgreSQL 15 with archive_mode=on (the session `pg15`).

Archiving is broken on purpose with ALTER SYSTEM (archive_command=/bin/false) and restored to
the fixture's own command afterwards, so the shared instance is left as it was found.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest
from psycopg import sql
from testlab.postgres import PgInstance

from agent.archive import cli as archive_cli
from agent.archive.component import components
from agent.core.config import Config, parse
from agent.core.context import Context
from agent.core.events import ArchiveHealthChanged
from agent.core.supervisor import Component


def _config(pg: PgInstance, **archive: Any) -> Config:
    return parse(
        {
            "node": {"name": "n1", "state_dir": str(pg.dir)},
            "etcd": {"scope": "archive-test"},
            "postgres": {"host": str(pg.socket_dir), "port": pg.port, "user": "postgres"},
            "archive": {"interval": "500ms", "max_ready_age": "3s", "max_ready_files": 100, **archive},
        }
    )


def _set_archive_command(pg: PgInstance, command: str) -> None:
    # ALTER SYSTEM takes no bind parameters: the value goes in as a quoted literal
    with pg.connect() as c:
        c.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command)))
        c.execute("SELECT pg_reload_conf()")


def _switch_wal(pg: PgInstance) -> str:
    """Write something and switch, so there is a finished segment to archive; its name."""
    with pg.connect() as c:
        c.execute("CREATE TABLE IF NOT EXISTS archive_probe (t timestamptz)")
        c.execute("INSERT INTO archive_probe VALUES (now())")
        row = c.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None
        return str(row[0])


@pytest.fixture
def original_archive_command(pg15: PgInstance) -> Iterator[str]:
    cmd = str(pg15.psql("SHOW archive_command")[0][0])
    yield cmd
    _set_archive_command(pg15, cmd)


async def _until(
    what: str,
    cond: Callable[[], bool],
    deadline: float = 30.0,
) -> None:
    with anyio.fail_after(deadline):
        while not cond():
            await anyio.sleep(0.1)


async def _run_component(
    comp: Component, ctx: Context, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    await comp.run(ctx, task_status=task_status)


class Running:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.events: list[ArchiveHealthChanged] = []

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.ctx.registry.get_sample_value(name, labels or {})

    def status(self) -> dict[str, Any]:
        return self.ctx.status_sections["archive"]()


async def _collect_events(
    ctx: Context,
    out: list[ArchiveHealthChanged],
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    async with ctx.bus.subscribe() as recv:
        task_status.started()
        async for ev in recv:
            if isinstance(ev, ArchiveHealthChanged):
                out.append(ev)


async def test_broken_archive_command_turns_unhealthy_with_reasons_and_recovers(
    pg15: PgInstance, original_archive_command: str
) -> None:
    cfg = _config(pg15)
    ctx = Context.create(cfg)
    (comp,) = components(ctx)
    r = Running(ctx)
    async with anyio.create_task_group() as tg:
        await tg.start(_collect_events, ctx, r.events)
        with anyio.fail_after(15):
            await tg.start(_run_component, comp, ctx)

        # healthy while archiving works: the switched segment is archived and nothing waits
        seg = await anyio.to_thread.run_sync(_switch_wal, pg15)
        await _until(
            "archived",
            lambda: r.status().get("last_archived_wal") == seg and r.value("pgnode_archive_ready_files") == 0,
        )
        assert r.value("pgnode_archive_expected") == 1
        assert r.value("pgnode_archive_healthy") == 1
        assert r.value("pgnode_archive_lag_bytes") is not None
        assert (
            r.value("pgnode_archive_check_last_success_timestamp_seconds", {"check": "archiver"}) is not None
        )
        failed_before = r.value("pgnode_archive_failed_total") or 0.0

        # broken: failures counted, .ready backlog and its age rise, healthy=0 with the reasons
        await anyio.to_thread.run_sync(_set_archive_command, pg15, "/bin/false")
        t0 = anyio.current_time()
        await anyio.to_thread.run_sync(_switch_wal, pg15)
        await _until("unhealthy", lambda: r.value("pgnode_archive_healthy") == 0)
        detected_s = anyio.current_time() - t0
        assert "archive_failing" in r.status()["reasons"]
        assert r.value("pgnode_archive_failing") == 1
        await _until(
            "failures counted", lambda: (r.value("pgnode_archive_failed_total") or 0) > failed_before
        )
        await anyio.to_thread.run_sync(_switch_wal, pg15)
        await _until("backlog", lambda: (r.value("pgnode_archive_ready_files") or 0) >= 2)
        age1 = r.value("pgnode_archive_oldest_ready_age_seconds") or 0.0
        await _until("backlog too old", lambda: "ready_backlog_too_old" in r.status()["reasons"])
        age2 = r.value("pgnode_archive_oldest_ready_age_seconds") or 0.0
        assert age2 > age1 and age2 > 3
        assert (r.value("pgnode_archive_lag_bytes") or 0) >= 2 * (16 << 20)
        bad = r.status()

        # fixed: healthy again and the backlog drains
        await anyio.to_thread.run_sync(_set_archive_command, pg15, original_archive_command)
        await _until(
            "healthy again",
            lambda: r.value("pgnode_archive_healthy") == 1 and r.value("pgnode_archive_ready_files") == 0,
            deadline=90,
        )
        assert r.value("pgnode_archive_failing") == 0
        tg.cancel_scope.cancel()

    flips = [(e.healthy, e.reasons) for e in r.events]
    assert flips[0] == (True, ())
    assert any(not h and "archive_failing" in reasons for h, reasons in flips)
    assert flips[-1] == (True, ())
    sys.stderr.write(
        f"\narchive: unhealthy {detected_s:.2f}s after the failed switch; while broken "
        f"failed_count={bad['failed_count']} ready_files={bad['ready_files']} "
        f"oldest_ready_age={bad['oldest_ready_age_seconds']:.1f}s lag_bytes={bad['lag_bytes']} "
        f"reasons={bad['reasons']}; flips={len(flips)}\n"
    )


async def test_component_restart_reuses_its_metrics(pg15: PgInstance) -> None:
    ctx = Context.create(_config(pg15))
    (comp,) = components(ctx)
    for _ in range(2):  # a second registration of the same names would raise here
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(15):
                await tg.start(_run_component, comp, ctx)
            tg.cancel_scope.cancel()
    assert ctx.registry.get_sample_value("pgnode_archive_expected") == 1


async def test_unreachable_postgres_is_unknown_not_healthy(pg15: PgInstance) -> None:
    cfg = parse(
        {
            "node": {"name": "n1"},
            "etcd": {"scope": "s"},
            "postgres": {"host": str(pg15.socket_dir), "port": 1, "connect_timeout": "1s"},
            "archive": {"interval": "500ms"},
        }
    )
    ctx = Context.create(cfg)
    (comp,) = components(ctx)
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(15):
            await tg.start(_run_component, comp, ctx)
        assert ctx.registry.get_sample_value("pgnode_archive_healthy") is None
        assert ctx.status_sections["archive"]()["reasons"] == ["postgres_unreachable"]
        tg.cancel_scope.cancel()
    assert await anyio.to_thread.run_sync(archive_cli.main, cfg) == 1


def test_disabled_config_gives_no_component(pg15: PgInstance) -> None:
    assert components(Context.create(_config(pg15, enabled=False))) == []


async def test_archive_check_cli_exit_code_follows_health(
    pg15: PgInstance, original_archive_command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(pg15)
    await anyio.to_thread.run_sync(_switch_wal, pg15)
    await _until(
        "archived",
        lambda: (
            pg15.psql("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")[0][0] == 0
        ),
    )
    assert await anyio.to_thread.run_sync(archive_cli.main, cfg) == 0
    assert "archive: HEALTHY" in capsys.readouterr().out
    await anyio.to_thread.run_sync(_set_archive_command, pg15, "/bin/false")
    await anyio.to_thread.run_sync(_switch_wal, pg15)

    def failing() -> bool:
        return bool(
            pg15.psql(
                "SELECT last_failed_time > coalesce(last_archived_time, '-infinity') FROM pg_stat_archiver"
            )[0][0]
        )

    await _until("failing", failing)
    assert await anyio.to_thread.run_sync(archive_cli.main, cfg) == 1
    out = capsys.readouterr().out
    assert "UNHEALTHY (archive_failing" in out, out
