from __future__ import annotations

from pathlib import Path

import pytest

from agent.archive.pgbackrest import REASONS, Settings, exit_reason, parse_info

INFO = (Path(__file__).parent / "fixtures" / "pgbackrest_info.json").read_text()


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (0, None),
        (82, "archive_timeout"),
        (44, "archive_mismatch"),
        (45, "duplicate"),
        (28, "file_invalid"),
        (87, "disabled"),
        (95, "crypto"),
        (103, "repo_invalid"),
        (56, "db_connect"),
        (68, "archive_command_invalid"),
        (1, "other"),
        (125, "other"),
    ],
)
def test_exit_code_maps_to_bounded_reason(code: int, reason: str | None) -> None:
    assert exit_reason(code) == reason
    assert reason is None or reason in REASONS


def test_deadline_is_its_own_reason() -> None:
    assert exit_reason(None, timed_out=True) == "timeout"


def test_info_takes_archive_range_of_this_system_id_only() -> None:
    i = parse_info(INFO, "demo", 7300000000000000002)
    assert (i.archive_min, i.archive_max) == ("000000010000000000000001", "00000002000000000000000A")
    i1 = parse_info(INFO, "demo", 7300000000000000001)
    assert i1.archive_max == "000000010000000000000004"


def test_info_newest_backup_skips_errored_ones() -> None:
    i = parse_info(INFO, "demo", None)
    assert i.status_code == 0
    assert (i.last_backup_stop, i.last_backup_label, i.last_backup_type) == (
        1767348020.0,
        "20260102-100000F",
        "full",
    )


def test_info_stanza_without_backups_has_unknown_backup_time() -> None:
    i = parse_info(INFO, "other", None)
    assert i.status_code == 1 and i.last_backup_stop is None and i.archive_max is None


@pytest.mark.parametrize(
    ("raw", "match"), [("not json", "not JSON"), ("{}", "array"), ("[]", "not in the output")]
)
def test_bad_info_output_is_a_value_error(raw: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_info(raw, "demo", None)


def test_argv_has_no_shell_and_optional_config() -> None:
    assert Settings("/usr/bin/pgbackrest", "demo").argv("check") == [
        "/usr/bin/pgbackrest",
        "--stanza=demo",
        "check",
    ]
    assert Settings("pgbackrest", "demo", "/etc/pgb.conf").argv("info")[1] == "--config=/etc/pgb.conf"
