"""When each table was last repacked, kept in `<state_dir>/repack.json` so `min_interval` holds
across agent restarts. Written atomically (temp file + rename): a crash leaves the old file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("repack")


def table_key(database: str, schema: str, table: str) -> str:
    return f"{database}/{schema}.{table}"


@dataclass
class History:
    path: Path
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> History:
        try:
            data = json.loads(path.read_text())
            tables = data.get("tables", {}) if isinstance(data, dict) else {}
        except FileNotFoundError:
            tables = {}
        except (OSError, ValueError) as e:  # a corrupt file must not stop repacking forever
            log.warning("repack_history_unreadable", path=str(path), error=str(e))
            tables = {}
        return cls(path, tables)

    def last_success(self, key: str) -> float | None:
        v = self.tables.get(key, {}).get("last_success")
        return float(v) if v is not None else None

    def record(self, key: str, result: str, at: float, reclaimed_bytes: int = 0) -> None:
        entry = self.tables.setdefault(key, {})
        entry.update(last_attempt=at, last_result=result)
        if result == "success":
            entry.update(last_success=at, last_reclaimed_bytes=reclaimed_bytes)
        self.save()

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"tables": self.tables}, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("repack_history_not_saved", path=str(self.path), error=str(e))
