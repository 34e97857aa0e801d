"""Guards: may a pg_repack run start, and may it go on? Pure decisions over a NodeState and a
sample of figures read from PostgreSQL, so they are unit-tested without a database or a loop.

The figures are read by one cheap query (`SAMPLE_SQL`) on the agent's own session in the target
database; `pg_repack`'s own sessions (application_name `pg_repack`) are left out of every figure:
its lock attempts and its own transaction must not trip the guards that protect clients from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psycopg

from agent.core.config import RepackConfig
from agent.core.state import NodeState
from agent.repack.metrics import Guard


@dataclass(frozen=True, slots=True)
class Sample:
    replication_lag_bytes: int      # largest replay lag among the replicas
    lock_waiters: int               # client sessions waiting on the table behind pg_repack
    oldest_xact_age_seconds: float  # oldest open client transaction
    archive_ready_files: int        # .ready files in pg_wal/archive_status
    free_disk_bytes: int            # free space on the data directory's file system


@dataclass(frozen=True, slots=True)
class Trip:
    guard: Guard
    value: float | str
    threshold: float | str
    unit: str = ""   # "bytes", "seconds", "" for counts and states

    def log_fields(self) -> dict[str, Any]:
        """`guard=replication_lag value_bytes=… threshold_bytes=…`: units in the key."""
        suffix = f"_{self.unit}" if self.unit else ""
        return {"guard": self.guard.value, f"value{suffix}": self.value, f"threshold{suffix}": self.threshold}


def state_trips(s: NodeState) -> list[Trip]:
    """Who may run at all: a confirmed primary, no pending failover, not paused, DCS reachable."""
    trips: list[Trip] = []
    if not s.dcs_up:
        trips.append(Trip(Guard.DCS_UP, "down", "up"))
    if not s.confirmed_primary:
        trips.append(Trip(Guard.CONFIRMED_PRIMARY, f"{s.role.value}/{s.leader_view.value}", "primary/me"))
    if s.failover_pending:
        trips.append(Trip(Guard.FAILOVER_PENDING, s.failover_candidate or "any", "none"))
    if s.paused:
        trips.append(Trip(Guard.CLUSTER_PAUSED, "paused", "running"))
    return trips


def disk_needed(cfg: RepackConfig, table_bytes: int, running: bool) -> int:
    """Before a start, free disk must hold `ratio` x (table + indexes): the copy plus its WAL
    (~1.1x the rebuilt size, measured) plus headroom. While running, the copy and WAL already
    consume up to twice that size, so only the headroom (ratio - 2, at least 0.1) must stay free."""
    factor = cfg.min_free_disk_ratio if not running else max(cfg.min_free_disk_ratio - 2.0, 0.1)
    return int(factor * table_bytes)


def sample_trips(cfg: RepackConfig, x: Sample, table_bytes: int, running: bool) -> list[Trip]:
    trips: list[Trip] = []
    if x.replication_lag_bytes > cfg.max_replication_lag_bytes:
        trips.append(Trip(Guard.REPLICATION_LAG, x.replication_lag_bytes, cfg.max_replication_lag_bytes,
                          "bytes"))
    if x.lock_waiters >= cfg.max_lock_waiters:
        trips.append(Trip(Guard.LOCK_WAITERS, x.lock_waiters, cfg.max_lock_waiters))
    if x.oldest_xact_age_seconds > cfg.max_transaction_age:
        trips.append(Trip(Guard.TRANSACTION_AGE, round(x.oldest_xact_age_seconds, 1),
                          float(cfg.max_transaction_age), "seconds"))
    if x.archive_ready_files > cfg.max_archive_ready_files:
        trips.append(Trip(Guard.ARCHIVE_BACKLOG, x.archive_ready_files, cfg.max_archive_ready_files))
    need = disk_needed(cfg, table_bytes, running)
    if x.free_disk_bytes < need:
        trips.append(Trip(Guard.FREE_DISK, x.free_disk_bytes, need, "bytes"))
    return trips


def window_trip(window_end: float, now: float) -> list[Trip]:
    """Wall-clock Unix seconds: a run must not outlive its window."""
    if now >= window_end:
        return [Trip(Guard.WINDOW_END, round(window_end - now, 1), 0.0, "seconds")]
    return []


def evaluate(cfg: RepackConfig, state: NodeState, sample: Sample | None, *, table_bytes: int,
             window_end: float, now: float, running: bool, lock_held: bool = True) -> list[Trip]:
    """Every guard that trips now; empty means go on. `sample=None` means it could not be read."""
    trips = state_trips(state)
    if not lock_held:
        trips.append(Trip(Guard.REPACK_LOCK, "lost", "held"))
    trips += window_trip(window_end, now)
    if sample is None:
        trips.append(Trip(Guard.GUARD_SAMPLE, "unreadable", "readable"))
    else:
        trips += sample_trips(cfg, sample, table_bytes, running)
    return trips


# --------------------------------------------------------------------------- reading the figures

# Waiters: client sessions with an ungranted lock on the table that a pg_repack session blocks.
SAMPLE_SQL = """
SELECT
  (SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(replay_lsn, '0/0'))), 0)::bigint
     FROM pg_stat_replication) AS replication_lag_bytes,
  (SELECT count(DISTINCT w.pid)
     FROM pg_locks w JOIN pg_stat_activity a ON a.pid = w.pid
    WHERE w.relation = %(oid)s
      AND w.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND NOT w.granted AND a.application_name <> 'pg_repack'
      AND EXISTS (SELECT 1 FROM pg_stat_activity b
                   WHERE b.pid = ANY (pg_blocking_pids(w.pid)) AND b.application_name = 'pg_repack')
  ) AS lock_waiters,
  (SELECT coalesce(extract(epoch FROM max(clock_timestamp() - xact_start)), 0)::float8
     FROM pg_stat_activity
    WHERE xact_start IS NOT NULL AND backend_type = 'client backend'
      AND application_name <> 'pg_repack' AND pid <> pg_backend_pid()) AS oldest_xact_age_seconds,
  (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%%.ready')::int AS archive_ready_files
"""


def free_disk_bytes(data_directory: str) -> int:
    """The agent runs on the database host, so the data directory is a local path."""
    st = os.statvfs(data_directory)
    return st.f_bavail * st.f_frsize


async def data_directory(conn: psycopg.AsyncConnection[dict[str, Any]]) -> str:
    cur = await conn.execute("SHOW data_directory")
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("query returned no row")
    return str(row["data_directory"])


async def read_sample(conn: psycopg.AsyncConnection[dict[str, Any]], table_oid: int, data_dir: str) -> Sample:
    cur = await conn.execute(SAMPLE_SQL, {"oid": table_oid})
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("query returned no row")
    return Sample(replication_lag_bytes=int(row["replication_lag_bytes"]),
                  lock_waiters=int(row["lock_waiters"]),
                  oldest_xact_age_seconds=float(row["oldest_xact_age_seconds"]),
                  archive_ready_files=int(row["archive_ready_files"]),
                  free_disk_bytes=free_disk_bytes(data_dir))
