from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from agent.lab import rundir


def test_run_dirs_go_to_tmpdir_when_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert rundir.temp_root() == tmp_path


def test_run_dirs_go_to_var_tmp_not_a_ram_tmp_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TMPDIR", raising=False)
    assert rundir.temp_root() == Path("/var/tmp")


def test_pytest_tmp_path_is_under_the_same_root(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # tests/conftest.py points tempfile at temp_root() unless TMPDIR was given
    if request.config.option.basetemp:
        pytest.skip("--basetemp given: tmp_path is where it says")
    assert Path(tempfile.gettempdir()).resolve() in tmp_path.resolve().parents


def test_socket_dir_that_would_overflow_sun_path_is_refused_by_name() -> None:
    ok = Path("/var/tmp/pgna-test-abcdefgh/n1")
    assert rundir.check_socket_dir(ok) == ok
    long = Path("/var/tmp/" + "x" * 90)
    with pytest.raises(ValueError, match=r"longer than 107 bytes"):
        rundir.check_socket_dir(long)
