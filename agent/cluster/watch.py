"""The leader watch: list the scope once, then watch it from the next revision, forever.

Every way a stream can die takes one path: resume the watch from the last applied revision
(etcd replays what happened meanwhile, in order); if that revision was compacted, list again
and report what changed while away. Retries use backoff with jitter until they succeed, never
once (vip-manager #431), and rotate through the configured endpoints.
"""

from __future__ import annotations

from typing import TypedDict

import anyio
import anyio.abc
import structlog
from prometheus_client import Counter, Gauge

from agent.cluster.cache import KeyCache, KeyChange
from agent.core.context import Context
from agent.core.events import DcsAvailability, FailoverPending, LeaderChanged, MembersChanged
from agent.etcd.client import (
    WATCH_REASONS,
    Compacted,
    Etcd,
    EtcdUnavailable,
    WatchDied,
    WatchEvent,
    backoff,
    restart_reason,
)
from agent.etcd.keys import Keys, failover_pending, parse_member_role

log = structlog.get_logger("cluster_watch")

GRACE = 1.0  # how long a change etcd already has may take to arrive on a live stream


class ClusterWatchStatus(TypedDict):
    endpoint: str
    revision: int
    stream_deaths: int      # established streams restarted
    connect_failures: int   # attempts that opened no stream (no answer, or a refusal)
    resyncs: int


class ClusterWatch:
    def __init__(self, ctx: Context, etcd: Etcd, keys: Keys) -> None:
        self.ctx = ctx
        self.restarts = Counter("pgnode_etcd_watch_restarts", "Watch streams re-established, by why the "
                                "previous one ended.", ["reason"], registry=ctx.registry)
        for r in WATCH_REASONS:
            self.restarts.labels(r)
        self.connect_failures = Counter(
            "pgnode_etcd_connect_failures", "Attempts to list the scope or to open a watch stream that got no "
            "stream: etcd did not answer, or refused (an expired token is renewed and retried).",
            registry=ctx.registry)
        self.revision = Gauge("pgnode_etcd_revision", "Last etcd revision applied from the scope's watch.",
                              registry=ctx.registry)
        self.etcd = etcd
        self.keys = keys
        self.cache = KeyCache()
        self.listed = False
        self.resyncs = 0
        self.stream_deaths = 0
        self.failed_connects = 0
        self._behind: dict[str, int] | None = None  # etcd's scope at reconnect, until the replay reaches it

    def status(self) -> ClusterWatchStatus:
        return ClusterWatchStatus(endpoint=self.etcd.endpoint, revision=self.cache.revision,
                                  stream_deaths=self.stream_deaths, connect_failures=self.failed_connects,
                                  resyncs=self.resyncs)

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
                if isinstance(e, WatchDied) and e.established:
                    attempt = 0  # etcd had answered: back off afresh
                    self.stream_deaths += 1
                    self.restarts.labels(e.reason).inc()
                else:
                    self.failed_connects += 1
                    self.connect_failures.inc()
                if self.listed and isinstance(e, WatchDied) and await self._probe(e):
                    # a silent or reset stream while etcd answers: resume at once (the DCS flaps
                    # only if the member said it had no leader)
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

    async def _probe(self, died: WatchDied) -> bool:
        """Is etcd answering a linearizable read of the leader key, on the stream's member or
        else on another (which then becomes current)? Applies nothing: the resumed watch replays,
        in order, whatever happened since the last applied revision.

        A dead member (kill -9, reset) is a transport failure: the stream died at once and
        served nothing stale, so the DCS stays up. A member that says it has no leader (its
        cancel of the require-leader stream, or a require-leader read) admits that what it served
        since it lost the leader may be stale: the DCS is down, and the leader unknown, from now
        until a member with a leader has replayed past the last applied revision (`_behind`)."""
        said = str(died) if died.reason == "no_leader" else ""
        if not said:
            try:
                await self.etcd.range_prefix(self.keys.leader, failover=False)
                return True
            except EtcdUnavailable as err:
                said = str(err) if restart_reason(str(err), "") == "no_leader" else ""
        if said:
            self._dcs(False, said)
        if len(self.etcd.endpoints) == 1:
            return False
        self.etcd.rotate()
        # the others may be electing a leader (the dead member was it; a split vote doubles that):
        # once none has answered, give them the watch deadline. A member without a leader that did
        # not serve this watch served nothing stale.
        patience = self.etcd.watch_deadline if self.ctx.state.current.dcs_up else 0.0
        until: float | None = None
        attempt = 0
        while True:
            try:
                await self.etcd.range_prefix(self.keys.leader)
                return True
            except EtcdUnavailable:
                self.ctx.liveness.beat("cluster_watch")
                now = anyio.current_time()
                until = now + patience if until is None else until
                if now >= until:
                    return False
            await anyio.sleep(backoff(attempt, cap=1.0))
            attempt += 1

    async def _list(self) -> None:
        rev, kvs = await self.etcd.range_prefix(self.keys.prefix)
        self._behind = None  # a listing is the whole truth at its revision
        self._dcs(True, f"listed at revision {rev}")
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
        """Apply one stream's messages until it dies. A silence past the deadline is not a death:
        etcd sends nothing on an idle scope (progress notifications default to every 10 min), so
        ask etcd whether the stream missed anything; only a change it did not deliver within a
        grace, or an etcd that does not answer, ends it."""
        start = self.cache.revision + 1
        created = False
        suspect = ""  # what etcd has that the stream has not delivered yet
        # the stream is trusted for watch_deadline after an event or a check; progress notifications
        # do not extend that: a member cut off from its peers keeps sending them
        trusted = anyio.current_time()
        async with self.etcd.watch_prefix(self.keys.prefix, start) as stream:
            while True:
                msg: WatchEvent | WatchDied | None = None
                left = GRACE if suspect else trusted + self.etcd.watch_deadline - anyio.current_time()
                with anyio.move_on_after(max(0.0, left)):
                    try:
                        msg = await stream.receive()
                    except anyio.EndOfStream:
                        msg = WatchDied("stream ended (EOF)", "eof")
                if isinstance(msg, WatchDied):
                    msg.established = created
                    raise msg
                self.ctx.liveness.beat("cluster_watch")
                if msg is None:
                    if not created:
                        raise WatchDied(f"no answer to the watch request within {self.etcd.watch_deadline:g}s",
                                        "connect")
                    if suspect:
                        e = WatchDied(f"the stream did not deliver changes etcd has: {suspect}", "stale")
                        e.established = True
                        raise e
                    suspect = await self._missed()
                    if not suspect:
                        trusted = anyio.current_time()
                    continue
                if not created and not self.ctx.state.current.dcs_up:
                    # back after an outage: the replay of what happened meanwhile follows `created`;
                    # the DCS is up (and the leader known) only once it is applied
                    self._behind = (await self._scope_revisions())[1]
                if msg.changes or not created:
                    trusted = anyio.current_time()
                created = True
                suspect = ""
                self._apply(msg)

    async def _missed(self) -> str:
        """After a silence: the first change etcd has in the scope that the stream has not
        delivered (empty when the scope is simply idle). Raises WatchDied when etcd does not answer."""
        return self._missing((await self._scope_revisions())[1])

    async def _scope_revisions(self) -> tuple[int, dict[str, int]]:
        try:
            return await self.etcd.scope_revisions(self.keys.prefix)
        except EtcdUnavailable as e:
            reason = restart_reason(str(e), "deadline")
            what = "refused a read of the scope (no leader)" if reason == "no_leader" else \
                "did not answer a read of the scope"
            err = WatchDied(f"etcd {what}: {e}", reason)
            err.established = True
            raise err from None

    def _missing(self, revs: dict[str, int]) -> str:
        """The first difference between etcd's scope (key -> mod_revision) and what was applied."""
        newer = sorted(k for k, r in revs.items() if r > self.cache.mod_revision(k))
        gone = sorted(k for k in self.cache.items_under(self.keys.prefix) if k not in revs)
        return f"{newer[0]} changed at revision {revs[newer[0]]}" if newer else (
            f"{gone[0]} deleted" if gone else "")

    def _apply(self, msg: WatchEvent) -> None:
        changes = [c for c in (self.cache.apply(kv) for kv in msg.changes) if c]
        if msg.progress:
            # resume only from what was applied: a `created` answer or a catch-up batch carries the
            # store's current revision while older events may still be on their way
            self.cache.revision = max(self.cache.revision, msg.revision)
        self.revision.set(self.cache.revision)
        self._emit(changes, msg.revision)
        if self._behind is not None and (msg.progress or not self._missing(self._behind)):
            self._behind = None
        if self._behind is None:
            self._dcs(True, f"watch caught up at revision {self.cache.revision}")

    def _emit(self, changes: list[KeyChange], revision: int) -> None:
        members_changed = False
        for ch in changes:
            if ch.key == self.keys.leader:
                self.ctx.publish(LeaderChanged(leader=ch.new or None, previous=ch.old, revision=ch.revision))
            elif ch.key == self.keys.failover:
                pending, candidate = failover_pending(ch.new)
                self.ctx.publish(FailoverPending(pending=pending, revision=ch.revision, candidate=candidate))
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
