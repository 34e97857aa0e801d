"""What both sources share: their contract, the server-identity probe and the source choice.

Shaped like postgres_exporter's collectors: a source (`Source`) owns its queries and does the
I/O; a read returns a typed result (`Read`) and changes nothing. The result's `fold` is a pure
function from the state before to a `Folded` (the next state, the discontinuities seen, what to
log), run in a worker thread; the component applies it, and only it touches `Health`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from agent.core.slices import Slices
from agent.sampler.persist import Identity, SamplerState

Conn = psycopg.AsyncConnection[dict[str, Any]]
Query = str | sql.Composed

# Rows fetched per round trip of a read. A read is consumed chunk by chunk, so the agent never
# holds more than this many source rows at once, whatever the view's size (pg_stat_statements.max,
# pg_stat_monitor's buckets x entries). psycopg turns a chunk into tuples in the event loop's
# thread, ~7 us a row of pg_stat_statements' 27 columns, ~15 us of pg_stat_monitor's ~50, and
# the chunk is then consumed there too (~2.5-10 us a row): 50 rows hold the loop ~0.5-1.2 ms
# (100 pgsm rows held it up to 3 ms; 500 pgss rows ~3.5 ms for the tuples alone, bench/). A
# round trip each: ~0.1 ms on a socket, ~20 ms more for a read of 10k rows.
CHUNK_ROWS = 50

# pg_stat_monitor is detected by its view plus its version function rather than pg_extension
# alone: that is what a read needs, and it also finds a schema-faithful stand-in in tests.
DETECT = """
SELECT to_regclass('pg_stat_monitor') IS NOT NULL
       AND to_regprocedure('pg_stat_monitor_version()') IS NOT NULL AS has_pgsm,
       to_regprocedure('pg_stat_statements(boolean)') IS NOT NULL AS has_pgss
"""

# Server clock (bucket completeness is judged on the server's time, not ours) and identity.
CLOCK = """
SELECT extract(epoch FROM clock_timestamp())::float8 AS now,
       (SELECT system_identifier FROM pg_control_system())::text AS system_identifier,
       extract(epoch FROM pg_postmaster_start_time())::float8 AS postmaster_start
"""


class SourceUnavailable(Exception):
    """Neither the wanted source nor a fallback is installed in the configured database."""


class SourceUnreadable(Exception):
    """The source is installed but cannot be read as it is (not preloaded, a setting we cannot
    use): a read failure to report, and for `auto` a reason to fall back."""


# SQLSTATEs that mean the session is gone: connection exceptions and the server shutting down.
_LOST_STATES = ("57P01", "57P02", "57P03")


def read_failure(e: BaseException) -> str | None:
    """Why a read failed on a PostgreSQL that answered: "timeout" (57014: statement_timeout or a
    cancel) or "error" (any other SQL error, a lock_timeout included, or a source we cannot
    read). None: the session is lost (no SQLSTATE from the server, class 08, a shutdown).
    psycopg files 57014 and 55P03 under OperationalError, which is not an outage."""
    if isinstance(e, OSError):
        return None
    if isinstance(e, psycopg.Error):
        state = e.sqlstate
        if state == "57014":
            return "timeout"
        if (state is None and isinstance(e, psycopg.OperationalError)) or (
                state is not None and (state.startswith("08") or state in _LOST_STATES)):
            return None
    return "error"


@dataclass(frozen=True, slots=True)
class Limits:
    """The config values reads and folds use, taken from the config at each step (SIGHUP)."""

    interval: float  # seconds between pg_stat_statements reads
    grace: float  # seconds after a pg_stat_monitor bucket ends before it is read
    top_n: int
    max_series: int


Level = Literal["info", "warning"]


@dataclass(frozen=True, slots=True)
class Folded:
    """What a read (or an identity check) does to the sampler: the next state and what to count
    and log. `changed`: the totals or the watermark moved (re-render, save)."""

    state: SamplerState
    changed: bool = True
    resets: tuple[tuple[str, int], ...] = ()  # source discontinuities seen: (kind, count)
    events: tuple[tuple[Level, str, dict[str, Any]], ...] = ()  # (level, event, fields) to log
    histogram_mismatches: int = 0
    ingested_bucket: int | None = None  # the newest pg_stat_monitor bucket now consumed


class Read(Protocol):
    """One step's result of a source, immutable once returned."""

    @property
    def wait(self) -> float:
        """Seconds until the next read is due."""
        ...

    @property
    def rows(self) -> int:
        """Source rows read (0: nothing was due)."""
        ...

    @property
    def duration(self) -> float | None:
        """Wall time of the read; None when nothing was read."""
        ...

    def fold(self, st: SamplerState, limits: Limits) -> Slices[Folded]:
        """The state after this read, made in slices (agent/core/slices.py). Pure: `st` is
        left as it was."""
        ...

    def dropping(self) -> Slices[None]:
        """Frees what the read holds, in slices, once it is folded."""
        ...


class Source(Protocol):
    name: str
    # Whether a read that changed the state must reach the disk at once (pg_stat_monitor's
    # consumed buckets may expire before a crashed agent is back), or may wait for the
    # writer's budget (pg_stat_statements' counters are cumulative).
    urgent_save: bool

    async def connected(self, conn: Conn) -> None:
        """Reads what a session needs once: settings, schema."""
        ...

    async def read(self, conn: Conn, st: SamplerState, now: float, limits: Limits) -> Read:
        """One read if one is due at server time `now`; changes nothing."""
        ...


@dataclass(frozen=True, slots=True)
class Idle:
    """Nothing was due: the state stays; `resets`/`events` say why, if worth saying."""

    wait: float
    resets: tuple[tuple[str, int], ...] = ()
    events: tuple[tuple[Level, str, dict[str, Any]], ...] = ()
    rows: int = 0
    duration: float | None = None

    def fold(self, st: SamplerState, limits: Limits) -> Slices[Folded]:
        yield from ()
        return Folded(st, changed=False, resets=self.resets, events=self.events)

    def dropping(self) -> Slices[None]:
        yield from ()


async def detect(conn: Conn, want: str, *, skip_pgsm: bool = False) -> str:
    """The source to read: `want`, or for "auto" pg_stat_monitor, else pg_stat_statements.
    `skip_pgsm`: "auto" found pg_stat_monitor unreadable, so pg_stat_statements is used."""
    async with conn.cursor() as cur:
        await cur.execute(DETECT)
        row = await cur.fetchone()
    if row is None:
        raise SourceUnavailable("detection returned no row")
    if (want == "pg_stat_monitor" or (want == "auto" and not skip_pgsm)) and row["has_pgsm"]:
        return "pg_stat_monitor"
    if want in ("auto", "pg_stat_statements") and row["has_pgss"]:
        return "pg_stat_statements"
    raise SourceUnavailable(f"source {want!r} not installed (pg_stat_monitor={row['has_pgsm']}, "
                            f"pg_stat_statements={row['has_pgss']})")


def identity_seen(st: SamplerState, c: dict[str, Any]) -> Folded | None:
    """The state after the clock probe `c`, or None when the server is the one last read.

    A new system_identifier is another database cluster (rebuilt node): its buckets and pgss
    entries have nothing to do with our watermark, so both are primed again; counters carry on.
    A new postmaster start only wiped pg_stat_monitor's memory: buckets after the watermark are
    new data, so the watermark stays, and those up to the restart are charged when read."""
    old = st.identity
    sysid, started = c["system_identifier"], c["postmaster_start"]
    new = Identity(sysid, started)
    if old.system_identifier is not None and sysid != old.system_identifier:
        return Folded(replace(st, identity=new, watermark=None, pgss=type(st.pgss)()),
                      resets=(("server_changed", 1),),
                      events=(("warning", "sampler_server_changed", {
                          "old": old.system_identifier, "new": sysid, "action": "watermark_reprimed"}),))
    if old.postmaster_start is not None and started != old.postmaster_start:
        return Folded(replace(st, identity=new, pgsm=replace(st.pgsm, restart_at=started, seen={})),
                      resets=(("server_restart", 1),),
                      events=(("info", "sampler_server_restart_seen", {
                          "old_start": old.postmaster_start, "new_start": started}),))
    if old == new:
        return None
    return Folded(replace(st, identity=new))


async def clock(conn: Conn) -> dict[str, Any]:
    async with conn.cursor() as cur:
        await cur.execute(CLOCK)
        row = await cur.fetchone()
    if row is None:
        raise RuntimeError("clock query returned no row")
    return row


async def read_chunks(conn: Conn, query: Query, params: dict[str, Any] | None,
                      consume: Callable[[Sequence[tuple[Any, ...]]], None], *,
                      chunk: int = CHUNK_ROWS) -> int:
    """Runs one read through a server-side cursor and hands its rows to `consume` in chunks
    of tuple rows (positional, no per-row dict), on the loop between round trips: a chunk is a
    slice (agent/core/slices.py says why not a worker thread); returns the row count.

    The cursor lives in its own short transaction (the session is autocommit): a server-side
    cursor needs one, and it ends with the read.
    """
    n = 0
    async with conn.transaction(), conn.cursor("pgna_sampler_read", row_factory=tuple_row) as cur:
        await cur.execute(query, params)
        while rows := await cur.fetchmany(chunk):
            n += len(rows)
            consume(rows)
    return n
