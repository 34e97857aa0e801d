"""pgnode_archive_* and pgnode_backup_*: a collector renders the cached results at scrape time
(a scrape never runs a query or pgbackrest); counters count what the checks observed.

No sample means unknown: a check that has not run, a NULL column, or a check that does not
apply on this node (a replica with archive_mode=on exports only `pgnode_archive_expected 0`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.archive.pgbackrest import REASONS
from agent.core.metrics import gauge_if_known as _g

if TYPE_CHECKING:
    from agent.archive.rounds import ArchiveView

CHECKS = ("archiver", "ready_files", "pgbackrest_info", "pgbackrest_check")
COMMANDS = ("info", "check")


class ArchiveCollector(Collector):
    def __init__(self, view: ArchiveView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        v = self._view
        s, a = v.snapshot, v.assessment
        yield _g("pgnode_archive_expected",
                 "1 when this node should archive WAL (primary: archive_mode on/always; standby: always).",
                 None if a is None else float(a.expected))
        yield _g("pgnode_archive_healthy", "1 when every applicable archive check passes, 0 otherwise.",
                 None if v.healthy is None else float(v.healthy))
        on = s is not None and a is not None and a.expected
        ts = s.archiver.last_archived_time if on and s else None
        yield _g("pgnode_archive_failing",
                 "1 while the last archive attempt failed and nothing was archived since.",
                 float(a.failing) if on and a else None)
        yield _g("pgnode_archive_ready_files", "WAL files waiting to be archived (.ready).",
                 s.ready_files if on and s and s.ready_files is not None else None)
        yield _g("pgnode_archive_oldest_ready_age_seconds",
                 "Age of the oldest .ready file (0 when none wait).",
                 s.oldest_ready_age if on and s and s.oldest_ready_age is not None else None)
        yield _g("pgnode_archive_last_success_timestamp_seconds",
                 "When PostgreSQL last archived a WAL file (pg_stat_archiver.last_archived_time).",
                 ts.timestamp() if ts is not None else None)
        yield _g("pgnode_archive_lag_bytes",
                 "Bytes of WAL written but not archived, the unfinished current segment included.",
                 a.lag_bytes if on and a and a.lag_bytes is not None else None)
        yield _g("pgnode_archive_rpo_exposure_seconds",
                 "Seconds unarchived WAL has been waiting (0 when nothing is pending).",
                 a.rpo_seconds if on and a and a.rpo_seconds is not None else None)
        yield _g("pgnode_archive_timeout_seconds", "The archive_timeout setting (0: never forces a switch).",
                 s.archive_timeout if s is not None else None)
        info = v.info
        yield _g("pgnode_backup_last_success_timestamp_seconds",
                 "Stop time of the newest pgBackRest backup without error.",
                 info.last_backup_stop if info and info.last_backup_stop is not None else None)
        yield _g("pgnode_pgbackrest_stanza_status_code",
                 "pgBackRest info status code (0 ok, 2 no valid backups, ...).",
                 info.status_code if info else None)
        yield _g("pgnode_archive_repo_behind_segments",
                 "Segments PostgreSQL marked archived that the pgBackRest repository does not hold.",
                 v.repo_behind)
        yield _g("pgnode_pgbackrest_check_success", "1 when the last `pgbackrest check` passed.",
                 None if v.check_ran is False else float(v.check_reason is None))
        run = GaugeMetricFamily("pgnode_archive_check_last_run_timestamp_seconds",
                                "When each archive check last ran.", labels=["check"])
        ok = GaugeMetricFamily("pgnode_archive_check_last_success_timestamp_seconds",
                               "When each archive check last succeeded.", labels=["check"])
        for c in CHECKS:
            if c in v.last_run:
                run.add_metric([c], v.last_run[c])
            if c in v.last_success:
                ok.add_metric([c], v.last_success[c])
        yield run
        yield ok


class ArchiveMetrics:
    def __init__(self, registry: CollectorRegistry, view: ArchiveView) -> None:
        self.failed = Counter("pgnode_archive_failed",
                              "Archive attempts that failed (pg_stat_archiver.failed_count increments seen).",
                              registry=registry)
        self.pgbackrest_failures = Counter("pgnode_pgbackrest_failures",
                                           "Failed pgbackrest runs by command and reason.",
                                           ["command", "reason"], registry=registry)
        for cmd in COMMANDS:
            for r in REASONS:
                self.pgbackrest_failures.labels(cmd, r)
        registry.register(ArchiveCollector(view))
