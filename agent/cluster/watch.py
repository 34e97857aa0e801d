"""The leader watch: list the scope once, then watch it from the next revision, forever.

Every way a stream can die takes one path: resume the watch from the last applied revision
(etcd replays what happened meanwhile, in order); if that revision was compacted, list again
and report what changed while away. Retries use backoff with jitter until they succeed, never
once (vip-manager #431), and rotate through the configured endpoints.
"""

from __future__ import annotations

import anyio
import anyio.abc
import structlog
from prometheus_client import Counter, Gauge

from agent.cluster.cache import KeyCache, KeyChange
from agent.cluster.etcd import WATCH_REASONS, Compacted, Etcd, EtcdUnavailable, WatchDied, backoff
from agent.cluster.keys import Keys, parse_failover, parse_member_role
from agent.core.context import Context
from agent.core.events import DcsAvailability, FailoverPending, LeaderChanged, MembersChanged

log = structlog.get_logger("cluster_watch")


class ClusterWatch:
    def __init__(self, ctx: Context, etcd: Etcd, keys: Keys) -> None:
        self.ctx = ctx
        self.restarts = Counter("pgnode_etcd_watch_restarts", "Watch streams re-established, by why the "
                                "previous one ended.", ["reason"], registry=ctx.registry)
        for r in WATCH_REASONS:
            self.restarts.labels(r)
        self.revision = Gauge("pgnode_etcd_revision", "Last etcd revision applied from the scope's watch.",
                              registry=ctx.registry)
        self.etcd = etcd
        self.keys = keys
        self.cache = KeyCache()
        self.listed = False
        self.resyncs = 0
        self.stream_deaths = 0

    async def run(self, ctx: Context, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        attempt = 0
        started = False
        need_list = not self.listed
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                    if not started:
                        task_status.started()
                        started = True
                await self._stream()
            except Compacted as e:
                self.restarts.labels(e.reason).inc()
                log.warning("watch_compacted", compact_revision=e.compact_revision, revision=self.cache.revision)
                need_list = True
                self.resyncs += 1
                continue
            except (WatchDied, EtcdUnavailable) as e:
                self.stream_deaths += 1
                self.etcd.drop_token()  # a rejected or expired RBAC token heals on the next attempt
                self.restarts.labels(e.reason if isinstance(e, WatchDied) else "connect").inc()
                if self.listed and isinstance(e, WatchDied) and await self._probe():
                    # a silent or reset stream while etcd answers: resume at once, no DCS flap
                    log.info("watch_resumed", reason=str(e), revision=self.cache.revision,
                             endpoint=self.etcd.endpoint)
                    continue
                self._dcs(False, str(e))
                self.etcd.rotate()
                delay = backoff(attempt)
                attempt += 1
                log.info("watch_retrying", reason=str(e), retry_in_seconds=round(delay, 3),
                         revision=self.cache.revision, endpoint=self.etcd.endpoint)
                with anyio.move_on_after(delay):
                    while True:  # keep the heartbeat while backing off: an outage is not a wedge
                        ctx.liveness.beat("cluster_watch")
                        await anyio.sleep(0.5)
                if not started and attempt >= 3:
                    task_status.started()  # let the agent report READY with etcd down
                    started = True
                continue
            attempt = 0

    async def _probe(self) -> bool:
        """Is etcd answering (linearizable read of the leader key)? Applies nothing: the resumed
        watch replays, in order, whatever happened since the last applied revision."""
        try:
            await self.etcd.range_prefix(self.keys.leader)
        except EtcdUnavailable:
            return False
        return True

    async def _list(self) -> None:
        rev, kvs = await self.etcd.range_prefix(self.keys.prefix)
        self._dcs(True, "")
        changes = self.cache.sync(rev, kvs)
        self.revision.set(self.cache.revision)
        if not self.listed:
            self.listed = True
            # first listing: report the leader key's state even when absent
            if not any(c.key == self.keys.leader for c in changes):
                self.ctx.publish(LeaderChanged(leader=None, previous=None, revision=rev))
        self._emit(changes, rev)
        log.info("cluster_listed", revision=rev, keys=len(kvs), leader=self.cache.value(self.keys.leader))

    async def _stream(self) -> None:
        start = self.cache.revision + 1
        async for msg in self.etcd.watch_prefix(self.keys.prefix, start):
            self.ctx.liveness.beat("cluster_watch")
            self._dcs(True, "")
            changes = [c for c in (self.cache.apply(kv) for kv in msg.changes) if c]
            self.cache.revision = max(self.cache.revision, msg.revision)
            self.revision.set(self.cache.revision)
            self._emit(changes, msg.revision)

    def _emit(self, changes: list[KeyChange], revision: int) -> None:
        members_changed = False
        for ch in changes:
            if ch.key == self.keys.leader:
                self.ctx.publish(LeaderChanged(leader=ch.new or None, previous=ch.old, revision=ch.revision))
            elif ch.key == self.keys.failover:
                # Patroni clears the key after a switchover by writing an empty value, not a delete
                f = parse_failover(ch.new) if ch.new else None
                pending = f is not None and (f.leader is not None or f.candidate is not None)
                self.ctx.publish(FailoverPending(pending=pending, revision=ch.revision,
                                                 candidate=f.candidate if f else None))
            elif ch.key.startswith(self.keys.members):
                members_changed = True
        if members_changed:
            members = tuple(sorted((k[len(self.keys.members):], parse_member_role(v))
                                   for k, v in self.cache.items_under(self.keys.members).items()))
            if members != self.ctx.state.current.members:
                self.ctx.publish(MembersChanged(members=members, revision=revision))

    def _dcs(self, up: bool, reason: str) -> None:
        s = self.ctx.state.current
        if s.dcs_up != up or (up and s.dcs_endpoint != self.etcd.endpoint):
            self.ctx.publish(DcsAvailability(up=up, endpoint=self.etcd.endpoint, reason=reason))
