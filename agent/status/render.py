"""`pg-node-agent status` as text: one node in a few lines, or a cluster as a table. Each job's
section gives a short cell (the cluster table) and a detail (the node view); an absent section
is a disabled job ("off"), an unreadable one is named."""

from __future__ import annotations

from agent.archive.rounds import ArchiveStatus
from agent.cluster.watchdog.feeder import WatchdogStatus
from agent.repack.component import RepackStatus
from agent.sampler.component import SamplerStatus
from agent.status.contract import AgentStatus
from agent.status.fetch import ClusterView


def _updown(v: bool) -> str:
    return "up" if v else "DOWN"


def _yes(v: bool) -> str:
    return "yes" if v else "no"


def _watchdog(w: WatchdogStatus | None) -> str:
    if w is None:
        return "-"
    if w["withholding"]:
        return "WITHHELD (" + ",".join(w["withholding"]) + ")"
    return f"fed {w['last_feed_age_seconds']}s" if w["enabled"] else "off"


def _sampler(s: SamplerStatus | None) -> tuple[str, str]:
    if s is None:
        return "off", ""
    if s["unavailable"]:
        return "NOT READING", f" ({s['unavailable']})"
    detail = f", watermark {s['watermark']}, lost buckets {_lost(s['buckets_lost'])}"
    return (f"{s['source']} {s['series']} series" if s["source"] else "starting"), detail


def _repack(r: RepackStatus | None) -> tuple[str, str]:
    if r is None:
        return "off", ""
    run = r["running"]
    cell = f"RUNNING {run['database']}.{run['table']}" if run else f"next {r['next_window'] or 'none'}"
    return cell, f", leftovers {r['leftovers']}, waiting for {', '.join(r['waiting_for']) or '-'}"


def _archive(x: ArchiveStatus | None) -> tuple[str, str]:
    if x is None:
        return "off", ""
    ready = "?" if x["ready_files"] is None else x["ready_files"]
    cell = "UNHEALTHY" if x["healthy"] is False else f"ok, {ready} .ready"
    reasons = f" ({'; '.join(x['reasons'])})" if x["reasons"] else ""
    return cell, f", last archived {x['last_archived_wal'] or '-'}, failed {x['failed_count']}{reasons}"


def _lost(lost: dict[str, int]) -> str:
    """`{"expired": 2, "reset": 1}` -> "3 (expired 2, reset 1)"; 0 when none."""
    parts = {k: v for k, v in lost.items() if v}
    if not parts:
        return "0"
    return f"{sum(parts.values())} (" + ", ".join(f"{k} {v}" for k, v in sorted(parts.items())) + ")"


def _jobs(a: AgentStatus) -> dict[str, tuple[str, str]]:
    """Each job's (cell, detail); an unreadable section says so in both."""
    jobs = {"watchdog": (_watchdog(a.get("watchdog")), ""), "sampler": _sampler(a.get("sampler")),
            "repack": _repack(a.get("repack")), "archive": _archive(a.get("archive"))}
    for name, why in a.get("unreadable", {}).items():
        jobs[name] = ("UNREADABLE", f" ({why})")
    return jobs


def render_node(a: AgentStatus) -> str:
    s = a["state"]
    lines = [
        f"node {a['node']} (scope {a['scope']}), agent {a['version']}, up {a['uptime_seconds']} s",
        f"  role {s['role']}  leader {s['leader']}  view {s['leader_view']}  "
        f"confirmed primary {_yes(s['confirmed_primary'])}  timeline {s['timeline']}",
        f"  etcd {_updown(s['dcs_up'])}  patroni {_updown(s['patroni_up'])} ({s['patroni_state']})  "
        f"postgres {_updown(s['postgres_up'])}  failover pending {_yes(s['failover_pending'])}"
        + ("  PAUSED" if s["paused"] else ""),
    ]
    if s["disagreement"]:
        lines.append(f"  DISAGREEMENT: {s['disagreement']}")
    lines += [f"  {name:<9} {cell}{detail}" for name, (cell, detail) in _jobs(a).items()]
    for name, c in sorted(a["components"].items()):
        lines.append(f"  {name:<14} {_updown(c['up']):<5} restarts {c['restarts']}  "
                     f"heartbeat {c['heartbeat_age_seconds']} s  {c['last_error']}".rstrip())
    return "\n".join(lines)


HEAD = ("MEMBER", "PATRONI", "TL", "LAG", "AGENT", "ROLE", "LEADER", "PRIMARY", "ETCD", "PG", "WATCHDOG",
        "SAMPLER", "REPACK", "ARCHIVE")


def _row(member: dict[str, object], a: AgentStatus | None) -> tuple[str, ...]:
    lag = member.get("lag", member.get("receive_lag"))
    patroni = (str(member.get("name")), f"{member.get('role', '?')} {member.get('state', '')}",
               str(member.get("timeline", "-")), "-" if lag is None else str(lag))
    if a is None:
        return (*patroni, "DOWN", *("?",) * (len(HEAD) - len(patroni) - 1))
    s, jobs = a["state"], _jobs(a)
    return (*patroni, "up", s["role"], str(s["leader"]), _yes(s["confirmed_primary"]), _updown(s["dcs_up"]),
            _updown(s["postgres_up"]), *(jobs[j][0] for j in ("watchdog", "sampler", "repack", "archive")))


def render_cluster(view: ClusterView) -> str:
    if view["error"]:
        return f"pg-node-agent: {view['error']}"
    table = [HEAD] + [_row(r["member"], r["agent"]) for r in view["members"]]
    widths = [max(len(row[i]) for row in table) for i in range(len(HEAD))]
    n = len(view["members"])
    source = f"Patroni at {view['patroni_url']}" if view["source"] != "etcd" else "member keys in etcd"
    title = f"cluster {view['scope']}: {n} member{'' if n == 1 else 's'} ({source})"
    if view["paused"]:
        title += ", maintenance mode (paused)"
    out = [title] + ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    probs = view["problems"]
    out.append("problems:" if probs else "ok: every agent answered, one confirmed primary, all see the same leader")
    out += [f"  - {p}" for p in probs]
    return "\n".join(out)
