"""The scope-wide repack lock: one pg_repack per cluster at a time.

An etcd key `<namespace>/<scope>/pg-node-agent/repack-lock` (value: member name) created only if
absent (txn on `create_revision == 0`) and attached to a short lease: if the agent dies or loses
etcd, the lease expires and the key goes with it. etcd3gw is blocking, so every call runs in a
worker thread that a cancellation may abandon.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import structlog
from etcd3gw.client import Etcd3Client
from etcd3gw.lease import Lease
from etcd3gw.utils import _decode, _encode

from agent.cluster.keys import Keys
from agent.core.config import EtcdConfig, read_secret

log = structlog.get_logger("repack")

T = TypeVar("T")
TTL = 10


def _client(cfg: EtcdConfig, endpoint: str) -> Etcd3Client:
    u = urlsplit(endpoint)
    c = Etcd3Client(host=u.hostname or "127.0.0.1", port=u.port or 2379, protocol=u.scheme or "http",
                    ca_cert=cfg.ca_file or None, cert_key=cfg.key_file or None,
                    cert_cert=cfg.cert_file or None, timeout=float(cfg.timeout))
    if cfg.username:
        # the gateway takes a token from /v3/auth/authenticate in the Authorization header
        pw = read_secret(cfg.password_file)
        c.session.headers["Authorization"] = str(
            c.post(c.get_url("/auth/authenticate"), json={"name": cfg.username, "password": pw.reveal()})["token"])
    return c


class RepackLock:
    def __init__(self, cfg: EtcdConfig, member: str) -> None:
        self.cfg = cfg
        self.member = member
        self.key = Keys(cfg.namespace, cfg.scope).repack_lock
        self._client: Etcd3Client | None = None
        self._lease: Lease | None = None

    async def _call(self, fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=True)

    def connect(self) -> Etcd3Client:
        err: Exception | None = None
        for ep in self.cfg.endpoints:
            try:
                c = _client(self.cfg, ep)
                c.status()
                return c
            except Exception as e:  # next endpoint
                err = e
        raise ConnectionError(f"no etcd endpoint answered: {err}")

    async def acquire(self) -> tuple[bool, str | None]:
        """(True, member) when taken; (False, holder) when another member (or None: unknown) holds it."""
        def take() -> tuple[bool, str | None]:
            c = self._client = self.connect()
            lease = c.lease(TTL)
            k = _encode(self.key)
            txn: dict[str, Any] = {
                "compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": 0}],
                "success": [{"request_put": {"key": k, "value": _encode(self.member), "lease": lease.id}}],
                "failure": [{"request_range": {"key": k}}],
            }
            resp = c.transaction(txn)
            if resp.get("succeeded"):
                self._lease = lease
                return True, self.member
            lease.revoke()
            holder: str | None = None
            for r in resp.get("responses", []):
                for kv in r.get("response_range", {}).get("kvs", []):
                    holder = _decode(kv.get("value", "")).decode()
            return False, holder

        return await self._call(take)

    async def refresh(self) -> bool:
        """False once the lease is gone (expired, or etcd unreachable for a whole call)."""
        lease = self._lease
        if lease is None:
            return False
        try:
            return await self._call(lease.refresh) > 0
        except Exception as e:
            log.warning("repack_lock_refresh_failed", key=self.key, error=str(e))
            return False

    async def release(self) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(float(self.cfg.timeout) + 1):
            try:
                await self._call(lease.revoke)
                log.info("repack_lock_released", key=self.key)
            except Exception as e:  # the lease expires by itself within TTL
                log.warning("repack_lock_release_failed", key=self.key, error=str(e), expires_in_seconds=TTL)
