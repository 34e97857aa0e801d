"""When each table was last repacked, and how fast this node repacks, kept in
`<state_dir>/repack.json` so `min_interval` holds across agent restarts and a table too large for
the rest of a window is not started. Written atomically (agent.core.files): a crash leaves the
old file."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.core import files

log = structlog.get_logger("repack")

RATES_KEPT = 10           # the node's last successful runs that estimate its throughput
MIN_RATE_BYTES = 1 << 20  # runs of smaller tables say more about fixed costs than throughput


def table_key(database: str, schema: str, table: str) -> str:
    return f"{database}/{schema}.{table}"


@dataclass
class History:
    path: Path
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    rates: list[float] = field(default_factory=list)  # bytes rewritten per second, newest last

    @classmethod
    def load(cls, path: Path) -> History:
        data = files.read_json_object(path, log, "repack_history_unreadable")  # must not stop repacking
        raw_tables = data.get("tables")
        tables: dict[str, dict[str, Any]] = raw_tables if isinstance(raw_tables, dict) else {}
        raw = data.get("rates")
        rates = [float(r) for r in raw if isinstance(r, int | float) and r > 0] if isinstance(raw, list) else []
        return cls(path, tables, rates)

    def throughput(self) -> float | None:
        """Median bytes per second of this node's recent runs; None before the first one."""
        return statistics.median(self.rates) if self.rates else None

    def last_success(self, key: str) -> float | None:
        v = self.tables.get(key, {}).get("last_success")
        return float(v) if v is not None else None

    def record(self, key: str, result: str, at: float, reclaimed_bytes: int = 0, *,
               total_bytes: int = 0, duration: float = 0.0) -> None:
        entry = self.tables.setdefault(key, {})
        entry.update(last_attempt=at, last_result=result)
        if result == "success":
            entry.update(last_success=at, last_reclaimed_bytes=reclaimed_bytes)
            if total_bytes >= MIN_RATE_BYTES and duration > 0:
                self.rates = [*self.rates, total_bytes / duration][-RATES_KEPT:]
        self.save()

    def save(self) -> None:
        files.save_json(self.path, {"tables": self.tables, "rates": self.rates}, log, "repack_history_not_saved")
