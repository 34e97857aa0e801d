"""Job 2: query statistics (pg_stat_monitor buckets or pg_stat_statements deltas) as counters."""
