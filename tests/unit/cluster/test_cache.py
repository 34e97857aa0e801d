from __future__ import annotations

import pytest

from agent.cluster.cache import KeyCache
from agent.etcd.client import Compacted, WatchDied, _parse, b64, prefix_end
from agent.etcd.keys import Keys, KeyValue, parse_failover, parse_member_role


def test_replayed_leader_event_after_resume_is_not_reported_twice() -> None:
    c = KeyCache()
    assert c.apply(KeyValue("/service/d/leader", "node1", 10)) is not None
    assert c.apply(KeyValue("/service/d/leader", "node1", 10)) is None
    assert c.apply(KeyValue("/service/d/leader", None, 9)) is None


def test_stale_listing_after_a_newer_event_changes_nothing() -> None:
    c = KeyCache()
    c.apply(KeyValue("/s/d/leader", "node2", 12))
    assert c.sync(11, [KeyValue("/s/d/leader", "node1", 5)]) == []
    assert c.value("/s/d/leader") == "node2"


def test_listing_after_compaction_reports_what_changed_while_away() -> None:
    c = KeyCache()
    c.sync(10, [KeyValue("/s/d/leader", "node1", 3), KeyValue("/s/d/failover", "{}", 9)])
    changes = c.sync(50, [KeyValue("/s/d/leader", "node3", 40)])
    assert {(ch.key, ch.old, ch.new) for ch in changes} == {
        ("/s/d/leader", "node1", "node3"), ("/s/d/failover", "{}", None)}
    assert c.revision == 50


def test_watch_messages_parse_events_progress_and_deaths() -> None:
    put = ('{"result":{"header":{"revision":"7"},"events":[{"kv":{"key":"%s","mod_revision":"7",'
           '"value":"%s"}}]}}' % (b64("/s/d/leader"), b64("node2")))
    ev = _parse(put)
    assert ev.revision == 7 and ev.changes == (KeyValue("/s/d/leader", "node2", 7),)
    dele = ('{"result":{"header":{"revision":"8"},"events":[{"type":"DELETE","kv":{"key":"%s",'
            '"mod_revision":"8"}}]}}' % b64("/s/d/leader"))
    assert _parse(dele).changes == (KeyValue("/s/d/leader", None, 8),)
    assert _parse('{"result":{"header":{"revision":"9"}}}').changes == ()
    with pytest.raises(Compacted):
        _parse('{"result":{"header":{"revision":"9"},"canceled":true,"compact_revision":"6"}}')
    with pytest.raises(WatchDied, match="error frame"):
        _parse('{"error":{"grpc_code":14,"message":"transport is closing"}}')
    with pytest.raises(WatchDied, match="bad JSON"):
        _parse('{"result":')


def test_keys_follow_patroni_layout() -> None:
    k = Keys("/service", "demo")
    assert (k.leader, k.failover, k.members) == ("/service/demo/leader", "/service/demo/failover",
                                                  "/service/demo/members/")
    assert Keys("service/", "x").prefix == "/service/x/"
    assert prefix_end("/a/") == "/a0"
    assert parse_failover('{"leader":"n1","member":"n2"}').candidate == "n2"
    assert parse_member_role('{"role":"master"}') == "primary"


def test_member_key_is_shaped_like_an_entry_of_patronis_cluster_api() -> None:
    from agent.etcd.keys import member_as_in_cluster_api

    # a replica's member key as Patroni 4.1.5 wrote it in the lab
    value = ('{"conn_url":"postgres://127.0.0.1:41913/postgres","api_url":"http://127.0.0.1:53405/patroni",'
             '"state":"running","role":"replica","version":"4.1.5","tags":{"pg_node_agent":"http://127.0.0.1:53695"},'
             '"xlog_location":67108864,"replay_lsn":67108864,"receive_lsn":67108864,'
             '"replication_state":"streaming","timeline":1}')
    m = member_as_in_cluster_api("pg2", value, leader="pg1")
    assert m == {"name": "pg2", "role": "replica", "state": "streaming", "host": "127.0.0.1",
                 "api_url": "http://127.0.0.1:53405/patroni", "timeline": 1,
                 "tags": {"pg_node_agent": "http://127.0.0.1:53695"}}
    assert member_as_in_cluster_api("pg1", value.replace('"replica"', '"primary"'), leader="pg1")["role"] == "leader"
    assert member_as_in_cluster_api("pg3", "not json", leader="pg1")["host"] is None


def test_standby_leader_and_maintenance_mode_read_from_the_keys() -> None:
    from agent.etcd.keys import member_as_in_cluster_api, parse_pause

    standby = '{"conn_url":"postgres://10.0.0.11:5432/postgres","role":"standby_leader","state":"running"}'
    assert member_as_in_cluster_api("pg1", standby, leader="pg1")["role"] == "standby_leader"
    assert parse_pause('{"ttl": 30, "pause": true}') is True
    assert parse_pause('{"ttl": 30}') is False and parse_pause("") is False
