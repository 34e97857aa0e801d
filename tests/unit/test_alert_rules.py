"""The alert rules lint clean, every alert fires and stays quiet as its promtool tests say, and
every alert carries the annotations and a runbook anchor that exists in docs/runbooks.md."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "prometheus" / "pg-node-agent.rules.yml"
TESTS = sorted((ROOT / "config" / "prometheus" / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing (Debian package `prometheus`)")


def _alerts() -> dict[str, str]:
    """alert name -> its rule's text (our own file, one `- alert:` per rule)."""
    text = RULES.read_text()
    parts = re.split(r"^\s*- alert: ", text, flags=re.M)[1:]
    return {p.split("\n", 1)[0].strip(): p for p in parts}


def _anchor(heading: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", heading.strip().lower()).replace(" ", "-")


@needs_promtool
def test_rules_pass_promtool_check_with_lint() -> None:
    r = subprocess.run(
        [str(PROMTOOL), "check", "rules", "--lint=all", "--lint-fatal", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_rule_tests_pass() -> None:
    r = subprocess.run(
        [str(PROMTOOL), "test", "rules", *map(str, TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS[0].parent,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    text = "\n".join(p.read_text() for p in TESTS)
    cases = re.findall(
        r"alertname: (\w+)\n\s+exp_alerts:(.*?)(?=\n- name:|\n  - eval_time|\Z)", text, flags=re.S
    )
    firing = {a for a, body in cases if "exp_labels" in body}
    quiet = {a for a, body in cases if body.strip().startswith("[]")}
    alerts = set(_alerts())
    assert alerts - firing == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a quiet case"


def test_every_alert_has_severity_summary_description_and_an_existing_runbook() -> None:
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", RUNBOOKS.read_text(), flags=re.M)}
    for name, body in _alerts().items():
        assert re.search(r"severity: (critical|warning|info)", body), name
        assert "summary:" in body and "description:" in body, name
        m = re.search(r'runbook_url: "docs/runbooks\.md#([\w-]+)"', body)
        assert m is not None, f"{name}: no runbook_url into docs/runbooks.md"
        assert m.group(1) in anchors, f"{name}: runbook anchor #{m.group(1)} missing in docs/runbooks.md"
