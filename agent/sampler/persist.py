"""The sampler's state file: watermark, server identity and counter values, written atomically.

Restored at start: counters continue across agent restarts, and buckets finished while the agent
was down are read if still retained.

When it is written (`Writer`): after a pg_stat_monitor read that consumed buckets, at once (a
bucket not yet on disk may have expired by the time a crashed agent is back; these writes are
small and come once per bucket_time); after a pg_stat_statements read, at most at a bounded
byte rate (a token bucket: `WRITE_BUDGET` bytes a minute, bursts of `WRITE_BURST`; a small state
is written after every read, a 10k-entry baseline every few minutes), because pgss counters are
cumulative: after a crash, the next read counts everything since the restored snapshot's
baseline, once. And always on a clean stop. Every snapshot is consistent (counters, baseline and
watermark of the same moment), so what a crash can cost is only what the source itself lost in
between (a pgss reset or eviction), never a doubled or negative increment.
"""

from __future__ import annotations

import base64
import json
import sys
import time
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from agent.core import slices
from agent.core.files import write_atomic
from agent.core.slices import Offload, Slices, drain
from agent.sampler.buckets import Watch
from agent.sampler.deltas import Entries, PgssDeltas
from agent.sampler.metrics import Health
from agent.sampler.totals import NFIELDS, Totals

log = structlog.get_logger("sampler")
VERSION = 2  # 2: the pgss baseline packed (packed_entries); 1 (a JSON list) is still read
READABLE = (1, 2)
WRITE_BUDGET = 60_000  # bytes a minute on average (the target is <= 100 KB/min at 10k statements)
WRITE_BURST = 60_000  # bytes that may be written at once before the budget holds writes back


@dataclass(frozen=True)
class Identity:
    system_identifier: str | None = None
    postmaster_start: float | None = None


@dataclass(frozen=True)
class SamplerState:
    """One consistent moment of the sampler, never changed once made: a read's fold returns
    the next (source.Folded), so a scrape or the state file's writer, in another thread, never
    sees one half-updated."""

    totals: Totals
    watermark: int | None = None  # newest pg_stat_monitor bucket_start_time consumed (epoch s)
    identity: Identity = field(default_factory=Identity)
    pgss: PgssDeltas = field(default_factory=PgssDeltas)
    pgsm: Watch = field(default_factory=Watch)

    def to_json(self, packed: dict[str, Any] | None = None) -> dict[str, Any]:
        """`packed`: the pgss baseline as `packing` made it, when the caller made it in slices."""
        p = self.pgss
        if packed is None and p.prev is not None:
            packed = drain(packing(p.prev))
        return {"version": VERSION, "watermark": self.watermark,
                "identity": {"system_identifier": self.identity.system_identifier,
                             "postmaster_start": self.identity.postmaster_start},
                "totals": self.totals.to_json(),
                "pgss": {"stats_reset": p.stats_reset, "dealloc": p.dealloc, "packed": packed},
                "pgsm": self.pgsm.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SamplerState:
        if d.get("version") not in READABLE:
            raise ValueError(f"unknown state version {d.get('version')!r}")
        ident = d.get("identity") or {}
        pd = d.get("pgss") or {}
        if pd.get("packed") is not None:
            pgss = PgssDeltas(prev=unpack_entries(pd["packed"]), stats_reset=pd.get("stats_reset"),
                              dealloc=pd.get("dealloc"))
        else:
            pgss = PgssDeltas.from_json(pd)  # version 1
        return cls(totals=Totals.from_json(d["totals"]), watermark=d.get("watermark"),
                   identity=Identity(ident.get("system_identifier"), ident.get("postmaster_start")),
                   pgss=pgss, pgsm=Watch.from_json(d.get("pgsm") or {}))


def packing(e: Entries) -> Slices[dict[str, Any]]:
    """The pgss baseline as three compressed arrays (keys, values, stats_since), column-major:
    10k entries are ~0.3-0.4 MB instead of 3.9 MB of JSON numbers. Labels are not kept: only
    the current read's labels are exported. zlib releases the GIL: it runs in a thread."""
    n = len(e)
    keys = array("q", bytes(8 * 4 * n))  # per entry: userid, dbid, queryid, toplevel (C loops)
    for j, col in enumerate((e.users, e.dbs, e.qids, e.tops)):
        keys[j::4] = array("q", col)
        yield None
    cols = array("d")
    for j in range(NFIELDS):  # a strided slice each: C loops, not a Python loop over 190k values
        cols.extend(e.vals[j::NFIELDS])
        yield None
    zipped = yield Offload(lambda: [zlib.compress(a.tobytes(), 6) for a in (keys, cols, e.since)])
    kz, vz, sz = (base64.b64encode(z).decode() for z in zipped)
    return {"n": n, "fields": NFIELDS, "byteorder": sys.byteorder, "keys": kz, "vals": vz, "since": sz}


def unpack_entries(p: dict[str, Any]) -> Entries | None:
    """None (re-prime, counters kept) when the baseline is of another field count or machine."""
    if p.get("fields") != NFIELDS or p.get("byteorder") != sys.byteorder:
        log.warning("sampler_pgss_state_reprimed", fields=p.get("fields"), expected=NFIELDS)
        return None
    n = int(p["n"])

    def u(code: str, s: str) -> array[Any]:
        a = array(code)
        a.frombytes(zlib.decompress(base64.b64decode(s)))
        return a

    keys, cols, since = u("q", p["keys"]), u("d", p["vals"]), u("d", p["since"])
    if len(keys) != 4 * n or len(cols) != NFIELDS * n or len(since) != n:
        raise ValueError("packed pgss baseline has the wrong length")
    e = Entries()
    for i in range(n):
        k = keys[4 * i:4 * i + 4]
        e.put((k[0], k[1], k[2], bool(k[3])), (), [cols[j * n + i] for j in range(NFIELDS)], since[i])
    return e.in_order()  # a file of an older agent is in the order of its read


def load(path: Path, label_names: tuple[str, ...]) -> SamplerState:
    """A missing or unreadable file starts from zero (and the first read only primes)."""
    try:
        st = SamplerState.from_json(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return SamplerState(totals=Totals(label_names))
    except (OSError, ValueError, KeyError, TypeError, zlib.error) as e:
        log.error("sampler_state_unreadable", path=str(path), error=str(e), action="starting_from_zero")
        return SamplerState(totals=Totals(label_names))
    log.info("sampler_state_restored", path=str(path), watermark=st.watermark, series=len(st.totals.series))
    return st


def encoding(state: SamplerState) -> Slices[bytes]:
    """The state file's bytes, made in slices (agent/core/slices.py)."""
    prev = state.pgss.prev
    packed = None if prev is None else (yield from packing(prev))
    text = yield from _dumping(state.to_json(packed))
    return text.encode()


def encode(state: SamplerState) -> bytes:
    return drain(encoding(state))


_PIECE = 64  # list elements encoded by one json.dumps call


def _dumping(x: Any) -> Slices[str]:
    """What json.dumps(x, separators=(",", ":")) gives, made a piece at a time. json.dumps is
    one C call that keeps the GIL, and so the event loop, for all of it (~10 ms or more for
    the totals at 10k statements); between pieces the loop gets in."""
    if isinstance(x, dict):
        items = []
        for k, v in x.items():
            items.append(f"{json.dumps(k)}:" + (yield from _dumping(v)))
        return "{" + ",".join(items) + "}"
    if isinstance(x, list) and len(x) > _PIECE:
        pieces = []
        for i in range(0, len(x), _PIECE):
            pieces.append(json.dumps(x[i:i + _PIECE], separators=(",", ":"))[1:-1])
            yield None
        return "[" + ",".join(pieces) + "]"
    return json.dumps(x, separators=(",", ":"))


def save(path: Path, state: SamplerState) -> int:
    data = encode(state)
    write_atomic(path, data)
    return len(data)


def _write(path: Path, data: bytes) -> int:
    write_atomic(path, data)
    return len(data)


class Writer:
    """When the state is written, and what a failed write does.

    `changed(urgent)` marks the state dirty; `maybe_save()` writes it when urgent, or when the
    token bucket is not in debt (a write may take it into debt; the budget pays it back over time), so bytes written in
    any T minutes stay under burst + budget x T + one file; `save()` writes now (a clean stop). Encoding
    runs in slices on the loop, compressing and writing in a worker thread: neither the JSON nor
    the fsync holds the event loop. A write
    that fails (a full disk, a state directory we may not write) is logged once per reason as
    `sampler_state_not_saved`, counted, kept dirty and retried after the next read: the
    sampler goes on reading, with its counters in memory.
    """

    def __init__(self, path: Path, health: Health, budget: float = WRITE_BUDGET,
                 burst: float = WRITE_BURST) -> None:
        self.path = path
        self.health = health  # state_bytes_written, state_write_errors
        self.budget, self.burst = budget, burst
        self.tokens, self.tokens_at = burst, time.monotonic()
        self.dirty = self.urgent = False
        self.error: str | None = None  # the last write's error, None once a write succeeds

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.tokens_at) * self.budget / 60.0)
        self.tokens_at = now

    def changed(self, urgent: bool = False) -> None:
        self.dirty = True
        self.urgent = self.urgent or urgent

    async def maybe_save(self, state: SamplerState) -> None:
        self._refill()
        if self.dirty and (self.urgent or self.tokens >= 0):
            await self.save(state)

    async def save(self, state: SamplerState) -> None:
        try:
            data = await slices.run(encoding(state))  # on the loop in slices, zlib in a thread
            n = await anyio.to_thread.run_sync(_write, self.path, data)  # write + fsync
        except OSError as e:
            self.health.state_write_errors += 1  # tokens untouched: retried after the next read
            err = f"{type(e).__name__}: {e}"[:300]
            if self.error != err:
                log.error("sampler_state_not_saved", path=str(self.path), error=err, action="counting_in_memory")
            self.error = err
            return
        if self.error is not None:
            log.info("sampler_state_saved_again", path=str(self.path))
        self.dirty = self.urgent = False
        self.error = None
        self.health.state_bytes_written += n
        self._refill()
        self.tokens -= n
