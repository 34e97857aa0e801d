"""Pure archive-health decisions over one snapshot of PostgreSQL: no I/O, no event loop.

Failure is a *state* (the last failure is newer than the last success), never a raw
`failed_count > 0`, which stays true forever after one incident. How long that state must last
before someone is paged is the alert rule's `for:`; the agent reports it from the first check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from agent.archive.wal import WalKind, parse_wal_name, pending_bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiverStats:
    """One row of pg_stat_archiver; None is SQL NULL (never archived / never failed / no reset)."""

    archived_count: int = 0
    last_archived_wal: str | None = None
    last_archived_time: datetime | None = None
    failed_count: int = 0
    last_failed_wal: str | None = None
    last_failed_time: datetime | None = None
    stats_reset: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PgSnapshot:
    now: datetime                      # the server's clock_timestamp(), so ages need no clock sync
    in_recovery: bool
    archive_mode: str                  # off | on | always
    archive_command: str = ""
    archive_library: str = ""
    archive_timeout: float = 0.0       # seconds; 0 = never forces a switch
    wal_segment_size: int = 16 << 20
    timeline: int | None = None
    current_lsn: int | None = None     # pg_current_wal_lsn() on a primary, receive/replay LSN on a standby
    system_identifier: int | None = None
    archiver: ArchiverStats = field(default_factory=ArchiverStats)
    ready_files: int | None = None     # None: pg_ls_archive_statusdir() was not readable
    oldest_ready_age: float | None = None


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_ready_age: float
    max_ready_files: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Assessment:
    expected: bool
    healthy: bool
    reasons: tuple[str, ...] = ()
    failing: bool = False
    lag_bytes: int | None = None
    rpo_seconds: float | None = None
    notes: tuple[str, ...] = ()        # worth knowing, not unhealthy (archive_timeout=0)


def archive_expected(in_recovery: bool, archive_mode: str) -> bool:
    """A primary archives with on/always; a standby only with always (with on, its walreceiver
    marks segments .done and its archiver never runs, so its stats are stale leftovers)."""
    if in_recovery:
        return archive_mode == "always"
    return archive_mode in ("on", "always")


def is_failing(a: ArchiverStats, timeline: int | None) -> bool:
    """The last attempt failed and nothing has been archived since (or ever).

    A failed `.history` file of this or an older timeline is benign (Barman's rule): after a
    failover the old history file often exists in the archive already and the push is refused.
    """
    if a.last_failed_time is None or a.last_failed_wal is None:
        return False
    if a.last_archived_time is not None and a.last_failed_time <= a.last_archived_time:
        return False
    name = parse_wal_name(a.last_failed_wal)
    return not (name is not None and name.kind is WalKind.HISTORY and timeline is not None
                and name.timeline <= timeline)


def assess(s: PgSnapshot, t: Thresholds) -> Assessment:
    expected = archive_expected(s.in_recovery, s.archive_mode)
    notes = ("archive_timeout_zero",) if expected and s.archive_timeout <= 0 else ()
    if not expected:
        return Assessment(expected=False, healthy=True, notes=notes)
    reasons: list[str] = []
    if not s.archive_command and not s.archive_library:
        reasons.append("archive_command_unset")   # archiving paused: WAL piles up in pg_wal
    failing = is_failing(s.archiver, s.timeline)
    if failing:
        reasons.append("archive_failing")
    if s.oldest_ready_age is not None and s.oldest_ready_age > t.max_ready_age:
        reasons.append("ready_backlog_too_old")
    if s.ready_files is not None and s.ready_files > t.max_ready_files:
        reasons.append("ready_backlog_too_large")
    lag = pending_bytes(s.current_lsn, s.archiver.last_archived_wal, s.wal_segment_size)
    return Assessment(expected=True, healthy=not reasons, reasons=tuple(reasons), failing=failing,
                      lag_bytes=lag, rpo_seconds=rpo_seconds(lag, s.archiver.last_archived_time, s.now),
                      notes=notes)


def rpo_seconds(lag_bytes: int | None, last_archived: datetime | None, now: datetime) -> float | None:
    """How long WAL has been waiting unarchived: 0 with nothing pending (an idle, fully archived
    primary is not exposed however old its last archive is), else the time since the last success."""
    if lag_bytes is None:
        return None
    if lag_bytes == 0:
        return 0.0
    if last_archived is None:
        return None
    return max(0.0, (now - last_archived).total_seconds())


def failures_since(previous: int | None, current: int) -> int:
    """New failures between two readings of pg_stat_archiver.failed_count. The first reading is a
    baseline (an agent restart must not recount history); a drop is a stats reset or crash
    recovery, after which everything counted so far is new."""
    if previous is None:
        return 0
    return current - previous if current >= previous else current


def repo_behind_segments(last_archived_wal: str | None, repo_max: str | None,
                         segment_size: int) -> int | None:
    """Segments PostgreSQL marked archived that the repository's newest WAL does not reach: WAL
    dropped by async archive-push with archive-push-queue-max, or pushed to another repo. Read the
    PostgreSQL side *before* the repository, so a segment archived in between cannot look missing."""
    if not last_archived_wal or not repo_max:
        return None
    pg, repo = parse_wal_name(last_archived_wal), parse_wal_name(repo_max)
    if pg is None or repo is None:
        return None
    pg_through = pg.archived_through(segment_size)
    repo_through = repo.archived_through(segment_size)
    if pg_through is None or repo_through is None:
        return None
    return max(0, (pg_through - repo_through) // segment_size)


def overall(a: Assessment, check_reason: str | None, repo_behind: int | None) -> tuple[bool, tuple[str, ...]]:
    """PostgreSQL's view plus the pgBackRest canary and cross-check, where archiving is expected."""
    if not a.expected:
        return True, ()
    reasons = list(a.reasons)
    if check_reason is not None:
        reasons.append("pgbackrest_check_failed")
    if repo_behind:
        reasons.append("repo_missing_archived_wal")
    return not reasons, tuple(reasons)
