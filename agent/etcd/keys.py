"""Patroni's key layout in etcd and the parsers of its values; raw JSON stays in this module."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True, slots=True)
class Keys:
    namespace: str
    scope: str

    @property
    def prefix(self) -> str:
        ns = "/" + self.namespace.strip("/") if self.namespace.strip("/") else ""
        return f"{ns}/{self.scope}/"

    @property
    def leader(self) -> str:
        return self.prefix + "leader"

    @property
    def failover(self) -> str:
        return self.prefix + "failover"

    @property
    def members(self) -> str:
        return self.prefix + "members/"

    @property
    def repack_lock(self) -> str:
        return self.prefix + "pg-node-agent/repack-lock"


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: str | None  # None: deleted
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Failover:
    leader: str | None
    candidate: str | None


def parse_failover(value: str) -> Failover:
    try:
        d = json.loads(value)
    except ValueError:
        return Failover(None, None)
    if not isinstance(d, dict):
        return Failover(None, None)
    return Failover(d.get("leader") or None, d.get("member") or None)


def failover_pending(value: str | None) -> tuple[bool, str | None]:
    """(pending, candidate) from the `failover` key. Patroni clears it after a switchover by
    writing `{}` or an empty value, not by deleting it: only a leader or a member named is news."""
    f = parse_failover(value) if value else None
    return (f is not None and (f.leader is not None or f.candidate is not None)), (f.candidate if f else None)


def parse_member_role(value: str) -> str:
    try:
        d = json.loads(value)
    except ValueError:
        return "unknown"
    role = d.get("role", "unknown") if isinstance(d, dict) else "unknown"
    return "primary" if role == "master" else str(role)


def member_as_in_cluster_api(name: str, value: str, leader: str | None) -> dict[str, Any]:
    """A member key shaped like one entry of Patroni's GET /cluster (name, role, state, host,
    api_url, timeline, tags): what `status --cluster` needs when the local Patroni is down."""
    try:
        d = json.loads(value)
    except ValueError:
        d = {}
    if not isinstance(d, dict):
        d = {}
    if name == leader:
        role = "standby_leader" if d.get("role") in ("standby_leader", "standby-leader") else "leader"
    else:
        role = "replica" if d.get("role") in ("replica", None) else str(d["role"])
    # a streaming replica's key says state "running" plus replication_state; /cluster shows the latter
    out: dict[str, Any] = {"name": name, "role": role, "state": d.get("replication_state") or d.get("state"),
                           "host": urlsplit(str(d.get("conn_url", ""))).hostname, "api_url": d.get("api_url"),
                           "timeline": d.get("timeline"), "tags": d.get("tags") or {}}
    return out


def parse_pause(config_value: str) -> bool:
    """Maintenance mode, from the cluster's `config` key (`{"pause": true, ...}`)."""
    try:
        d = json.loads(config_value)
    except ValueError:
        return False
    return bool(d.get("pause")) if isinstance(d, dict) else False
