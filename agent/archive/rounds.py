"""One round of checks, shared by the component's loop and `pg-node-agent archive check`.

Results are cached in an ArchiveView that /metrics, /status and the CLI read; nothing here is
run by a scrape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TypedDict

import psycopg
import structlog

from agent.archive import pg_snapshot
from agent.archive import pgbackrest as pgbr
from agent.archive.checks import (
    Assessment,
    PgSnapshot,
    Thresholds,
    assess,
    failures_since,
    overall,
    repo_behind_segments,
)
from agent.archive.metrics import ArchiveMetrics
from agent.core.config import ArchiveConfig

log = structlog.get_logger("archive")


class PgbackrestStatus(TypedDict):
    info_error: str | None
    status_code: int | None
    status_message: str | None
    last_backup_label: str | None
    last_backup_stop: float | None
    archive_max: str | None
    repo_behind_segments: int | None
    check_ran: bool
    check_reason: str | None


class ArchiveStatus(TypedDict):
    """/status `archive`; what PostgreSQL tells is null until it has been read, `pgbackrest`
    null without a stanza."""

    healthy: bool | None
    reasons: list[str]
    error: str | None
    last_run: dict[str, float]       # per check, epoch seconds
    last_success: dict[str, float]
    expected: bool | None
    in_recovery: bool | None
    archive_mode: str | None
    archive_command_set: bool | None
    archive_timeout_seconds: float | None
    wal_segment_size: int | None
    failing: bool | None
    failed_count: int | None
    last_archived_wal: str | None
    last_failed_wal: str | None
    last_archived_time: str | None
    last_failed_time: str | None
    ready_files: int | None
    oldest_ready_age_seconds: float | None
    lag_bytes: int | None
    rpo_exposure_seconds: float | None
    notes: list[str]
    pgbackrest: PgbackrestStatus | None


@dataclass
class ArchiveView:
    snapshot: PgSnapshot | None = None
    assessment: Assessment | None = None
    healthy: bool | None = None            # None: unknown (PostgreSQL unreachable, not run yet)
    reasons: tuple[str, ...] = ()
    error: str = ""
    info: pgbr.InfoSummary | None = None
    info_reason: str | None = None
    check_ran: bool = False
    check_reason: str | None = None
    repo_behind: int | None = None
    last_run: dict[str, float] = field(default_factory=dict)
    last_success: dict[str, float] = field(default_factory=dict)
    prev_failed_count: int | None = None

    def mark(self, check: str, ok: bool) -> None:
        now = time.time()
        self.last_run[check] = now
        if ok:
            self.last_success[check] = now

    def status(self) -> ArchiveStatus:
        s, a, i = self.snapshot, self.assessment, self.info
        return ArchiveStatus(
            healthy=self.healthy, reasons=list(self.reasons), error=self.error or None,
            last_run=dict(self.last_run), last_success=dict(self.last_success),
            expected=a.expected if a else None, in_recovery=s.in_recovery if s else None,
            archive_mode=s.archive_mode if s else None,
            archive_command_set=bool(s.archive_command or s.archive_library) if s else None,
            archive_timeout_seconds=s.archive_timeout if s else None,
            wal_segment_size=s.wal_segment_size if s else None,
            failing=a.failing if a else None, failed_count=s.archiver.failed_count if s else None,
            last_archived_wal=s.archiver.last_archived_wal if s else None,
            last_failed_wal=s.archiver.last_failed_wal if s else None,
            last_archived_time=_iso(s.archiver.last_archived_time) if s else None,
            last_failed_time=_iso(s.archiver.last_failed_time) if s else None,
            ready_files=s.ready_files if s else None, oldest_ready_age_seconds=s.oldest_ready_age if s else None,
            lag_bytes=a.lag_bytes if a else None, rpo_exposure_seconds=a.rpo_seconds if a else None,
            notes=list(a.notes) if a else [],
            pgbackrest=None if i is None and self.info_reason is None else PgbackrestStatus(
                info_error=self.info_reason, status_code=i.status_code if i else None,
                status_message=i.status_message if i else None,
                last_backup_label=i.last_backup_label if i else None,
                last_backup_stop=i.last_backup_stop if i else None,
                archive_max=i.archive_max if i else None, repo_behind_segments=self.repo_behind,
                check_ran=self.check_ran, check_reason=self.check_reason))


def _iso(d: Any) -> str | None:
    return d.isoformat() if d is not None else None


def thresholds(cfg: ArchiveConfig) -> Thresholds:
    return Thresholds(max_ready_age=float(cfg.max_ready_age), max_ready_files=cfg.max_ready_files)


async def check_postgres(conn: psycopg.AsyncConnection[dict[str, Any]], cfg: ArchiveConfig, view: ArchiveView,
                         m: ArchiveMetrics | None) -> None:
    """Snapshot, assess, count new failures. Raises on a query error (the caller reconnects)."""
    try:
        snap, ready_ok = await pg_snapshot.read(conn)
    except Exception:
        view.mark("archiver", False)
        raise
    view.mark("archiver", True)
    a = assess(snap, thresholds(cfg))
    if a.expected:
        view.mark("ready_files", ready_ok)
    new = failures_since(view.prev_failed_count, snap.archiver.failed_count)
    view.prev_failed_count = snap.archiver.failed_count
    if new and m is not None:
        m.failed.inc(new)
    view.snapshot, view.assessment, view.error = snap, a, ""


async def check_pgbackrest_info(s: pgbr.Settings, view: ArchiveView, m: ArchiveMetrics | None,
                                env: dict[str, str] | None) -> None:
    snap = view.snapshot  # taken before the repo is read: see repo_behind_segments
    res = await pgbr.run_info(s, env)
    reason = res.reason
    if res.ok:
        try:
            view.info = pgbr.parse_info(res.stdout, s.stanza, snap.system_identifier if snap else None)
        except ValueError as e:
            log.warning("pgbackrest_failed", command="info", reason="bad_output", error=str(e))
            reason = "bad_output"
        else:
            if view.info.status_code != 0:
                reason = "stanza_status"
    if reason is not None and m is not None:
        m.pgbackrest_failures.labels("info", reason).inc()
    view.info_reason = reason
    view.mark("pgbackrest_info", reason is None)
    if view.info is not None and snap is not None:
        view.repo_behind = repo_behind_segments(snap.archiver.last_archived_wal, view.info.archive_max,
                                                snap.wal_segment_size)


async def check_pgbackrest_check(s: pgbr.Settings, view: ArchiveView, m: ArchiveMetrics | None,
                                 env: dict[str, str] | None) -> None:
    res = await pgbr.run_check(s, env)
    if res.reason is not None and m is not None:
        m.pgbackrest_failures.labels("check", res.reason).inc()
    view.check_ran, view.check_reason = True, res.reason
    view.mark("pgbackrest_check", res.ok)


def settle(view: ArchiveView) -> tuple[bool | None, bool]:
    """Recompute healthy/reasons from the cached parts; returns (healthy, changed)."""
    old = (view.healthy, view.reasons)
    if view.assessment is None or view.error:
        view.healthy, view.reasons = None, ("postgres_unreachable",) if view.error else ()
    else:
        view.healthy, view.reasons = overall(view.assessment, view.check_reason, view.repo_behind)
    return view.healthy, (view.healthy, view.reasons) != old


def settings(cfg: ArchiveConfig) -> pgbr.Settings | None:
    if not cfg.pgbackrest_stanza:
        return None
    return pgbr.Settings(cfg.pgbackrest_binary, cfg.pgbackrest_stanza, cfg.pgbackrest_config,
                         float(cfg.pgbackrest_timeout))
