"""One round of checks, shared by the component's loop and `pg-node-agent archive check`.

Results are cached in an ArchiveView that /metrics, /status and the CLI read; nothing here is
run by a scrape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog

from agent.archive import collect
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

    def status(self) -> dict[str, Any]:
        s, a = self.snapshot, self.assessment
        out: dict[str, Any] = {"healthy": self.healthy, "reasons": list(self.reasons),
                               "error": self.error or None, "last_run": dict(self.last_run),
                               "last_success": dict(self.last_success)}
        if s is not None and a is not None:
            out.update(
                expected=a.expected, in_recovery=s.in_recovery, archive_mode=s.archive_mode,
                archive_command_set=bool(s.archive_command or s.archive_library),
                archive_timeout_seconds=s.archive_timeout, wal_segment_size=s.wal_segment_size,
                failing=a.failing, failed_count=s.archiver.failed_count,
                last_archived_wal=s.archiver.last_archived_wal, last_failed_wal=s.archiver.last_failed_wal,
                last_archived_time=_iso(s.archiver.last_archived_time),
                last_failed_time=_iso(s.archiver.last_failed_time),
                ready_files=s.ready_files, oldest_ready_age_seconds=s.oldest_ready_age,
                lag_bytes=a.lag_bytes, rpo_exposure_seconds=a.rpo_seconds, notes=list(a.notes),
            )
        if self.info is not None or self.info_reason is not None:
            i = self.info
            out["pgbackrest"] = {
                "info_error": self.info_reason, "status_code": i.status_code if i else None,
                "status_message": i.status_message if i else None,
                "last_backup_label": i.last_backup_label if i else None,
                "last_backup_stop": i.last_backup_stop if i else None,
                "archive_max": i.archive_max if i else None, "repo_behind_segments": self.repo_behind,
                "check_ran": self.check_ran, "check_reason": self.check_reason,
            }
        return out


def _iso(d: Any) -> str | None:
    return d.isoformat() if d is not None else None


def thresholds(cfg: ArchiveConfig) -> Thresholds:
    return Thresholds(max_ready_age=float(cfg.max_ready_age), max_ready_files=cfg.max_ready_files)


async def check_postgres(conn: psycopg.AsyncConnection[dict[str, Any]], cfg: ArchiveConfig, view: ArchiveView,
                         m: ArchiveMetrics | None) -> None:
    """Snapshot, assess, count new failures. Raises on a query error (the caller reconnects)."""
    try:
        snap, ready_ok = await collect.snapshot(conn)
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
