"""docs/architecture.md is a newcomer's map: its module list must be the tree, and a path it
names must exist (it once sent readers to a `cluster/etcd.py` that had moved)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs/architecture.md"


def _module_map() -> set[str]:
    """`agent/pkg/pkg.py` for every module the "Module map" section lists."""
    section = PAGE.read_text().split("\n## Module map\n", 1)[1].split("\n## ", 1)[0]
    listed: set[str] = set()
    for item in re.split(r"\n- ", section)[1:]:
        package, _, rest = item.partition(":")
        package = package.strip("`")
        listed |= {package + name for name in re.findall(r"`([\w.]+\.py)`", rest)}
    return listed


def test_the_module_map_lists_every_module_of_the_tree_and_no_other() -> None:
    tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "agent").rglob("*.py") if p.name != "__init__.py"}
    listed = _module_map()
    assert listed, "no Module map section"
    assert sorted(tree - listed) == [], "modules missing from docs/architecture.md's Module map"
    assert sorted(listed - tree) == [], "Module map names modules that do not exist"


def test_every_agent_path_the_page_names_exists() -> None:
    named = set(re.findall(r"\bagent/[\w/]*\w(?:\.py|/)", PAGE.read_text()))
    assert named
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
