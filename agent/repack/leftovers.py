"""The tables whose pg_repack leftovers are not dropped yet, per database, kept in
`<state_dir>/repack-leftovers.json`: a cleanup that could not take its lock (a client held the
table) is retried until the list is empty, across agent restarts. Written atomically (temp file +
rename + fsync, agent.core.files): a crash leaves the old file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import structlog

from agent.core import files

log = structlog.get_logger("repack")


@dataclass
class Pending:
    path: Path
    tables: dict[str, list[int]] = field(default_factory=dict)  # database -> table oids

    @classmethod
    def load(cls, path: Path) -> Pending:
        # unreadable: the sweep at promotion finds them again
        raw = files.read_json_object(path, log, "repack_leftovers_file_unreadable").get("tables")
        tables = {str(db): sorted({int(o) for o in oids if isinstance(o, int)})
                  for db, oids in (raw.items() if isinstance(raw, dict) else []) if isinstance(oids, list)}
        return cls(path, {db: oids for db, oids in tables.items() if oids})

    def count(self) -> int:
        return sum(len(v) for v in self.tables.values())

    def set(self, database: str, oids: list[int]) -> bool:
        """Replace one database's list; True (and saved) when it changed."""
        new = sorted(set(oids))
        if new == self.tables.get(database, []):
            return False
        if new:
            self.tables[database] = new
        else:
            self.tables.pop(database, None)
        self.save()
        return True

    def save(self) -> None:
        files.save_json(self.path, {"tables": self.tables}, log, "repack_leftovers_file_not_saved")
