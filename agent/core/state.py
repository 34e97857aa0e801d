"""NodeState: the one picture of this node, with a pure `reduce` and a single writer.

The node is a *confirmed primary* only when the etcd leader key names this member, Patroni's
REST API says primary and `pg_is_in_recovery()` is false (and etcd is reachable). Any missing
or disagreeing source means not confirmed, and everything that writes stops.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TypedDict

import anyio
import structlog

from agent.core.bus import Bus
from agent.core.events import (
    DcsAvailability,
    Event,
    FailoverPending,
    LeaderChanged,
    LeaderView,
    MembersChanged,
    PatroniObserved,
    PostgresAvailability,
    Role,
    RoleChanged,
)

log = structlog.get_logger("state")


class MemberStatus(TypedDict):
    name: str
    role: str


class StateStatus(TypedDict):
    """/status `state`: NodeState's fields plus what it derives (a test keeps the fields equal)."""

    member: str
    leader: str | None
    leader_known: bool
    last_leader: str | None
    leader_revision: int
    leader_changed_at: float | None
    leader_changes: int
    failover_pending: bool
    failover_candidate: str | None
    members: list[MemberStatus]
    dcs_up: bool
    dcs_endpoint: str
    patroni_up: bool
    patroni_role: str
    patroni_state: str
    paused: bool
    cluster_unlocked: bool
    failsafe_active: bool
    timeline: int | None
    postgres_up: bool
    in_recovery: bool | None
    role: str
    leader_view: str
    confirmed_primary: bool
    disagreement: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeState:
    member: str
    leader: str | None = None
    leader_known: bool = False          # a range or watch has told us the key's state
    last_leader: str | None = None      # the last non-empty leader name seen
    leader_revision: int = 0
    leader_changed_at: float | None = None  # wall clock, for _timestamp_seconds
    leader_changes: int = 0
    failover_pending: bool = False
    failover_candidate: str | None = None
    members: tuple[tuple[str, str], ...] = ()
    dcs_up: bool = False
    dcs_endpoint: str = ""
    patroni_up: bool = False
    patroni_role: Role = Role.UNKNOWN
    patroni_state: str = ""
    paused: bool = False
    cluster_unlocked: bool = False
    failsafe_active: bool = False
    timeline: int | None = None
    postgres_up: bool = False
    in_recovery: bool | None = None

    @property
    def leader_view(self) -> LeaderView:
        if not self.dcs_up or not self.leader_known or self.leader is None:
            return LeaderView.UNKNOWN
        return LeaderView.ME if self.leader == self.member else LeaderView.OTHER

    @property
    def role(self) -> Role:
        """Patroni's word when it answers; otherwise what PostgreSQL itself says."""
        if self.patroni_up and self.patroni_role is not Role.UNKNOWN:
            return self.patroni_role
        if self.postgres_up and self.in_recovery is not None:
            return Role.REPLICA if self.in_recovery else Role.PRIMARY
        return Role.UNKNOWN

    @property
    def confirmed_primary(self) -> bool:
        return (self.leader_view is LeaderView.ME and self.patroni_up
                and self.patroni_role is Role.PRIMARY and self.postgres_up and self.in_recovery is False)

    @property
    def disagreement(self) -> str:
        """Empty when the sources agree; else a short reason (a writable postgres without the key
        is how a kill -9 of Patroni, with its orphan postmaster, shows up as split-brain)."""
        writable = self.postgres_up and self.in_recovery is False
        if writable and self.leader_view is LeaderView.OTHER:
            return "writable_without_leader_key"
        if self.patroni_up and self.postgres_up and self.in_recovery is not None:
            if self.patroni_role is Role.PRIMARY and self.in_recovery:
                return "patroni_primary_but_in_recovery"
            if self.patroni_role is Role.REPLICA and not self.in_recovery:
                return "patroni_replica_but_writable"
        if self.leader_view is LeaderView.ME and self.patroni_up and self.patroni_role is Role.REPLICA:
            return "leader_key_but_patroni_replica"
        return ""

    def as_dict(self) -> StateStatus:
        return StateStatus(
            member=self.member,
            # a leader seen before the DCS went down (or before a replay after it came back is
            # applied) is not shown as the leader: /status says unknown, as pgnode_leader does
            leader=self.leader if self.dcs_up else None,
            leader_known=self.leader_known, last_leader=self.last_leader, leader_revision=self.leader_revision,
            leader_changed_at=self.leader_changed_at, leader_changes=self.leader_changes,
            failover_pending=self.failover_pending, failover_candidate=self.failover_candidate,
            members=[MemberStatus(name=n, role=r) for n, r in self.members],
            dcs_up=self.dcs_up, dcs_endpoint=self.dcs_endpoint, patroni_up=self.patroni_up,
            patroni_role=self.patroni_role.value, patroni_state=self.patroni_state, paused=self.paused,
            cluster_unlocked=self.cluster_unlocked, failsafe_active=self.failsafe_active,
            timeline=self.timeline, postgres_up=self.postgres_up, in_recovery=self.in_recovery,
            role=self.role.value, leader_view=self.leader_view.value,
            confirmed_primary=self.confirmed_primary, disagreement=self.disagreement)


def reduce(s: NodeState, ev: Event) -> NodeState:
    match ev:
        case LeaderChanged(leader=leader, revision=rev, observed_at=at):
            if rev and rev < s.leader_revision:
                return s  # older than what we applied: a replay
            # a change is a *new* leader name: a switchover's DELETE then PUT counts once, and the
            # same leader re-taking an expired key counts not at all
            changed = leader is not None and s.last_leader is not None and leader != s.last_leader
            return replace(s, leader=leader, leader_known=True, leader_revision=rev,
                           last_leader=leader if leader is not None else s.last_leader,
                           leader_changes=s.leader_changes + (1 if changed else 0),
                           leader_changed_at=at if changed else s.leader_changed_at)
        case FailoverPending(pending=p, candidate=c):
            return replace(s, failover_pending=p, failover_candidate=c)
        case MembersChanged(members=m):
            return replace(s, members=m)
        case DcsAvailability(up=up, endpoint=ep):
            return replace(s, dcs_up=up, dcs_endpoint=ep)
        case PatroniObserved(up=up, role=role, state=st, timeline=tl, paused=pa,
                             cluster_unlocked=cu, failsafe_active=fs):
            if not up:
                return replace(s, patroni_up=False, patroni_role=Role.UNKNOWN, patroni_state="")
            return replace(s, patroni_up=True, patroni_role=role, patroni_state=st,
                           timeline=tl if tl is not None else s.timeline, paused=pa,
                           cluster_unlocked=cu, failsafe_active=fs)
        case PostgresAvailability(up=up, in_recovery=rec):
            return replace(s, postgres_up=up, in_recovery=rec if up else None)
    return s


class StateStore:
    """Holder of NodeState. `publish` is the only way in: it applies the event (synchronously, in
    the event loop, so state never lags or drops an event), then fans it out on the bus."""

    def __init__(self, member: str, bus: Bus) -> None:
        self.current = NodeState(member=member)
        self._bus = bus
        self._changed = anyio.Event()

    async def changed(self) -> NodeState:
        await self._changed.wait()
        return self.current

    def publish(self, ev: Event) -> None:
        self.apply(ev)
        self._bus.publish(ev)

    def apply(self, ev: Event) -> None:
        old = self.current
        new = reduce(old, ev)
        if new == old:
            return
        self.current = new
        self._log_changes(old, new, ev)
        ev_changed, self._changed = self._changed, anyio.Event()
        ev_changed.set()
        if new.role is not old.role:
            self._bus.publish(RoleChanged(old=old.role, new=new.role))

    def _log_changes(self, old: NodeState, new: NodeState, ev: Event) -> None:
        rev = getattr(ev, "revision", None)
        if new.leader != old.leader or new.leader_known != old.leader_known:
            log.info("leader_changed", old=old.leader, new=new.leader, revision=rev,
                     view=new.leader_view.value)
        if new.role is not old.role:
            log.info("role_changed", old=old.role.value, new=new.role.value, leader=new.leader)
        if new.confirmed_primary != old.confirmed_primary:
            log.info("confirmed_primary_changed", old=old.confirmed_primary, new=new.confirmed_primary)
        if new.dcs_up != old.dcs_up:
            log.info("dcs_availability_changed", old=old.dcs_up, new=new.dcs_up, endpoint=new.dcs_endpoint,
                     reason=getattr(ev, "reason", ""))
        if new.postgres_up != old.postgres_up:
            log.info("postgres_availability_changed", old=old.postgres_up, new=new.postgres_up,
                     reason=getattr(ev, "reason", ""))
        if new.patroni_up != old.patroni_up:
            log.info("patroni_availability_changed", old=old.patroni_up, new=new.patroni_up)
        if new.failover_pending != old.failover_pending:
            log.info("failover_pending_changed", old=old.failover_pending, new=new.failover_pending,
                     candidate=new.failover_candidate)
        if new.disagreement != old.disagreement:
            log.warning("role_disagreement_changed", old=old.disagreement, new=new.disagreement)
