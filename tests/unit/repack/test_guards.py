from __future__ import annotations

from pathlib import Path

from agent.core.config import Duration, RepackConfig
from agent.core.events import (
    DcsAvailability,
    Event,
    FailoverPending,
    LeaderChanged,
    PatroniObserved,
    PostgresAvailability,
    Role,
)
from agent.core.state import NodeState, reduce
from agent.repack.guards import Guard, Sample, Trip, Volume, evaluate, sample_trips, state_trips, volumes

CFG = RepackConfig(enabled=True, max_replication_lag_bytes=1000, max_lock_waiters=1, max_transaction_age=Duration(60),
                   min_free_disk_ratio=2.2, max_archive_ready_files=10)
BIG = (Volume("/data", 10**12, 10, True),)
OK = Sample(replication_lag_bytes=0, lock_waiters=0, oldest_xact_age_seconds=1.0, archive_ready_files=0,
            volumes=BIG)


def _state(*extra: Event) -> NodeState:
    s = NodeState(member="n1")
    for ev in (DcsAvailability(up=True, endpoint="e"), LeaderChanged(leader="n1", previous=None, revision=1),
               PatroniObserved(up=True, role=Role.PRIMARY), PostgresAvailability(up=True, in_recovery=False),
               *extra):
        s = reduce(s, ev)
    return s


def _guards(trips: list[Trip]) -> list[Guard]:
    return [t.guard for t in trips]


def test_a_confirmed_primary_with_healthy_figures_may_run() -> None:
    assert evaluate(CFG, _state(), OK, table_bytes=10**6, window_end=200.0, now=100.0, running=True,
                    lock_held=True) == []


def test_a_replica_may_not_run() -> None:
    s = _state(PatroniObserved(up=True, role=Role.REPLICA), PostgresAvailability(up=True, in_recovery=True))
    assert _guards(state_trips(s)) == [Guard.CONFIRMED_PRIMARY]


def test_leader_key_of_another_member_stops_the_run() -> None:
    s = _state(LeaderChanged(leader="n2", previous="n1", revision=2))
    assert Guard.CONFIRMED_PRIMARY in _guards(state_trips(s))


def test_pending_failover_key_stops_the_run() -> None:
    s = _state(FailoverPending(pending=True, candidate="n2", revision=3))
    trips = state_trips(s)
    assert _guards(trips) == [Guard.FAILOVER_PENDING]
    assert trips[0].log_fields() == {"guard": "failover_pending", "value": "n2", "threshold": "none"}


def test_paused_cluster_stops_the_run() -> None:
    assert _guards(state_trips(_state(PatroniObserved(up=True, role=Role.PRIMARY, paused=True)))) == [
        Guard.CLUSTER_PAUSED]


def test_dcs_outage_stops_the_run() -> None:
    assert Guard.DCS_UP in _guards(state_trips(_state(DcsAvailability(up=False, endpoint="e"))))


def test_replication_lag_trip_carries_value_and_threshold_in_bytes() -> None:
    trips = sample_trips(CFG, Sample(2000, 0, 0.0, 0, BIG), 10, running=True)
    assert trips[0].log_fields() == {"guard": "replication_lag", "value_bytes": 2000, "threshold_bytes": 1000}


def test_lag_at_the_threshold_does_not_trip() -> None:
    assert sample_trips(CFG, Sample(1000, 0, 0.0, 0, BIG), 10, running=True) == []


def test_one_waiter_behind_the_table_trips_with_threshold_one() -> None:
    assert _guards(sample_trips(CFG, Sample(0, 1, 0.0, 0, BIG), 10, running=True)) == [Guard.LOCK_WAITERS]


def test_old_transaction_trips_in_seconds() -> None:
    t = sample_trips(CFG, Sample(0, 0, 61.0, 0, BIG), 10, running=True)
    assert t[0].log_fields() == {"guard": "transaction_age", "value_seconds": 61.0, "threshold_seconds": 60.0}


def test_archive_backlog_trips() -> None:
    trips = sample_trips(CFG, Sample(0, 0, 0.0, 11, BIG), 10, running=True)
    assert _guards(trips) == [Guard.ARCHIVE_BACKLOG]


def test_free_disk_needs_the_full_ratio_before_start_but_only_headroom_while_running() -> None:
    sample = Sample(0, 0, 0.0, 0, (Volume("/data", 1000, 1000, True),))
    assert _guards(sample_trips(CFG, sample, 1000, running=False)) == [Guard.FREE_DISK]  # needs 2200
    assert sample_trips(CFG, sample, 1000, running=True) == []  # needs 200


def test_window_end_trips() -> None:
    trips = evaluate(CFG, _state(), OK, table_bytes=1, window_end=100.0, now=100.0, running=True, lock_held=True)
    assert _guards(trips) == [Guard.WINDOW_END]


def test_unreadable_figures_stop_the_run() -> None:
    trips = evaluate(CFG, _state(), None, table_bytes=1, window_end=200.0, now=100.0, running=True, lock_held=True)
    assert _guards(trips) == [Guard.GUARD_SAMPLE]


def test_lost_repack_lock_stops_the_run() -> None:
    trips = evaluate(CFG, _state(), OK, table_bytes=1, window_end=200.0, now=100.0, running=True,
                     lock_held=False)
    assert _guards(trips) == [Guard.REPACK_LOCK]


def test_a_tablespace_short_of_space_trips_though_the_data_directory_has_plenty() -> None:
    vols = (Volume("/data", 10**12, 0, True), Volume("/ts/small", 1000, 1000, False))
    trips = sample_trips(CFG, Sample(0, 0, 0.0, 0, vols), 1000, running=False)
    assert trips[0].log_fields() == {"guard": "free_disk", "value_bytes": 1000, "threshold_bytes": 1100,
                                     "path": "/ts/small"}


def test_pg_wal_on_its_own_file_system_must_hold_the_rewrites_wal() -> None:
    vols = (Volume("/data", 10**12, 1000, False), Volume("/wal", 1000, 0, True))
    assert [t.path for t in sample_trips(CFG, Sample(0, 0, 0.0, 0, vols), 1000, running=False)] == ["/wal"]
    roomy = (Volume("/data", 10**12, 1000, False), Volume("/wal", 1200, 0, True))
    assert sample_trips(CFG, Sample(0, 0, 0.0, 0, roomy), 1000, running=False) == []


def test_volumes_group_paths_by_file_system_and_mark_pg_wal(tmp_path: Path) -> None:
    (tmp_path / "pg_wal").mkdir()
    vols = volumes(str(tmp_path), [("", 700), (str(tmp_path / "pg_wal"), 300)])
    assert len(vols) == 1
    assert vols[0].table_bytes == 1000 and vols[0].wal and vols[0].free_bytes > 0


def test_repack_disabled_by_a_reload_is_a_trip_for_every_caller() -> None:
    off = RepackConfig(enabled=False)
    trips = evaluate(off, _state(), OK, table_bytes=1, window_end=200.0, now=100.0, running=False, lock_held=True)
    assert _guards(trips) == [Guard.DISABLED]
