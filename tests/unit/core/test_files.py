from __future__ import annotations

import os
from pathlib import Path

import structlog

from agent.core.files import read_json_object, save_json

log = structlog.get_logger("test")


def test_a_state_file_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    save_json(path, {"b": 1, "a": [2]}, log, "not_saved")
    assert read_json_object(path, log, "unreadable") == {"a": [2], "b": 1}
    assert os.listdir(path.parent) == ["state.json"]


def test_a_damaged_or_missing_state_file_reads_empty_and_is_named(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    with structlog.testing.capture_logs() as logs:
        assert read_json_object(path, log, "unreadable") == {}  # missing: a first start, not an error
        path.write_text("[1, 2]")
        assert read_json_object(path, log, "unreadable") == {}
        path.write_text("{half")
        assert read_json_object(path, log, "unreadable") == {}
    assert [(e["event"], e["path"]) for e in logs] == [("unreadable", str(path))] * 2


def test_a_state_file_that_cannot_be_written_is_logged_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with structlog.testing.capture_logs() as logs:
        save_json(blocker / "state.json", {"a": 1}, log, "not_saved")  # its directory is a file
    assert [e["event"] for e in logs] == ["not_saved"]
