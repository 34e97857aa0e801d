"""The scope-wide repack lock: one pg_repack per cluster at a time.

An etcd key `<namespace>/<scope>/pg-node-agent/repack-lock` (value: member name) created only if
absent (txn on `create_revision == 0`) and attached to a short lease: if the agent dies or loses
etcd, the lease expires and the key goes with it. The lock uses the agent's one etcd client, so
it fails over between endpoints and logs in again when etcd rejects a token; a failed refresh is
tolerated while the lease's TTL, counted from the last confirmed keepalive, still holds (a rolling
restart of one etcd member must not abort a running repack).
"""

from __future__ import annotations

import time

import anyio
import structlog

from agent.core.config import EtcdConfig
from agent.etcd.client import Etcd, EtcdUnavailable
from agent.etcd.keys import Keys

log = structlog.get_logger("repack")

TTL = 10


def lock_key(cfg: EtcdConfig) -> str:
    return Keys(cfg.namespace, cfg.scope).repack_lock


class RepackLock:
    def __init__(self, cfg: EtcdConfig, member: str, etcd: Etcd | None = None) -> None:
        self.cfg = cfg
        self.member = member
        self.key = lock_key(cfg)
        self.etcd = etcd or Etcd.from_config(cfg)
        self._lease: int | None = None
        self._confirmed = 0.0  # monotonic time of the last keepalive etcd answered

    async def holder(self) -> str | None:
        """Who holds the lock now (None: nobody). Raises EtcdUnavailable."""
        return await self.etcd.get(self.key)

    async def acquire(self) -> tuple[bool, str | None]:
        """(True, member) when taken; (False, holder) when another member (or None: unknown) holds
        it. Raises EtcdUnavailable (no endpoint answered)."""
        lease = await self.etcd.lease_grant(TTL)
        t0 = time.monotonic()
        try:
            ok, holder = await self.etcd.create(self.key, self.member, lease)
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(float(self.cfg.timeout) + 1):
                await self._revoke(lease)
            raise
        if ok:
            self._lease, self._confirmed = lease, t0
            return True, self.member
        await self._revoke(lease)
        return False, holder

    async def refresh(self) -> bool:
        """False once the lease is gone: etcd says it expired, or no keepalive was confirmed for a
        whole TTL. A failed keepalive within the TTL is logged and tolerated."""
        lease = self._lease
        if lease is None:
            return False
        try:
            left = await self.etcd.lease_keepalive(lease)
        except EtcdUnavailable as e:
            age = time.monotonic() - self._confirmed
            held = age < TTL - float(self.cfg.timeout)  # a keepalive sent now might land after expiry
            log.warning("repack_lock_refresh_failed", key=self.key, error=str(e)[:200],
                        seconds_since_confirmed=round(age, 1), still_held=held)
            return held
        if left <= 0:
            log.warning("repack_lock_lease_expired", key=self.key)
            return False
        self._confirmed = time.monotonic()
        return True

    async def _revoke(self, lease: int) -> None:
        try:
            await self.etcd.lease_revoke(lease)
        except EtcdUnavailable as e:  # the lease expires by itself within TTL
            log.warning("repack_lock_release_failed", key=self.key, error=str(e)[:200], expires_in_seconds=TTL)
            return
        log.info("repack_lock_released", key=self.key)

    async def release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(float(self.cfg.timeout) + 1):
            await self._revoke(lease)
