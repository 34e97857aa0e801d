"""The pg_stat_statements read is built from the view's own columns (1.9 .. 1.12)."""

import pytest

from agent.sampler.pg_stat_statements import build_schema
from agent.sampler.source import SourceUnavailable

COMMON = ["userid", "dbid", "toplevel", "queryid", "query", "plans", "total_plan_time", "calls",
          "total_exec_time", "rows", "shared_blks_hit", "shared_blks_read", "shared_blks_dirtied",
          "shared_blks_written", "local_blks_hit", "local_blks_read", "local_blks_dirtied",
          "local_blks_written", "temp_blks_read", "temp_blks_written", "wal_records", "wal_fpi", "wal_bytes"]
V1_10 = [*COMMON, "blk_read_time", "blk_write_time", "temp_blk_read_time", "temp_blk_write_time"]
V1_11 = [*COMMON, "shared_blk_read_time", "shared_blk_write_time", "local_blk_read_time",
         "local_blk_write_time", "temp_blk_read_time", "temp_blk_write_time", "stats_since",
         "minmax_stats_since"]


def test_pg15_reads_blk_time_and_has_no_stats_since() -> None:
    s = build_schema("1.10", V1_10)
    q = s.read.as_string(None)
    assert '"s"."blk_read_time" / 1000.0' in q and "shared_blk_read_time" not in q
    assert not s.has_stats_since and s.missing == () and "NULL::float8" in q


def test_pg17_reads_shared_blk_time_and_stats_since() -> None:
    s = build_schema("1.11", V1_11)
    q = s.read.as_string(None)
    assert '"s"."shared_blk_read_time" / 1000.0' in q and '"blk_read_time"' not in q
    assert s.has_stats_since and "stats_since" in q and s.missing == ()


def test_a_missing_value_column_reads_zero_and_is_named() -> None:
    s = build_schema("x", [c for c in V1_10 if c != "wal_fpi"])
    assert s.missing == ("wal_fpi",)


def test_no_toplevel_is_refused_with_the_column_named() -> None:
    with pytest.raises(SourceUnavailable, match="toplevel"):
        build_schema("1.8", [c for c in V1_10 if c != "toplevel"])
