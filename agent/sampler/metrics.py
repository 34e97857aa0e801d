"""pgnode_query_* and pgnode_sampler_*: rendered from the sampler's memory on every scrape.

A scrape never touches PostgreSQL; it only formats `Totals` and `Health`, so its cost is the
series count and nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent.core.metrics import gauge_if_known
from agent.sampler.totals import FIELDS, Totals

SOURCES = ("pg_stat_monitor", "pg_stat_statements")
LOST_REASONS = ("expired", "reset", "restart")
READ_FAILURES = ("error", "timeout")


@dataclass
class Health:
    source: str | None = None
    last_ingested_bucket: float | None = None  # bucket_start_time of the newest consumed bucket
    last_duration: float | None = None
    rows_read: int = 0
    reads: int = 0
    postgres_outages: int = 0
    source_resets: dict[str, int] = field(default_factory=dict)  # kind -> count
    histogram_mismatches: int = 0  # rows whose resp_calls did not sum to calls
    state_bytes_written: int = 0  # to the state file (persist.Writer)
    state_write_errors: int = 0
    read_failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(READ_FAILURES, 0))
    fallback: str | None = None  # why `auto` reads pg_stat_statements although pg_stat_monitor exists


class SamplerCollector(Collector):
    """The query series: they change only when a read ingests something, so the HTTP layer
    renders them once per `Sampler.version` (agent.core.context.CachedMetrics)."""

    def __init__(self, totals: Callable[[], Totals]) -> None:
        self._totals = totals

    def collect(self) -> Iterator[Metric]:
        t = self._totals()
        labels = ["queryid", *t.label_names]
        values = [list(k) for k in t.series]
        for j, (_, name, doc) in enumerate(FIELDS):  # a family at a time: a renderer may pause between
            fam = CounterMetricFamily(f"pgnode_query_{name}", doc, labels=labels)
            for label_values, vals in zip(values, t.series.values(), strict=True):
                fam.add_metric(label_values, vals[j])
            yield fam

        hist = HistogramMetricFamily("pgnode_query_latency_seconds",
                                     "Statement execution time, bins from pg_stat_monitor's own ranges.",
                                     labels=list(t.label_names))
        bounds = list(t.le) if t.le and t.le[-1] == math.inf else [*t.le, math.inf]
        for key, bins in t.hist.items():
            cum, buckets = 0.0, []
            for i, le in enumerate(bounds):
                cum += bins[i] if i < len(t.le) else 0.0
                buckets.append(("+Inf" if le == math.inf else repr(le), cum))
            hist.add_metric(list(key), buckets, sum_value=bins[-1])
        yield hist

        err = CounterMetricFamily("pgnode_query_errors",
                                  "Failed statements, ERROR and above (one per failure), by elevel, sqlcode.",
                                  labels=["elevel", "sqlcode"])
        for (elevel, sqlcode), v in t.errors.items():
            err.add_metric([elevel, sqlcode], v)
        yield err
        warn = CounterMetricFamily("pgnode_query_warnings",
                                   "Statements that raised a WARNING (pg_stat_monitor only; one per warning), "
                                   "by sqlcode.", labels=["sqlcode"])
        for sqlcode, v in t.warnings.items():
            warn.add_metric([sqlcode], v)
        yield warn
        lost = CounterMetricFamily("pgnode_query_buckets_lost",
                                   "pg_stat_monitor buckets destroyed, wholly or in part, before they were "
                                   "read (one per bucket), by reason: expired, reset, restart.",
                                   labels=["reason"])
        for reason in LOST_REASONS:
            lost.add_metric([reason], t.buckets_lost.get(reason, 0))
        yield lost
        yield CounterMetricFamily("pgnode_query_series_folded",
                                  'Aggregates added to queryid="other" or the all-"other" series (one per '
                                  "queryid and label set per batch).", value=t.series_folded)



class SamplerHealthCollector(Collector):
    """The sampler's own health: cheap, rendered live on every scrape."""

    def __init__(self, health: Health) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        h = self._health
        src = GaugeMetricFamily("pgnode_sampler_source", "1 for the source the sampler reads now.",
                                labels=["source"])
        for s in SOURCES:
            src.add_metric([s], 1.0 if h.source == s else 0.0)
        yield src
        yield gauge_if_known("pgnode_sampler_last_ingested_bucket_timestamp_seconds",
                             "bucket_start_time of the newest pg_stat_monitor bucket consumed.",
                             h.last_ingested_bucket)
        yield gauge_if_known("pgnode_sampler_duration_seconds", "Wall time of the last read of the source.",
                             h.last_duration)
        yield CounterMetricFamily("pgnode_sampler_rows_read", "Rows read from the source (one per row).",
                                  value=h.rows_read)
        yield CounterMetricFamily("pgnode_sampler_reads", "Reads of the source (one per scan).",
                                  value=h.reads)
        fails = CounterMetricFamily("pgnode_sampler_read_failures",
                                    "Reads that failed on a reachable PostgreSQL (one per failed attempt), "
                                    "by reason: error (an SQL error), timeout (statement_timeout).",
                                    labels=["reason"])
        for reason, n in h.read_failures.items():
            fails.add_metric([reason], n)
        yield fails
        yield CounterMetricFamily("pgnode_sampler_postgres_outages",
                                  "Times the sampler lost (or could not get) its PostgreSQL session.",
                                  value=h.postgres_outages)
        resets = CounterMetricFamily("pgnode_sampler_source_resets",
                                     "Source discontinuities seen (kind: stats_reset, dealloc, recreated, "
                                     "pgsm_reset, server_restart, server_changed, clock_stepped_back).",
                                     labels=["kind"])
        for kind, n in sorted(h.source_resets.items()):
            resets.add_metric([kind], n)
        yield resets
        yield CounterMetricFamily("pgnode_sampler_histogram_mismatches",
                                  "pg_stat_monitor rows whose resp_calls did not add up to calls.",
                                  value=h.histogram_mismatches)
        yield CounterMetricFamily("pgnode_sampler_state_written_bytes",
                                  "Bytes written to the sampler's state file.", value=h.state_bytes_written)
        yield CounterMetricFamily("pgnode_sampler_state_write_errors",
                                  "Failed writes of the sampler's state file (the state is kept in memory "
                                  "and written again later).", value=h.state_write_errors)
