"""pg_stat_statements fallback: deltas of cumulative counters, read without query text."""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import structlog

from agent.sampler.deltas import Entry, Key
from agent.sampler.metrics import Health
from agent.sampler.persist import SamplerState
from agent.sampler.source import Conn, read_chunks
from agent.sampler.totals import NFIELDS

log = structlog.get_logger("sampler")

# showtext=false: the text file is not read (it can be hundreds of MB); the values come in the
# order of totals.FIELDS, in base units. CPU times do not exist in pgss and stay 0.
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
_FIRST_VALUE = 6


_ZERO = 0.0


class Entries(Mapping[Key, Entry]):
    """One read of pg_stat_statements, held compactly while it streams in: the values of every
    entry in one array of doubles (19 x 8 bytes an entry), queryids as ints, label tuples
    shared. `Entry` objects are made on access, so the read costs ~0.3 KB an entry instead of a
    row tuple plus an Entry with a list of boxed floats (~1.5 KB).

    The floats an Entry hands out are the previous read's objects wherever the value did not
    change (and one shared 0.0 otherwise), so the new `prev` that PgssDeltas.apply() keeps
    shares them with the old one instead of doubling every entry's 19 boxed floats."""

    __slots__ = ("_index", "_label_cache", "_labels", "_names", "_prev", "_qids", "_vals")

    def __init__(self, label_names: tuple[str, ...], prev: Mapping[Key, list[float]] | None = None) -> None:
        self._names = label_names
        self._prev = prev
        self._index: dict[Key, int] = {}
        self._qids: array[int] = array("q")
        self._labels: list[tuple[str, ...]] = []
        self._vals: array[float] = array("d")
        self._label_cache: dict[tuple[str, str], tuple[str, ...]] = {}

    def add_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        names, cache, index = self._names, self._label_cache, self._index
        for r in rows:
            raw = (r[4], r[5])
            labels = cache.get(raw)
            if labels is None:
                found = {"datname": r[4], "username": r[5]}
                labels = cache[raw] = tuple(found.get(n, "") for n in names)
            key = (int(r[1]), int(r[0]), int(r[2]), bool(r[3]))
            i = index.get(key)
            if i is None:  # (a duplicate key replaces the earlier row, as a dict would)
                index[key] = len(self._labels)
                self._qids.append(key[2])
                self._labels.append(labels)
                self._vals.extend(r[_FIRST_VALUE:])
            else:
                self._labels[i] = labels
                self._vals[i * NFIELDS:(i + 1) * NFIELDS] = array("d", r[_FIRST_VALUE:])

    def _entry(self, key: Key, i: int) -> Entry:
        vals = self._vals[i * NFIELDS:(i + 1) * NFIELDS].tolist()
        old = self._prev.get(key) if self._prev is not None else None
        if old is not None and len(old) == NFIELDS:
            vals = [o if o == v else v for o, v in zip(old, vals, strict=True)]
        else:
            vals = [_ZERO if v == 0.0 else v for v in vals]
        return Entry(str(self._qids[i]), self._labels[i], vals)

    def __getitem__(self, key: Key) -> Entry:
        return self._entry(key, self._index[key])

    def __iter__(self) -> Iterator[Key]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def items(self) -> Iterator[tuple[Key, Entry]]:  # type: ignore[override]
        for key, i in self._index.items():
            yield key, self._entry(key, i)


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
        cur_entries = Entries(names, st.pgss.prev)
        n = await read_chunks(conn, READ, None, cur_entries.add_rows)
        health.last_duration = time.perf_counter() - t0
        health.reads += 1
        health.rows_read += n
        # apply() only iterates items(); deltas.py types the parameter as a dict
        res = st.pgss.apply(cur_entries, info["stats_reset"], info["dealloc"])  # type: ignore[arg-type]
        if res.primed:
            log.info("sampler_pgss_primed", entries=len(cur_entries))
        seen = (("stats_reset", int(res.reset)), ("dealloc", res.dealloc), ("recreated", res.recreated))
        for kind, n in seen:
            if n:
                health.source_resets[kind] = health.source_resets.get(kind, 0) + n
                log.info("sampler_pgss_discontinuity_seen", kind=kind, count=n)
        if res.rows:
            st.totals.add(res.rows, top_n, max_series)
        return self.interval, True
