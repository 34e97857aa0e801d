"""What an operator must look at in a cluster's agents: empty when the cluster is whole and of
one mind. Pure: it reads the rows `fetch` built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.status.contract import AgentStatus

if TYPE_CHECKING:
    from agent.status.fetch import Row

LEADER_ROLES = ("leader", "standby_leader")


def agent_problems(name: str, a: AgentStatus, patroni_leader: str | None) -> list[str]:
    """What one member's own agent says is wrong, or disagrees with Patroni's leader."""
    s = a["state"]
    out = [f"{name}: /status section {sec} unreadable: {why}" for sec, why in a.get("unreadable", {}).items()]
    if patroni_leader and s["dcs_up"] and s["leader"] != patroni_leader:
        out.append(f"{name}: its agent sees leader {s['leader']!r}, Patroni says {patroni_leader!r}")
    if s["disagreement"]:
        out.append(f"{name}: {s['disagreement']}")
    witnesses = ((s["dcs_up"], "etcd"), (s["patroni_up"], "Patroni"), (s["postgres_up"], "PostgreSQL"))
    out += [f"{name}: {what} unreachable from the agent" for up, what in witnesses if not up]
    down = sorted(c for c, h in a["components"].items() if not h["up"])
    if down:
        out.append(f"{name}: components down: {', '.join(down)}")
    smp = a.get("sampler")
    if smp and smp["unavailable"]:
        out.append(f"{name}: sampler not reading: {smp['unavailable']}")
    arch = a.get("archive")
    if arch and arch["healthy"] is False:
        out.append(f"{name}: archive unhealthy: {'; '.join(arch['reasons']) or arch['error']}")
    return out


def problems(rows: list[Row]) -> list[str]:
    leaders = [r["member"].get("name") for r in rows if r["member"].get("role") in LEADER_ROLES]
    out = [] if leaders else ["Patroni names no leader"]
    patroni_leader = str(leaders[0]) if len(leaders) == 1 else None
    confirmed = []
    for r in rows:
        name, a = str(r["member"].get("name")), r["agent"]
        if r["auth_refused"]:
            out.append(f"{name}: {r['auth_refused']}")
        if a is None:
            out.append(f"{name}: agent not reachable at {r['agent_url']} ({r['error']})")
        elif a["node"] != name:
            out.append(f"{name}: {r['agent_url']} is the agent of {a['node']!r}, not of this member")
        else:
            confirmed += [name] if a["state"]["confirmed_primary"] else []
            out += agent_problems(name, a, patroni_leader)
    standby_cluster = any(r["member"].get("role") == "standby_leader" for r in rows)
    if not standby_cluster and len(confirmed) != 1 and any(r["agent"] for r in rows):
        out.append(f"{len(confirmed)} confirmed primaries ({', '.join(confirmed) or 'none'}), expected exactly 1")
    return out
