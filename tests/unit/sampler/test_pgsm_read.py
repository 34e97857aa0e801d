"""What the pg_stat_monitor reader makes of the extension's own values (settings, rows, errors)."""

import csv
from pathlib import Path

import psycopg
import pytest

from agent.sampler.pg_stat_monitor import ERROR_PG13, Batches, guc_number
from agent.sampler.source import SourceUnreadable, read_failure

DATA = Path(__file__).resolve().parents[2] / "data" / "pg_stat_monitor"


def test_settings_as_the_real_server_reports_them_in_pg_settings() -> None:
    rows = {r["name"]: r for r in csv.DictReader((DATA / "pgsm_settings.csv").open())}
    bt, mb = rows["pg_stat_monitor.pgsm_bucket_time"], rows["pg_stat_monitor.pgsm_max_buckets"]
    assert (bt["setting"], bt["unit"]) == ("5", "s")  # the capture: a unit, which int() never saw
    assert guc_number(bt["name"], bt["setting"], bt["unit"] or None, seconds=True) == 5
    assert guc_number(mb["name"], mb["setting"], mb["unit"] or None, seconds=False) == 4


@pytest.mark.parametrize(
    ("setting", "unit", "seconds"),
    [("5s", None, 5), ("1min", None, 60), ("60", "s", 60), ("2", "min", 120), ("1", "h", 3600),
     ("60000", "ms", 60)],
)
def test_bucket_time_in_any_unit_postgresql_prints(setting: str, unit: str | None, seconds: int) -> None:
    assert guc_number("pg_stat_monitor.pgsm_bucket_time", setting, unit, seconds=True) == seconds


@pytest.mark.parametrize(
    ("setting", "unit", "seconds"),
    [("500", "ms", True), ("abc", None, True), ("5", "furlong", True), ("0", "s", True),
     ("5s", "s", True), ("4", "s", False), ("", None, False), (None, None, True)],
)
def test_a_setting_that_is_no_whole_positive_value_is_unreadable_not_a_crash(
        setting: str | None, unit: str | None, seconds: bool) -> None:
    with pytest.raises(SourceUnreadable, match=r"pg_stat_monitor\.pgsm_x"):
        guc_number("pg_stat_monitor.pgsm_x", setting, unit, seconds=seconds)


def row(bucket: int, qid: str | None, elevel: int, sqlcode: str, calls: float,
        since: float | None = None) -> tuple[object, ...]:
    resp = ",".join([str(int(calls))] + ["0"] * 21) if qid is not None else None
    return (float(bucket), qid, elevel, sqlcode, resp, since, "db", calls, *([0.0] * 18))


def test_warnings_are_not_errors_and_neither_is_a_call() -> None:
    b = Batches(1)
    b.add_rows([row(100, "1", 0, "", 7), row(100, "2", 21, "22012", 3), row(100, "3", 19, "25P01", 2),
                row(100, "4", 22, "57P01", 1)])
    assert b.errors == {("21", "22012"): 3.0, ("22", "57P01"): 1.0}
    assert b.warnings == {"25P01": 2.0}
    assert [b.buckets[100].vals[0]] == [7.0]


def test_on_postgresql_13_error_is_elevel_20() -> None:
    b = Batches(1, ERROR_PG13)
    b.add_rows([row(100, "2", 20, "22012", 3), row(100, "3", 19, "01000", 1)])
    assert b.errors == {("20", "22012"): 3.0} and b.warnings == {"01000": 1.0}


def test_summary_rows_describe_unread_buckets_without_counting_them() -> None:
    b = Batches(1)
    b.add_rows([row(100, "1", 0, "", 7, since=101.0), row(100, "2", 21, "22012", 3, since=100.5),
                row(95, None, 0, "", 40, since=96.0), row(105, None, 0, "", 2, since=106.0)])
    assert b.summary == {100: (10.0, 100.5), 95: (40.0, 96.0), 105: (2.0, 106.0)}
    assert b.seen == {100} and b.rows == 2


def test_a_statement_timeout_is_a_timeout_and_a_lock_timeout_an_error_not_an_outage() -> None:
    assert read_failure(psycopg.errors.QueryCanceled("canceling statement due to statement timeout")) == "timeout"
    assert read_failure(psycopg.errors.LockNotAvailable("lock timeout")) == "error"
    assert read_failure(psycopg.errors.ObjectNotInPrerequisiteState("Must be loaded via "
                                                                    "shared_preload_libraries")) == "error"
    assert read_failure(psycopg.errors.UndefinedColumn("s.blk_read_time")) == "error"
    assert read_failure(SourceUnreadable("not loaded")) == "error"
    assert read_failure(psycopg.errors.AdminShutdown("terminating connection")) is None
    assert read_failure(psycopg.OperationalError("connection failed")) is None
    assert read_failure(ConnectionResetError()) is None
