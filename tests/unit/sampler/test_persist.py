"""The sampler's state file across restarts, upgrades and rollbacks (docs/upgrade.md)."""

from __future__ import annotations

import json
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
