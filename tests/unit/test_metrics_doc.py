"""docs/metrics.md lists exactly the metrics the agent registers, with their types.

The code's set is what the registries yield with every job enabled (sampler, archive, repack, a
hook), the core collectors registered by `Supervisor`, and the query series' own registries
(`ctx.cached_metrics`). Names are as scraped: a counter `x` is exposed as `x_total`, a histogram
as `x_bucket/_sum/_count` and documented under `x`.

Rule for families a collector yields only under a condition: the one known case,
`pgnode_timeline`, needs a timeline from Patroni, so the node state is fed one
`PatroniObserved(timeline=...)` before collecting. Collecting twice (before and after) and taking
the union keeps an unconditional family from hiding behind a conditional one.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from agent.app import components
from agent.core.config import parse
from agent.core.context import Context
from agent.core.events import PatroniObserved, Role
from agent.core.sdnotify import Notifier
from agent.core.supervisor import Supervisor

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(pgnode_\w+)` \| (counter|gauge|histogram) \|", re.M)


def _exposed(registry: CollectorRegistry) -> dict[str, str]:
    out: dict[str, str] = {}
    for fam in registry.collect():
        name = f"{fam.name}_total" if fam.type == "counter" else fam.name
        out[name] = fam.type
    return out


def code_metrics(tmp_path: Path) -> dict[str, str]:
    cfg = parse({
        "node": {"name": "node1", "state_dir": str(tmp_path)},
        "etcd": {"scope": "demo"},
        "sampler": {"enabled": True},
        "archive": {"enabled": True, "pgbackrest_stanza": "demo"},
        "repack": {"enabled": True, "windows": [{"cron": "0 2 * * 6", "duration": "2h"}]},
        "hooks": [{"command": ["/bin/true"]}],
    })
    ctx = Context.create(cfg)
    Supervisor(ctx, components(ctx), Notifier())  # registers the core collectors
    registries = [ctx.registry, *(c.registry for c in ctx.cached_metrics)]
    found: dict[str, str] = {}
    for reg in registries:
        found |= _exposed(reg)
    ctx.state.apply(PatroniObserved(up=True, role=Role.PRIMARY, state="running", timeline=3))
    for reg in registries:
        found |= _exposed(reg)
    return found


def doc_metrics() -> dict[str, str]:
    return dict(ROW.findall(DOC.read_text()))


def test_every_job_is_enabled_in_the_probe(tmp_path: Path) -> None:
    names = code_metrics(tmp_path)
    for prefix in ("pgnode_role", "pgnode_watchdog_", "pgnode_query_", "pgnode_sampler_", "pgnode_archive_",
                   "pgnode_backup_", "pgnode_repack_", "pgnode_hook_", "pgnode_etcd_", "pgnode_timeline"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_doc_lists_exactly_the_registered_metrics(tmp_path: Path) -> None:
    code, doc = code_metrics(tmp_path), doc_metrics()
    assert not (set(code) - set(doc)), f"registered but not in docs/metrics.md: {sorted(set(code) - set(doc))}"
    assert not (set(doc) - set(code)), f"in docs/metrics.md but not registered: {sorted(set(doc) - set(code))}"


def test_doc_types_match(tmp_path: Path) -> None:
    code, doc = code_metrics(tmp_path), doc_metrics()
    wrong = {n: (doc[n], t) for n, t in code.items() if n in doc and doc[n] != t}
    assert not wrong, f"(doc, code) type mismatch: {wrong}"
