from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.archive.checks import (
    ArchiverStats,
    Assessment,
    PgSnapshot,
    Thresholds,
    archive_expected,
    assess,
    failures_since,
    is_failing,
    overall,
    repo_behind_segments,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TH = Thresholds(max_ready_age=300, max_ready_files=100)
SEG = 16 << 20


def snap(**kw: object) -> PgSnapshot:
    base: dict[str, object] = dict(
        now=T0,
        in_recovery=False,
        archive_mode="on",
        archive_command="cp %p /a/%f",
        archive_timeout=60.0,
        timeline=1,
        current_lsn=0x0_0600_0000,
        archiver=ArchiverStats(
            archived_count=5,
            last_archived_wal="000000010000000000000005",
            last_archived_time=T0 - timedelta(seconds=30),
        ),
        ready_files=0,
        oldest_ready_age=0.0,
    )
    base.update(kw)
    return PgSnapshot(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("in_recovery", "mode", "expected"),
    [
        (False, "on", True),
        (False, "always", True),
        (False, "off", False),
        (True, "on", False),
        (True, "always", True),
        (True, "off", False),
    ],
)
def test_archive_expected_by_role_and_mode(in_recovery: bool, mode: str, expected: bool) -> None:
    assert archive_expected(in_recovery, mode) is expected


def test_healthy_primary_has_no_reasons() -> None:
    a = assess(snap(), TH)
    assert a == Assessment(expected=True, healthy=True, lag_bytes=0, rpo_seconds=0.0)


def test_failure_newer_than_last_success_is_failing() -> None:
    st = ArchiverStats(
        archived_count=5,
        last_archived_wal="000000010000000000000005",
        last_archived_time=T0 - timedelta(minutes=5),
        failed_count=3,
        last_failed_wal="000000010000000000000006",
        last_failed_time=T0 - timedelta(seconds=10),
    )
    a = assess(snap(archiver=st), TH)
    assert a.failing and not a.healthy and a.reasons == ("archive_failing",)


def test_old_failure_followed_by_success_is_not_failing() -> None:
    # a transient blip: failed_count stays > 0 forever, but the state is fine again
    st = ArchiverStats(
        archived_count=6,
        last_archived_wal="000000010000000000000006",
        last_archived_time=T0 - timedelta(seconds=5),
        failed_count=1,
        last_failed_wal="000000010000000000000006",
        last_failed_time=T0 - timedelta(seconds=60),
    )
    assert not is_failing(st, 1)


def test_failures_with_nothing_ever_archived_are_failing() -> None:
    st = ArchiverStats(failed_count=2, last_failed_wal="000000010000000000000001", last_failed_time=T0)
    assert is_failing(st, 1)


def test_stats_reset_is_not_failing() -> None:
    assert not is_failing(ArchiverStats(stats_reset=T0), 1)


@pytest.mark.parametrize(("tli", "failing"), [(2, False), (3, False), (1, True)])
def test_history_failure_of_current_or_older_timeline_is_benign(tli: int, failing: bool) -> None:
    st = ArchiverStats(failed_count=1, last_failed_wal="00000002.history", last_failed_time=T0)
    assert is_failing(st, tli) is failing


def test_replica_with_archive_mode_on_never_reports_primary_failures() -> None:
    st = ArchiverStats(failed_count=9, last_failed_wal="000000010000000000000006", last_failed_time=T0)
    a = assess(snap(in_recovery=True, archiver=st, ready_files=50, oldest_ready_age=9999.0), TH)
    assert a == Assessment(expected=False, healthy=True)


def test_backlog_too_old_and_too_large_are_reasons() -> None:
    a = assess(snap(ready_files=101, oldest_ready_age=301.0), TH)
    assert a.reasons == ("ready_backlog_too_old", "ready_backlog_too_large")


def test_idle_primary_with_empty_backlog_is_healthy_however_old_the_last_archive() -> None:
    st = ArchiverStats(
        archived_count=5,
        last_archived_wal="000000010000000000000005",
        last_archived_time=T0 - timedelta(hours=24),
    )
    a = assess(snap(archiver=st, current_lsn=0x0_0600_0000), TH)
    assert a.healthy and a.lag_bytes == 0 and a.rpo_seconds == 0.0


def test_rpo_exposure_is_time_since_last_archive_while_wal_is_pending() -> None:
    st = ArchiverStats(
        archived_count=5,
        last_archived_wal="000000010000000000000005",
        last_archived_time=T0 - timedelta(minutes=20),
    )
    a = assess(snap(archiver=st, current_lsn=0x0_0600_2000), TH)
    assert a.lag_bytes == 0x2000 and a.rpo_seconds == 1200.0


def test_null_last_archived_time_is_unknown_not_zero() -> None:
    a = assess(snap(archiver=ArchiverStats()), TH)
    assert a.lag_bytes is None and a.rpo_seconds is None and a.healthy


def test_unset_archive_command_is_unhealthy() -> None:
    assert assess(snap(archive_command=""), TH).reasons == ("archive_command_unset",)


def test_archive_timeout_zero_is_a_note_not_a_reason() -> None:
    a = assess(snap(archive_timeout=0.0), TH)
    assert a.healthy and a.notes == ("archive_timeout_zero",)


def test_failure_counter_baseline_then_deltas_then_reset() -> None:
    assert failures_since(None, 40) == 0  # agent (re)start: history is not recounted
    assert failures_since(40, 43) == 3
    assert failures_since(43, 43) == 0
    assert failures_since(43, 2) == 2  # stats reset / crash recovery: all of it is new


def test_repo_behind_when_postgres_marked_more_archived_than_repo_holds() -> None:
    assert repo_behind_segments("000000010000000000000009", "000000010000000000000006", SEG) == 3
    assert repo_behind_segments("000000010000000000000006", "000000010000000000000009", SEG) == 0
    assert repo_behind_segments("00000002.history", "000000010000000000000009", SEG) is None
    assert repo_behind_segments("000000010000000000000006", None, SEG) is None


def test_overall_adds_pgbackrest_reasons_only_where_archiving_is_expected() -> None:
    a = assess(snap(), TH)
    assert overall(a, "archive_timeout", 0) == (False, ("pgbackrest_check_failed",))
    assert overall(a, None, 2) == (False, ("repo_missing_archived_wal",))
    assert overall(Assessment(expected=False, healthy=True), "archive_timeout", 5) == (True, ())
