from __future__ import annotations

from pathlib import Path

from agent.repack.history import History
from agent.repack.metrics import RepackResult
from agent.repack.runner import argv, classify

TIMEOUT = ['WARNING: timed out, do not cancel conflicting backends',
           'INFO: Skipping repack public.tbl due to timeout']
NO_KEY = ['WARNING: relation "public.nokey" must have a primary key or not-null unique keys']


def test_rebuilt_table_is_success_whatever_was_printed() -> None:
    assert classify(['INFO: repacking table "public.tbl"'], 0, True, False) == (RepackResult.SUCCESS, "")


def test_exit_zero_after_lock_timeout_is_skipped_lock_timeout() -> None:
    assert classify(TIMEOUT, 0, False, False)[0] is RepackResult.SKIPPED_LOCK_TIMEOUT


def test_exit_zero_without_a_key_is_refused() -> None:
    assert classify(NO_KEY, 0, False, False) == (RepackResult.REFUSED, "no_primary_key")


def test_error_is_failed_with_the_message() -> None:
    res, reason = classify(["ERROR: pg_repack failed with error: boom"], 1, False, False)
    assert res is RepackResult.FAILED and "boom" in reason


def test_guard_abort_wins() -> None:
    assert classify(TIMEOUT, 134, False, True)[0] is RepackResult.ABORTED


def test_exit_zero_with_nothing_rebuilt_and_nothing_said_is_skipped() -> None:
    assert classify([], 0, False, False) == (RepackResult.SKIPPED, "not_rebuilt")


def test_argv_never_kills_backends_and_has_a_wait_timeout() -> None:
    cmd = argv("/usr/bin/pg_repack", 10.0, '"Odd"."T"', "db")
    assert cmd == ["/usr/bin/pg_repack", "--no-kill-backend", "--wait-timeout=10",
                   "-t", '"Odd"."T"', "-d", "db"]


def test_history_survives_a_reload(tmp_path: Path) -> None:
    h = History.load(tmp_path / "repack.json")
    h.record("db/public.t", "skipped_lock_timeout", 10.0)
    h.record("db/public.t", "success", 20.0, 123)
    h.record("db/public.t", "aborted", 30.0)
    again = History.load(tmp_path / "repack.json")
    assert again.last_success("db/public.t") == 20.0
    assert again.tables["db/public.t"]["last_result"] == "aborted"


def test_corrupt_history_is_empty_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "repack.json").write_text("{not json")
    assert History.load(tmp_path / "repack.json").last_success("x") is None
