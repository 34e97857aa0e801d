"""The sampler's state file across restarts, upgrades and rollbacks (docs/upgrade.md)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from agent.sampler import persist
from agent.sampler.totals import NFIELDS, Batch, QueryRow, Totals

LABELS = ("datname", "username")


def state_with_calls(n: float) -> persist.SamplerState:
    t = Totals(LABELS)
    v = [0.0] * NFIELDS
    v[0], v[1] = n, 0.5
    t.add(Batch.of([QueryRow("42", ("app", "u"), v, None)]), top_n=10, max_series=100)
    return persist.SamplerState(totals=t, watermark=1_790_000_000,
                                identity=persist.Identity("7300000000000000001", 1_789_999_000.0))


def test_counters_and_watermark_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "sampler.json"
    persist.save(path, state_with_calls(7))
    back = persist.load(path, LABELS)
    assert back.watermark == 1_790_000_000
    assert back.identity.system_identifier == "7300000000000000001"
    assert back.totals.series == state_with_calls(7).totals.series
    assert [p.name for p in tmp_path.iterdir()] == ["sampler.json"]   # no .tmp left behind
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_newer_format_after_a_rollback_starts_from_zero(tmp_path: Path) -> None:
    path = tmp_path / "sampler.json"
    d = state_with_calls(7).to_json()
    d["version"] = persist.VERSION + 1
    path.write_text(json.dumps(d))
    back = persist.load(path, LABELS)
    assert back.watermark is None and back.totals.series == {}


def test_a_torn_or_missing_file_starts_from_zero(tmp_path: Path) -> None:
    path = tmp_path / "sampler.json"
    assert persist.load(path, LABELS).totals.series == {}
    path.write_bytes(persist.encode(state_with_calls(3))[:40])
    assert persist.load(path, LABELS).watermark is None


def pgss_state(entries: int) -> persist.SamplerState:
    from agent.sampler.deltas import Entries, PgssDeltas

    st = state_with_calls(1)
    e = Entries()
    for i in range(entries):
        v = [0.0] * NFIELDS
        v[0], v[1], v[12] = float(i), i / 7, 0.1 * i
        e.put((5, 10, 1_000_000_007 * i - 2**62, i % 2 == 0), (), v, 1.7e9 + i if i % 3 else float("nan"))
    return replace(st, pgss=PgssDeltas(e, "2026-12-01 00:00:00+00", 4))


def test_the_pgss_baseline_round_trips_packed(tmp_path: Path) -> None:
    path = tmp_path / "sampler.json"
    st = pgss_state(1000)
    persist.save(path, st)
    back = persist.load(path, LABELS).pgss
    assert back.prev is not None and st.pgss.prev is not None
    assert [back.prev.key(i) for i in range(len(back.prev))] == [st.pgss.prev.key(i) for i in range(1000)]
    assert back.prev.vals == st.pgss.prev.vals
    assert [x if x == x else None for x in back.prev.since] == [x if x == x else None for x in st.pgss.prev.since]
    assert (back.stats_reset, back.dealloc) == ("2026-12-01 00:00:00+00", 4)


def test_a_version_1_file_is_read_after_an_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "sampler.json"
    st = pgss_state(3)
    d = st.to_json()
    d["version"] = 1
    d["pgss"] = st.pgss.to_json()  # format 1: the baseline as a JSON list
    path.write_text(json.dumps(d))
    back = persist.load(path, LABELS)
    assert back.pgss.prev is not None and len(back.pgss.prev) == 3
    assert back.totals.series == st.totals.series


def test_10k_statements_pack_into_a_small_file() -> None:
    assert len(persist.encode(pgss_state(10_000))) < 600_000  # was ~3.9 MB of JSON numbers


async def test_writes_are_held_to_the_byte_budget(tmp_path: Path) -> None:
    """A state larger than the burst is written once, then held back: repeated changes do not
    each rewrite the file. A clean stop (save) writes regardless."""
    from agent.sampler.metrics import Health

    h = Health()
    w = persist.Writer(tmp_path / "sampler.json", h, budget=60_000, burst=1_000)
    st = pgss_state(2000)
    for _ in range(5):
        w.changed()
        await w.maybe_save(st)
    size = (tmp_path / "sampler.json").stat().st_size
    assert h.state_bytes_written == size and w.dirty
    await w.save(st)
    assert h.state_bytes_written == 2 * size and not w.dirty


async def test_an_urgent_change_is_written_whatever_the_budget(tmp_path: Path) -> None:
    """Consumed pg_stat_monitor buckets are written at once: a crash must not lose them."""
    from agent.sampler.metrics import Health

    h = Health()
    w = persist.Writer(tmp_path / "sampler.json", h, budget=60_000, burst=0)
    w.tokens = -1e9
    st = state_with_calls(3)
    w.changed()
    await w.maybe_save(st)
    assert h.state_bytes_written == 0 and w.dirty
    w.changed(urgent=True)
    await w.maybe_save(st)
    assert h.state_bytes_written > 0 and not w.dirty and not w.urgent


def test_the_file_is_encoded_in_pieces_as_json_dumps_would_encode_it() -> None:
    """persist.encode builds the JSON a piece at a time (a single json.dumps keeps the GIL
    throughout); the bytes must be exactly json.dumps's."""
    st = pgss_state(300)
    t = st.totals.copy()
    for i in range(200):
        t.series[(str(i * 7919), "db\u00e9", 'u"1')] = [i / 3, float(i), 1e300, -0.0, *([0.5] * (NFIELDS - 4))]
    t.warnings["01000"], t.buckets_lost["expired"] = 2.0, 3
    st = replace(st, totals=t)
    assert persist.encode(st) == json.dumps(st.to_json(), separators=(",", ":")).encode()
    assert persist.SamplerState.from_json(json.loads(persist.encode(st))).totals.series == t.series
