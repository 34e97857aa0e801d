"""Facts the agent observes, as frozen dataclasses. Named in the past tense; carry data, not orders."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"
    STANDBY_LEADER = "standby_leader"
    UNKNOWN = "unknown"


class LeaderView(StrEnum):
    """Whose leader key is it: this node's, another member's, or unknown (no key / DCS unreachable)."""

    ME = "me"
    OTHER = "other"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaderChanged:
    leader: str | None  # None: the key was deleted (released or expired)
    previous: str | None
    revision: int
    observed_at: float = field(default_factory=time.time)  # wall clock when the watch saw it


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverPending:
    pending: bool
    candidate: str | None
    revision: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MembersChanged:
    members: tuple[tuple[str, str], ...]  # (name, role) sorted by name
    revision: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DcsAvailability:
    up: bool
    endpoint: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PatroniObserved:
    up: bool
    role: Role
    state: str = ""
    timeline: int | None = None
    paused: bool = False
    cluster_unlocked: bool = False
    failsafe_active: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresAvailability:
    up: bool
    in_recovery: bool | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleChanged:
    old: Role
    new: Role


@dataclass(frozen=True, slots=True, kw_only=True)
class RepackStarted:
    table: str
    database: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RepackFinished:
    table: str
    database: str
    result: str
    reclaimed_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveHealthChanged:
    healthy: bool
    reasons: tuple[str, ...]


Event = (
    LeaderChanged | FailoverPending | MembersChanged | DcsAvailability | PatroniObserved
    | PostgresAvailability | RoleChanged | RepackStarted | RepackFinished | ArchiveHealthChanged
)
