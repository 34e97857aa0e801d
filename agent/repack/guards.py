"""Guards: may a pg_repack run start, and may it go on? Pure decisions over a NodeState and a
sample of figures read from PostgreSQL, so they are unit-tested without a database or a loop.

The figures are read by two cheap queries (`SAMPLE_SQL`, `PLACEMENT_SQL`) plus statvfs, on a
session of the run's own in the target database (`GuardSession`); `pg_repack`'s own sessions
(application_name `pg_repack`) are left out of every figure: its lock attempts and its own
transaction must not trip the guards that protect clients from it.

One path for everyone who asks "may a run start": the run and `repack plan` read a `GuardSession`
built from the same RepackConfig and fold it through `evaluate`; the candidate pre-check measures
disk with the same `read_volumes` and `disk_trip`. A second reading of a setting is how they drifted.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import anyio
import psycopg
from psycopg import sql

from agent.core.config import RepackConfig
from agent.core.state import NodeState

SAMPLE_TIMEOUT = 1.0  # seconds; server-side bound of one guard sample


class Guard(StrEnum):
    CONFIRMED_PRIMARY = "confirmed_primary"
    FAILOVER_PENDING = "failover_pending"
    CLUSTER_PAUSED = "cluster_paused"
    DCS_UP = "dcs_up"
    REPACK_LOCK = "repack_lock"
    REPLICATION_LAG = "replication_lag"
    LOCK_WAITERS = "lock_waiters"
    TRANSACTION_AGE = "transaction_age"
    FREE_DISK = "free_disk"
    ARCHIVE_BACKLOG = "archive_backlog"
    WINDOW_END = "window_end"
    GUARD_SAMPLE = "guard_sample"  # the guard figures could not be read: not knowing means stop
    DISABLED = "disabled"          # repack.enabled turned false by a reload


@dataclass(frozen=True, slots=True)
class Volume:
    """One file system the run writes to: a tablespace of the table or its indexes, or pg_wal."""
    path: str          # a directory on it (the first one found)
    free_bytes: int
    table_bytes: int   # bytes of the table, its TOAST and its indexes stored here (the copy goes here too)
    wal: bool          # pg_wal is on it


@dataclass(frozen=True, slots=True)
class Sample:
    replication_lag_bytes: int      # largest replay lag among the physical standbys that replay
    lock_waiters: int               # client sessions waiting on the table behind pg_repack
    oldest_xact_age_seconds: float  # oldest open client transaction
    archive_ready_files: int        # .ready files in pg_wal/archive_status
    volumes: tuple[Volume, ...]     # every file system the copy or its WAL lands on


@dataclass(frozen=True, slots=True)
class Trip:
    guard: Guard
    value: float | str
    threshold: float | str
    unit: str = ""   # "bytes", "seconds", "" for counts and states
    path: str = ""   # free_disk: a directory on the file system short of space

    def log_fields(self) -> dict[str, Any]:
        """`guard=replication_lag value_bytes=… threshold_bytes=…`: units in the key."""
        suffix = f"_{self.unit}" if self.unit else ""
        out: dict[str, Any] = {"guard": self.guard.value, f"value{suffix}": self.value,
                               f"threshold{suffix}": self.threshold}
        if self.path:
            out["path"] = self.path
        return out


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


WAL_FACTOR = 1.1  # WAL written by a rewrite: ~1.08x the rebuilt size (measured, wal_level=replica)


def disk_needed(cfg: RepackConfig, v: Volume, table_bytes: int, running: bool) -> int:
    """Free space one file system must keep. Before a start, `ratio` x (table + indexes) in all: the
    copy lands where each part lives now, its WAL (~1.1x the whole) in pg_wal, and the rest is
    headroom; on one file system that is `ratio` x the table, as it always was. While running, the
    copy and WAL already take up their share, so only the headroom (ratio - 2, at least 0.1) must
    stay free, split the same way."""
    if running:
        half = max(cfg.min_free_disk_ratio - 2.0, 0.1) / 2
        return int(half * v.table_bytes + (half * table_bytes if v.wal else 0))
    copy = max(cfg.min_free_disk_ratio - WAL_FACTOR, 1.0)
    return int(copy * v.table_bytes + (WAL_FACTOR * table_bytes if v.wal else 0))


def disk_trip(cfg: RepackConfig, vols: Sequence[Volume], table_bytes: int, running: bool) -> Trip | None:
    """The first file system short of space, if any: the run's guard and the candidate pre-check."""
    for v in vols:
        need = disk_needed(cfg, v, table_bytes, running)
        if v.free_bytes < need:
            return Trip(Guard.FREE_DISK, v.free_bytes, need, "bytes", v.path)
    return None


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
    if (disk := disk_trip(cfg, x.volumes, table_bytes, running)) is not None:
        trips.append(disk)
    return trips


def window_trip(window_end: float, now: float) -> list[Trip]:
    """Wall-clock Unix seconds: a run must not outlive its window."""
    if now >= window_end:
        return [Trip(Guard.WINDOW_END, round(window_end - now, 1), 0.0, "seconds")]
    return []


def fast_trips(cfg: RepackConfig, state: NodeState, *, window_end: float, now: float,
               lock_held: bool) -> list[Trip]:
    """What stops a run without asking PostgreSQL: node state, window, a reload, the lock."""
    trips = state_trips(state) + window_trip(window_end, now)
    if not cfg.enabled:
        trips.append(Trip(Guard.DISABLED, "false", "true"))
    if not lock_held:
        trips.append(Trip(Guard.REPACK_LOCK, "lost", "held"))
    return trips


def evaluate(cfg: RepackConfig, state: NodeState, sample: Sample | None, *, table_bytes: int,
             window_end: float, now: float, running: bool, lock_held: bool) -> list[Trip]:
    """Every guard that trips now; empty means go on. `sample=None` means it could not be read."""
    trips = fast_trips(cfg, state, window_end=window_end, now=now, lock_held=lock_held)
    if sample is None:
        trips.append(Trip(Guard.GUARD_SAMPLE, "unreadable", "readable"))
    else:
        trips += sample_trips(cfg, sample, table_bytes, running)
    return trips


# --------------------------------------------------------------------------- reading the figures

# Lag: only physical standbys that replay (walsenders without a database; pg_receivewal and Barman
# report no replay position, and a NULL must not read as "behind by everything ever written").
# Waiters: client sessions with an ungranted lock on the table that a pg_repack session blocks.
SAMPLE_SQL = """
SELECT
  (SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)), 0)::bigint
     FROM pg_stat_replication r JOIN pg_stat_activity a ON a.pid = r.pid
    WHERE r.replay_lsn IS NOT NULL AND a.datname IS NULL
      AND NOT r.application_name = ANY (%(lag_excluded)s::text[])) AS replication_lag_bytes,
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

# Where each table, its TOAST and its indexes live: pg_repack builds each copy in the original's
# tablespace. An empty location is the database's default tablespace in the data directory.
# Sizing takes ACCESS SHARE: callers leave out tables they know to be locked.
PLACEMENT_SQL = """
WITH t AS (SELECT oid AS tbl, reltoastrelid AS toast FROM pg_class WHERE oid = ANY (%(oids)s::oid[])),
parts AS (
  SELECT tbl, tbl AS rel FROM t
  UNION ALL SELECT tbl, toast FROM t WHERE toast <> 0
  UNION ALL SELECT t.tbl, i.indexrelid FROM t JOIN pg_index i ON i.indrelid IN (t.tbl, t.toast))
SELECT p.tbl::bigint AS tbl,
       pg_tablespace_location(coalesce(nullif(c.reltablespace, 0), d.dattablespace)) AS location,
       sum(pg_relation_size(c.oid, 'main') + pg_relation_size(c.oid, 'fsm')
           + pg_relation_size(c.oid, 'vm'))::bigint AS bytes
  FROM parts p JOIN pg_class c ON c.oid = p.rel, pg_database d
 WHERE d.datname = current_database()
 GROUP BY 1, 2
"""


def free_disk_bytes(path: str) -> int:
    """The agent runs on the database host, so the data directory is a local path."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _disk(path: str) -> tuple[int, int]:
    return os.stat(path).st_dev, free_disk_bytes(path)


def volumes(data_dir: str, placement: Iterable[tuple[str, int]],
            disk: Callable[[str], tuple[int, int]] = _disk) -> tuple[Volume, ...]:
    """One Volume per file system (st_dev) among the table's tablespaces and pg_wal. `disk`:
    (st_dev, free bytes) of a path."""
    by_dev: dict[int, Volume] = {}
    paths = [(loc or data_dir, n, False) for loc, n in placement] + [(os.path.join(data_dir, "pg_wal"), 0, True)]
    for path, n, wal in paths:
        dev, free = disk(path)
        v = by_dev.get(dev) or Volume(path, free, 0, False)
        by_dev[dev] = Volume(v.path, v.free_bytes, v.table_bytes + n, v.wal or wal)
    return tuple(by_dev.values())


async def read_volumes(conn: psycopg.AsyncConnection[dict[str, Any]], oids: Sequence[int],
                       data_dir: str) -> dict[int, tuple[Volume, ...]]:
    """The file systems each table's copy and WAL land on; each path is statvfs'd once per call."""
    placed: dict[int, list[tuple[str, int]]] = {oid: [] for oid in oids}
    for r in await (await conn.execute(PLACEMENT_SQL, {"oids": list(oids)})).fetchall():
        placed[int(r["tbl"])].append((str(r["location"]), int(r["bytes"])))
    disk = functools.cache(_disk)
    return {oid: volumes(data_dir, p, disk) for oid, p in placed.items()}


async def data_directory(conn: psycopg.AsyncConnection[dict[str, Any]]) -> str:
    cur = await conn.execute("SHOW data_directory")
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("query returned no row")
    return str(row["data_directory"])


async def _read_sample(conn: psycopg.AsyncConnection[dict[str, Any]], table_oid: int, data_dir: str,
                       lag_excluded: Sequence[str]) -> Sample:
    cur = await conn.execute(SAMPLE_SQL, {"oid": table_oid, "lag_excluded": list(lag_excluded)})
    row = await cur.fetchone()
    if row is None:
        raise RuntimeError("query returned no row")
    vols = await read_volumes(conn, [table_oid], data_dir)
    return Sample(replication_lag_bytes=int(row["replication_lag_bytes"]),
                  lock_waiters=int(row["lock_waiters"]),
                  oldest_xact_age_seconds=float(row["oldest_xact_age_seconds"]),
                  archive_ready_files=int(row["archive_ready_files"]),
                  volumes=vols[table_oid])


class GuardSession:
    """The session a run's guard samples are read on. Each sample is bounded by the server
    (statement_timeout, lock_timeout), never cancelled from the client: psycopg closes a connection
    whose query is cancelled under it, and every later sample on it would fail. A sample that times
    out fails alone (QueryCanceled) and the session stays usable; a session that broke anyway (the
    server restarted, the last-resort client deadline) is replaced by a fresh one at the next sample."""

    def __init__(self, connect: Callable[[], Awaitable[psycopg.AsyncConnection[dict[str, Any]]]],
                 table_oid: int, cfg: RepackConfig) -> None:
        self._connect = connect
        self._oid = table_oid
        self._lag_excluded = tuple(cfg.lag_excluded_standbys)  # of the config the run started with
        self._conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
        self._data_dir = ""

    async def read(self) -> Sample:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                await conn.close()
            self._conn = conn = await self._connect()
            await conn.execute(sql.SQL("SET statement_timeout = {}; SET lock_timeout = {}").format(
                sql.Literal(f"{int(SAMPLE_TIMEOUT * 1000)}ms"), sql.Literal(f"{int(SAMPLE_TIMEOUT * 500)}ms")))
            self._data_dir = await data_directory(conn)
        # a server that stops answering at all: give up on this session, not on the run
        with anyio.fail_after(SAMPLE_TIMEOUT * 5):
            return await _read_sample(conn, self._oid, self._data_dir, self._lag_excluded)

    async def aclose(self) -> None:
        if self._conn is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._conn.close()
