from __future__ import annotations

from agent.lab.archive import newest_segment


def test_the_newest_segment_is_by_log_and_segment_not_by_timeline() -> None:
    # after a failover the new timeline goes on from the old one's segment numbers
    names = ["000000020000000000000005", "00000002.history", "000000010000000000000007",
             "000000010000000000000006.partial", "000000020000000000000007", "archive_status"]
    assert newest_segment(names) == "000000020000000000000007"


def test_no_segment_means_nothing_to_keep_by() -> None:
    assert newest_segment(["00000002.history", "x.tmp"]) is None
