"""WAL file names and LSN arithmetic, for any wal_segment_size (1 MB .. 1 GB, a power of two).

No `pg_walfile_name()`: it fails during recovery, and a standby with archive_mode=always needs
the same arithmetic. Names are `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline, log id, segment within the
log id) with optional suffixes: `.partial` (the last, unfinished segment of an old timeline,
archived at promotion), `.backup` (a backup history file, `<segment>.<offset>.backup`) and the
timeline history file `TTTTTTTT.history`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

_SEG = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial|\.[0-9A-F]{8}\.backup)?$")
_HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")

MIN_SEGMENT_SIZE = 1 << 20
MAX_SEGMENT_SIZE = 1 << 30


class WalKind(StrEnum):
    SEGMENT = "segment"
    PARTIAL = "partial"
    BACKUP = "backup"
    HISTORY = "history"


@dataclass(frozen=True, slots=True)
class WalName:
    kind: WalKind
    timeline: int
    log: int = 0      # the high 32 bits of the LSN
    seg: int = 0      # segment number within that log id

    def segno(self, segment_size: int) -> int:
        """Absolute segment number: segments are counted across log ids, 2^32 / size per log id."""
        return self.log * segments_per_log(segment_size) + self.seg

    def start_lsn(self, segment_size: int) -> int:
        return self.segno(segment_size) * segment_size

    def archived_through(self, segment_size: int) -> int | None:
        """LSN up to which WAL is safe once this file is archived, or None if the name says nothing.

        A finished segment covers up to its end. A `.partial` is the old timeline's copy: the new
        timeline's segment of the same number still has to go, so only its start counts. A `.backup`
        file is archived before the segment it names is finished (the archiver takes names in
        order), so again only that segment's start counts. A `.history` file carries no position.
        """
        match self.kind:
            case WalKind.SEGMENT:
                return self.start_lsn(segment_size) + segment_size
            case WalKind.PARTIAL | WalKind.BACKUP:
                return self.start_lsn(segment_size)
        return None


def check_segment_size(size: int) -> int:
    if size < MIN_SEGMENT_SIZE or size > MAX_SEGMENT_SIZE or size & (size - 1):
        raise ValueError(f"wal_segment_size must be a power of two from 1 MB to 1 GB, got {size}")
    return size


def segments_per_log(segment_size: int) -> int:
    return (1 << 32) // check_segment_size(segment_size)


def parse_wal_name(name: str) -> WalName | None:
    """None for anything that is not a WAL archive file name (never raises on odd input)."""
    if m := _HISTORY.match(name):
        return WalName(WalKind.HISTORY, int(m.group(1), 16))
    m = _SEG.match(name)
    if m is None:
        return None
    suffix = m.group(4) or ""
    kind = WalKind.PARTIAL if suffix == ".partial" else WalKind.BACKUP if suffix else WalKind.SEGMENT
    return WalName(kind, int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16))


def segment_name(timeline: int, lsn: int, segment_size: int) -> str:
    """The segment file holding `lsn` (what pg_walfile_name() gives, usable on a standby too)."""
    segno = lsn // segment_size
    per = segments_per_log(segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def parse_lsn(text: str) -> int:
    m = _LSN.match(text.strip())
    if m is None:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def pending_bytes(current_lsn: int | None, last_archived_wal: str | None, segment_size: int) -> int | None:
    """WAL written but not yet archived: from the end of the last archived segment to the current
    LSN, including the unfinished current segment (what a lost node would lose). None = unknown."""
    if current_lsn is None or not last_archived_wal:
        return None
    name = parse_wal_name(last_archived_wal)
    if name is None:
        return None
    through = name.archived_through(segment_size)
    if through is None:
        return None
    return max(0, current_lsn - through)


def segment_distance(newer: str, older: str, segment_size: int) -> int | None:
    """How many segments `newer` is past `older` (negative when behind); None if either has no position."""
    a, b = parse_wal_name(newer), parse_wal_name(older)
    if a is None or b is None or WalKind.HISTORY in (a.kind, b.kind):
        return None
    return a.segno(segment_size) - b.segno(segment_size)
