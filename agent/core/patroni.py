"""Patroni's GET /patroni body read as a PatroniObserved: one parser for the watch's poller and
`repack plan` (the repack job must not import the cluster watch)."""

from __future__ import annotations

from typing import Any

from agent.core.events import PatroniObserved, Role

_ROLES = {"primary": Role.PRIMARY, "master": Role.PRIMARY, "replica": Role.REPLICA,
          "standby_leader": Role.STANDBY_LEADER, "standby-leader": Role.STANDBY_LEADER}


def parse_patroni(body: dict[str, Any]) -> PatroniObserved:
    role = _ROLES.get(str(body.get("role", "")), Role.UNKNOWN)
    if body.get("state") not in ("running", "streaming", "in archive recovery"):
        role = Role.UNKNOWN if body.get("state") in ("stopped", "crashed", "starting", None) else role
    tl = body.get("timeline")
    return PatroniObserved(up=True, role=role, state=str(body.get("state", "")),
                           timeline=int(tl) if isinstance(tl, int) else None,
                           paused=bool(body.get("pause", False)),
                           cluster_unlocked=bool(body.get("cluster_unlocked", False)),
                           failsafe_active=bool(body.get("failsafe_mode_is_active", False)))
