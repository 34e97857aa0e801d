"""pg_stat_statements fallback: deltas of cumulative counters, read without query text."""

from __future__ import annotations

import time

import structlog

from agent.sampler.deltas import Entries
from agent.sampler.metrics import Health
from agent.sampler.persist import SamplerState
from agent.sampler.source import Conn, read_chunks

log = structlog.get_logger("sampler")

# showtext=false: the text file is not read (it can be hundreds of MB). The row layout is the
# one deltas.Entries reads: identity, labels, then the values in the order of totals.FIELDS, in
# base units. CPU times do not exist in pgss and stay 0.
READ = """
SELECT s.dbid, s.userid, s.queryid, s.toplevel,
       coalesce(d.datname, '') AS datname, coalesce(r.rolname, '') AS username,
       s.calls::float8, s.total_exec_time / 1000.0, s.total_plan_time / 1000.0, s.rows::float8,
       s.shared_blks_hit::float8, s.shared_blks_read::float8, s.shared_blks_dirtied::float8,
       s.shared_blks_written::float8, s.local_blks_hit::float8, s.local_blks_read::float8,
       s.temp_blks_read::float8, s.temp_blks_written::float8,
       s.blk_read_time / 1000.0, s.blk_write_time / 1000.0,
       s.wal_records::float8, s.wal_fpi::float8, s.wal_bytes::float8, 0::float8, 0::float8
FROM pg_stat_statements(false) s
LEFT JOIN pg_database d ON d.oid = s.dbid
LEFT JOIN pg_roles r ON r.oid = s.userid
WHERE s.queryid IS NOT NULL
"""
INFO = "SELECT dealloc, stats_reset::text AS stats_reset FROM pg_stat_statements_info"


class PgStatStatements:
    name = "pg_stat_statements"

    def __init__(self, interval: float) -> None:
        self.interval = interval

    async def connected(self, conn: Conn) -> None:
        log.info("sampler_pgss_detected")

    async def step(self, conn: Conn, st: SamplerState, now: float, top_n: int, max_series: int,
                   grace: float, health: Health) -> tuple[float, bool]:
        names = st.totals.label_names
        t0 = time.perf_counter()
        async with conn.cursor() as cur:
            await cur.execute(INFO)
            info = await cur.fetchone()
        if info is None:
            raise RuntimeError("pg_stat_statements_info returned no row")
        # streamed in chunks of tuple rows (25 columns read positionally) into compact storage
        cur_entries = Entries(names)
        n = await read_chunks(conn, READ, None, cur_entries.add_rows)
        health.last_duration = time.perf_counter() - t0
        health.reads += 1
        health.rows_read += n
        res = st.pgss.apply(cur_entries, info["stats_reset"], info["dealloc"])
        if res.primed:
            log.info("sampler_pgss_primed", entries=len(cur_entries))
        seen = (("stats_reset", int(res.reset)), ("dealloc", res.dealloc), ("recreated", res.recreated))
        for kind, n in seen:
            if n:
                health.source_resets[kind] = health.source_resets.get(kind, 0) + n
                log.info("sampler_pgss_discontinuity_seen", kind=kind, count=n)
        if len(res.batch):
            st.totals.add(res.batch, top_n, max_series)
        return self.interval, True
