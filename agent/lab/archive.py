"""Retention of the lab's file archives (`archive_command = cp %p <dir>/%f`).

An operator of a plain file archive bounds it with `pg_archivecleanup <dir> <oldest segment still
needed>`, run from cron after each base backup. Nothing restores from the lab's archives (no base
backup is taken from them), so the oldest segment still needed is the newest one archived: it is
kept, with every history file, and the older segments go. Only archived copies are removed:
pg_wal, its `.ready` backlog, the archive_command and pg_stat_archiver are untouched, so what the
archive checks read is the same real archiving and failing it was before.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from agent.lab.procs import lab_user

_SEGMENT = re.compile(r"[0-9A-F]{24}")


def newest_segment(names: list[str]) -> str | None:
    """The newest WAL segment among file names, by log and segment number: pg_archivecleanup
    compares the names without their timeline, so a newer timeline's older segment is not newer."""
    segments = [n for n in names if _SEGMENT.fullmatch(n)]
    return max(segments, key=lambda n: (n[8:], n[:8])) if segments else None


def prune(archive_dir: Path, bin_dir: Path) -> int:
    """Remove the archived segments older than the newest one; the number removed."""
    if not archive_dir.is_dir():
        return 0
    names = [p.name for p in archive_dir.iterdir()]
    keep = newest_segment(names)
    if keep is None or not any(_SEGMENT.fullmatch(n) and n[8:] < keep[8:] for n in names):
        return 0
    user = lab_user()  # the archive is the PostgreSQL user's, as on a node
    subprocess.run([str(bin_dir / "pg_archivecleanup"), str(archive_dir), keep],
                   user=user, group=user, extra_groups=[] if user else None,
                   check=True, capture_output=True, timeout=60)
    return len(names) - sum(1 for _ in archive_dir.iterdir())
