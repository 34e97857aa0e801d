"""The sampler's state file: watermark, server identity and counter values, written atomically.

Written after every batch that changed something, restored at start: counters continue across
agent restarts, and buckets finished while the agent was down are read if still retained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.core.files import write_atomic as write_atomic  # the sampler's component calls it from here
from agent.sampler.buckets import Watch
from agent.sampler.deltas import PgssDeltas
from agent.sampler.totals import Totals

log = structlog.get_logger("sampler")
VERSION = 1


@dataclass
class Identity:
    system_identifier: str | None = None
    postmaster_start: float | None = None


@dataclass
class SamplerState:
    totals: Totals
    watermark: int | None = None  # newest pg_stat_monitor bucket_start_time consumed (epoch s)
    identity: Identity = field(default_factory=Identity)
    pgss: PgssDeltas = field(default_factory=PgssDeltas)
    pgsm: Watch = field(default_factory=Watch)

    def to_json(self) -> dict[str, Any]:
        return {"version": VERSION, "watermark": self.watermark,
                "identity": {"system_identifier": self.identity.system_identifier,
                             "postmaster_start": self.identity.postmaster_start},
                "totals": self.totals.to_json(), "pgss": self.pgss.to_json(), "pgsm": self.pgsm.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SamplerState:
        if d.get("version") != VERSION:
            raise ValueError(f"unknown state version {d.get('version')!r}")
        ident = d.get("identity") or {}
        return cls(totals=Totals.from_json(d["totals"]), watermark=d.get("watermark"),
                   identity=Identity(ident.get("system_identifier"), ident.get("postmaster_start")),
                   pgss=PgssDeltas.from_json(d.get("pgss") or {}), pgsm=Watch.from_json(d.get("pgsm") or {}))


def load(path: Path, label_names: tuple[str, ...]) -> SamplerState:
    """A missing or unreadable file starts from zero (and the first read only primes)."""
    try:
        st = SamplerState.from_json(json.loads(path.read_bytes()))
    except FileNotFoundError:
        return SamplerState(totals=Totals(label_names))
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.error("sampler_state_unreadable", path=str(path), error=str(e), action="starting_from_zero")
        return SamplerState(totals=Totals(label_names))
    log.info("sampler_state_restored", path=str(path), watermark=st.watermark, series=len(st.totals.series))
    return st


def encode(state: SamplerState) -> bytes:
    return json.dumps(state.to_json(), separators=(",", ":")).encode()


def save(path: Path, state: SamplerState) -> None:
    write_atomic(path, encode(state))


