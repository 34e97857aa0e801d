"""`pg-node-agent archive check`: one round of every applicable check, printed for a human.

Exit 0 when healthy (or when this node is not expected to archive), 1 when unhealthy or when
PostgreSQL cannot be checked at all.
"""

from __future__ import annotations

import sys

import anyio
import psycopg

from agent.archive import rounds
from agent.archive.rounds import ArchiveView
from agent.core import pg
from agent.core.config import Config


async def _check(cfg: Config) -> ArchiveView:
    view = ArchiveView()
    try:
        conn = await pg.connect(cfg.postgres, "archive")
    except (psycopg.Error, OSError) as e:
        view.error = str(e).strip() or type(e).__name__
        return view
    try:
        await rounds.check_postgres(conn, cfg.archive, view, None)
    except psycopg.Error as e:
        view.error = str(e).strip()
    finally:
        await conn.close()
    s = rounds.settings(cfg.archive)
    if s is not None and view.snapshot is not None and view.assessment and view.assessment.expected:
        env = pg.subprocess_env(cfg.postgres, "pg-node-agent/archive", cfg.state_dir)
        await rounds.check_pgbackrest_info(s, view, None, env)
        if not view.snapshot.in_recovery:
            await rounds.check_pgbackrest_check(s, view, None, env)
    rounds.settle(view)
    return view


def render(view: ArchiveView) -> str:
    lines: list[str] = []
    if view.error:
        return f"archive: UNKNOWN, PostgreSQL could not be checked: {view.error}\n"
    s, a = view.snapshot, view.assessment
    assert s is not None and a is not None  # noqa: S101 - no error means a snapshot was taken
    role = "standby" if s.in_recovery else "primary"
    if not a.expected:
        lines.append(f"archive: not expected on this node ({role}, archive_mode={s.archive_mode}); "
                     "nothing to check")
        return "\n".join(lines) + "\n"
    lines.append(f"archive: {'HEALTHY' if view.healthy else 'UNHEALTHY'}"
                 + (f" ({', '.join(view.reasons)})" if view.reasons else ""))
    ar = s.archiver
    lines += [
        f"  node            {role}, archive_mode={s.archive_mode}, archive_timeout={s.archive_timeout:g}s, "
        f"wal_segment_size={s.wal_segment_size >> 20} MB",
        f"  last archived   {ar.last_archived_wal or '-'} at {ar.last_archived_time or '-'}",
        f"  last failed     {ar.last_failed_wal or '-'} at {ar.last_failed_time or '-'} "
        f"(failed_count {ar.failed_count}{', FAILING now' if a.failing else ''})",
        f"  .ready backlog  {_fmt(s.ready_files)} files, oldest {_fmt(s.oldest_ready_age, 's')}",
        f"  not archived    {_fmt(a.lag_bytes, ' bytes')}, waiting {_fmt(a.rpo_seconds, 's')}",
    ]
    if "archive_timeout_zero" in a.notes:
        lines.append("  note            archive_timeout=0: a quiet primary may keep committed WAL "
                     "unarchived for long")
    if view.info is not None or view.info_reason is not None:
        i = view.info
        lines.append(f"  pgbackrest info {'ok' if view.info_reason is None else view.info_reason}"
                     + (f", status {i.status_code} ({i.status_message}), "
                        f"newest backup {i.last_backup_label or '-'}, "
                        f"archive max {i.archive_max or '-'}, repo behind {_fmt(view.repo_behind)} segments"
                        if i else ""))
    if view.check_ran:
        lines.append(f"  pgbackrest check {'ok' if view.check_reason is None else view.check_reason}")
    return "\n".join(lines) + "\n"


def _fmt(v: float | int | None, unit: str = "") -> str:
    if v is None:
        return "unknown"
    return f"{v:.0f}{unit}" if isinstance(v, float) else f"{v}{unit}"


def main(cfg: Config) -> int:
    view = anyio.run(_check, cfg, backend="asyncio")
    sys.stdout.write(render(view))
    return 0 if view.healthy is not False and not view.error else 1
