from __future__ import annotations

import pytest

from agent.archive.wal import (
    WalKind,
    check_segment_size,
    format_lsn,
    parse_lsn,
    parse_wal_name,
    pending_bytes,
    segment_distance,
    segment_name,
)

MB = 1 << 20


@pytest.mark.parametrize(
    ("size", "lsn", "name"),
    [
        (16 * MB, 0x0_0300_0028, "000000010000000000000003"),
        (16 * MB, 0x1_FF00_0000, "0000000100000001000000FF"),
        (64 * MB, 0x1_FC00_0000, "00000001000000010000003F"),
        (128 * MB, 0x2_0800_0000, "000000010000000200000001"),
        (1024 * MB, 0x3_C000_0000, "000000010000000300000003"),
        (1 * MB, 0x0_FFFF_FFFF, "000000010000000000000FFF"),
    ],
)
def test_segment_name_matches_pg_walfile_name_for_every_segment_size(size: int, lsn: int, name: str) -> None:
    assert segment_name(1, lsn, size) == name
    w = parse_wal_name(name)
    assert w is not None and w.start_lsn(size) <= lsn < w.start_lsn(size) + size


@pytest.mark.parametrize("size", [16 * MB, 64 * MB, 128 * MB, 1024 * MB])
def test_pending_bytes_counts_from_end_of_last_archived_segment(size: int) -> None:
    last = segment_name(1, 5 * size, size)
    assert pending_bytes(6 * size, last, size) == 0  # right at the boundary: nothing pending
    assert pending_bytes(6 * size + 4096, last, size) == 4096  # the unfinished current segment counts
    assert pending_bytes(9 * size, last, size) == 3 * size


def test_partial_counts_only_up_to_its_start() -> None:
    size = 16 * MB
    assert pending_bytes(0x0_0500_0100, "000000010000000000000005.partial", size) == 0x100


def test_backup_file_counts_only_up_to_its_segment_start() -> None:
    name = parse_wal_name("000000010000000000000002.00000028.backup")
    assert name is not None and name.kind is WalKind.BACKUP
    assert pending_bytes(0x0_0200_1000, "000000010000000000000002.00000028.backup", 16 * MB) == 0x1000


def test_history_file_gives_no_position() -> None:
    name = parse_wal_name("00000002.history")
    assert name is not None and name.kind is WalKind.HISTORY and name.timeline == 2
    assert pending_bytes(0x0_0500_0000, "00000002.history", 16 * MB) is None


def test_lsn_is_continuous_across_timelines() -> None:
    # segment 5 archived on timeline 1, now writing on timeline 2: the LSN does not restart
    assert pending_bytes(0x0_0600_0000, "000000010000000000000005", 16 * MB) == 0
    assert segment_distance("000000020000000000000007", "000000010000000000000005", 16 * MB) == 2


@pytest.mark.parametrize(
    "bad", ["", "junk", "00000001000000000000000G", "0000000100000000000000", "x.history"]
)
def test_odd_names_are_not_wal(bad: str) -> None:
    assert parse_wal_name(bad) is None


def test_unknown_inputs_are_unknown_not_zero() -> None:
    assert pending_bytes(None, "000000010000000000000005", 16 * MB) is None
    assert pending_bytes(0x0_0600_0000, None, 16 * MB) is None


@pytest.mark.parametrize("size", [0, 8192, 3 * MB, 2048 * MB])
def test_invalid_segment_sizes_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        check_segment_size(size)


def test_lsn_text_round_trips() -> None:
    assert parse_lsn("16/B374D848") == 0x16_B374_D848
    assert format_lsn(0x16_B374_D848) == "16/B374D848"
    with pytest.raises(ValueError, match="not an LSN"):
        parse_lsn("nope")
