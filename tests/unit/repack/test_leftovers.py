from __future__ import annotations

import json
from pathlib import Path

from agent.repack.leftovers import Pending


def test_listed_tables_survive_a_restart_and_an_emptied_database_is_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "repack-leftovers.json"
    p = Pending.load(path)
    assert p.set("app", [42, 7, 42]) is True
    assert p.set("app", [7, 42]) is False  # unchanged: not rewritten
    assert Pending.load(path).tables == {"app": [7, 42]}
    assert p.count() == 2
    assert p.set("app", []) is True
    assert Pending.load(path).tables == {} and json.loads(path.read_text()) == {"tables": {}}


def test_an_unreadable_file_starts_an_empty_list(tmp_path: Path) -> None:
    path = tmp_path / "repack-leftovers.json"
    path.write_text("{not json")
    assert Pending.load(path).tables == {}
    path.write_text(json.dumps({"tables": {"app": ["x", 5], "db2": "nope", "db3": []}}))
    assert Pending.load(path).tables == {"app": [5]}
