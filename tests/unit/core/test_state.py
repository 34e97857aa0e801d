from __future__ import annotations

from agent.core.events import (
    DcsAvailability,
    LeaderChanged,
    LeaderView,
    PatroniObserved,
    PostgresAvailability,
    Role,
)
from agent.core.state import NodeState, reduce


def primary_node() -> NodeState:
    s = NodeState(member="node1")
    for ev in (DcsAvailability(up=True, endpoint="e"), LeaderChanged(leader="node1", previous=None, revision=5),
               PatroniObserved(up=True, role=Role.PRIMARY, state="running"),
               PostgresAvailability(up=True, in_recovery=False)):
        s = reduce(s, ev)
    return s


def test_confirmed_primary_needs_all_three_witnesses() -> None:
    s = primary_node()
    assert s.confirmed_primary
    assert not reduce(s, PostgresAvailability(up=True, in_recovery=True)).confirmed_primary
    assert not reduce(s, PatroniObserved(up=False, role=Role.UNKNOWN)).confirmed_primary
    assert not reduce(s, LeaderChanged(leader="node2", previous="node1", revision=6)).confirmed_primary
    assert not reduce(s, DcsAvailability(up=False, endpoint="e")).confirmed_primary


def test_dcs_down_makes_the_leader_view_unknown_not_other() -> None:
    s = reduce(primary_node(), DcsAvailability(up=False, endpoint="e"))
    assert s.leader_view is LeaderView.UNKNOWN


def test_stale_leader_event_older_than_applied_revision_is_ignored() -> None:
    s = reduce(primary_node(), LeaderChanged(leader="node2", previous="node1", revision=9))
    assert reduce(s, LeaderChanged(leader="node1", previous=None, revision=7)).leader == "node2"


def test_switchover_delete_then_put_counts_one_leader_change() -> None:
    s = primary_node()
    s = reduce(s, LeaderChanged(leader=None, previous="node1", revision=6))
    assert s.leader_changes == 0 and s.leader_view is LeaderView.UNKNOWN
    ev = LeaderChanged(leader="node2", previous=None, revision=7, observed_at=1_790_000_000.5)
    after = reduce(s, ev)
    assert after.leader_changes == 1 and after.leader_view is LeaderView.OTHER
    # the observation time travels with the event: reduce stays a pure function of its inputs
    assert after.leader_changed_at == 1_790_000_000.5
    assert reduce(s, ev) == after


def test_writable_postgres_without_the_leader_key_is_a_disagreement() -> None:
    # kill -9 of Patroni on the primary: a replica took the key, the orphan postmaster still writes
    s = reduce(primary_node(), PatroniObserved(up=False, role=Role.UNKNOWN))
    s = reduce(s, LeaderChanged(leader="node2", previous="node1", revision=8))
    assert s.disagreement == "writable_without_leader_key"
    assert s.role is Role.PRIMARY and not s.confirmed_primary


def test_role_falls_back_to_postgres_when_patroni_is_down() -> None:
    s = NodeState(member="n")
    assert s.role is Role.UNKNOWN
    assert reduce(s, PostgresAvailability(up=True, in_recovery=True)).role is Role.REPLICA
