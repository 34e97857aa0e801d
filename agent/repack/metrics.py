"""The repack job's metric names, built once on the context's registry with every label set."""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge

from agent.repack.guards import Guard


class RepackResult(StrEnum):
    SUCCESS = "success"                            # relfilenode changed
    SKIPPED_LOCK_TIMEOUT = "skipped_lock_timeout"  # --wait-timeout hit; no backend touched
    SKIPPED = "skipped"                            # exit 0 but nothing rebuilt, no reason parsed
    REFUSED = "refused"                            # pg_repack refused the table (no key, leftover trigger)
    FAILED = "failed"                              # pg_repack reported an error
    ABORTED = "aborted"                            # a guard stopped it (or the agent stopped)


class RepackMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter("pgnode_repack_runs", "pg_repack runs (one per table attempted), by outcome.",
                            ["result"], registry=registry)
        for r in RepackResult:
            self.runs.labels(r.value)
        self.guard_trips = Counter("pgnode_repack_guard_trips",
                                   "Guard trips that stopped or prevented a pg_repack run, by guard.",
                                   ["guard"], registry=registry)
        for g in Guard:
            self.guard_trips.labels(g.value)
        self.running = Gauge("pgnode_repack_running", "1 while a pg_repack child runs.", registry=registry)
        self.reclaimed = Counter("pgnode_repack_reclaimed_bytes",
                                 "Bytes (table + indexes + TOAST) freed by successful runs.",
                                 registry=registry)
        self.leftovers = Gauge("pgnode_repack_leftovers",
                               "Tables with pg_repack leftovers (trigger, log/copy tables) not yet dropped.",
                               registry=registry)
        self.leftover_log_bytes = Gauge("pgnode_repack_leftover_log_bytes",
                                        "Bytes in the repack.log_<oid> tables of those leftovers: their "
                                        "triggers add every write to the table until they are dropped.",
                                        registry=registry)
        self.next_window = Gauge("pgnode_repack_next_window_timestamp_seconds",
                                 "Start of the next (or current) repack window, Unix time; 0 with none.",
                                 registry=registry)
        self.duration = Gauge("pgnode_repack_last_run_duration_seconds",
                              "Wall time of the last pg_repack run.", registry=registry)
