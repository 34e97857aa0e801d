"""The only module that talks to etcd.

Unary calls (range, lease, txn) go through etcd3gw in a worker thread with a timeout. The watch
is NOT etcd3gw's: its watcher hangs forever on compaction, an etcd restart or a frozen etcd
(measured). We stream the gateway's /v3/watch ourselves with httpx, in the event loop; the
caller bounds its silences by asking etcd whether the stream missed anything.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import random
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import etcd3gw
import httpx
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from agent.core.config import EtcdConfig, Secret, read_secret, resolve_secret_path
from agent.core.tls import client_context
from agent.etcd.ipfilter import blocked_by_ip_filter
from agent.etcd.keys import KeyValue

log = structlog.get_logger("etcd")


class EtcdUnavailable(Exception):
    """No endpoint answered (or the answer was not usable)."""


class WatchDied(Exception):
    """The stream ended: error frame, cancel, EOF, bad JSON or deadline. One path handles all;
    `reason` is a bounded label value for pgnode_etcd_watch_restarts_total."""

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason
        self.established = False  # etcd had answered `created`: a restart, not a failed connection


# why an established stream was restarted; a stream that never got etcd's `created` answer is a
# failed connection attempt, counted apart (pgnode_etcd_connect_failures_total)
WATCH_REASONS = ("deadline", "stale", "no_leader", "auth", "eof", "error_frame", "canceled", "compacted",
                 "bad_json", "http")

# etcd's require-leader metadata (clientv3.WithRequireLeader), as the gateway maps HTTP headers to
# gRPC metadata: a member that has lost its leader refuses the call and cancels such a watch
# (after ~3 election timeouts) instead of serving what it had when it was cut off.
REQUIRE_LEADER = {"Grpc-Metadata-Hasleader": "true"}

# etcd's answers that mean "log in again" (Patroni re-authenticates on the same three)
AUTH_REJECTED = ("invalid auth token", "revision of auth store is old", "user name is empty")


class Compacted(WatchDied):
    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (compact_revision={compact_revision})", "compacted")
        self.compact_revision = compact_revision


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def unb64(s: str) -> str:
    return base64.b64decode(s).decode(errors="replace")


def prefix_end(prefix: str) -> str:
    b = bytearray(prefix.encode())
    b[-1] += 1
    return bytes(b).decode()


@dataclass(frozen=True, slots=True)
class WatchEvent:
    revision: int  # header revision of the message: the store's, NOT a resume point (see `progress`)
    changes: tuple[KeyValue, ...]  # empty for progress notifications and `created`
    created: bool = False  # etcd's answer to the create request; catch-up events may still follow

    @property
    def progress(self) -> bool:
        """A progress notification: etcd sends it only once the watcher has caught up, so its
        revision is a safe resume point (a `created` or catch-up header revision is not)."""
        return not self.changes and not self.created


class Etcd:
    def __init__(self, endpoints: list[str], timeout: float, watch_deadline: float,
                 ca_file: str = "", cert_file: str = "", key_file: str = "",
                 username: str = "", password_file: str = "") -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self._user = username
        self._password_file = password_file
        self._token: Secret | None = None  # etcd RBAC token, through the gateway
        self.logins = 0
        self.timeout = timeout
        self.watch_deadline = watch_deadline
        self._tls = (ca_file, cert_file, key_file)
        self._ctx: ssl.SSLContext | None = None
        self._filter_checked: set[str] = set()
        self._current = 0
        self._clients: dict[str, etcd3gw.Etcd3Client] = {}

    @classmethod
    def from_config(cls, cfg: EtcdConfig) -> Etcd:
        ca, cert, key = (str(resolve_secret_path(f)) if f else "" for f in (cfg.ca_file, cfg.cert_file, cfg.key_file))
        return cls(cfg.endpoints, float(cfg.timeout), float(cfg.watch_deadline), ca, cert, key, cfg.username,
                   cfg.password_file)

    def _ssl(self) -> ssl.SSLContext:
        if self._ctx is None:
            self._ctx = client_context(*self._tls, "etcd")
        return self._ctx

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._current]

    def rotate(self) -> None:
        self._current = (self._current + 1) % len(self.endpoints)

    def client(self, endpoint: str | None = None) -> etcd3gw.Etcd3Client:
        ep = endpoint or self.endpoint
        c = self._clients.get(ep)
        if c is None:
            u = urlsplit(ep)
            ca, cert, key = self._tls
            c = etcd3gw.Etcd3Client(host=u.hostname or "127.0.0.1", port=u.port or 2379,
                                    protocol=u.scheme or "http", ca_cert=ca or None, cert_cert=cert or None,
                                    cert_key=key or None, timeout=self.timeout, api_path="/v3/")
            c.session.headers.update(REQUIRE_LEADER)
            self._clients[ep] = c
        return c

    async def _call(self, c: etcd3gw.Etcd3Client, path: str, body: dict[str, Any],
                    headers: dict[str, str] | None = None) -> Any:
        ca, cert, key = self._tls
        # per request: requests lets REQUESTS_CA_BUNDLE override a session's `verify` (psf/requests#3829)
        tls: dict[str, Any] = {"verify": ca or True, "cert": (cert, key) if cert else None}
        with anyio.fail_after(self.timeout + 1):
            return await anyio.to_thread.run_sync(
                functools.partial(c.post, c.get_url(path), json=body, headers=headers, **tls), abandon_on_cancel=True)

    async def auth_headers(self) -> dict[str, str]:
        """The gateway takes an RBAC token from /v3/auth/authenticate in `Authorization`. One
        token serves every member (etcd assigns it through raft) and is kept until etcd rejects
        it (expired: `--auth-token-ttl`, or an auth change): a login is a bcrypt check and a raft
        proposal on etcd, not something to do per reconnect."""
        if not self._user:
            return {}
        if self._token is None:
            pw = read_secret(self._password_file)
            r = await self._call(self.client(), "/auth/authenticate", {"name": self._user, "password": pw.reveal()})
            self._token = Secret(str(r["token"]))
            self.logins += 1
            log.info("etcd_authenticated", user=self._user, endpoint=self.endpoint, logins=self.logins)
        return {"Authorization": self._token.reveal()}

    def token_rejected(self, error: object) -> bool:
        """Forget the token if `error` is etcd refusing it; True then (log in again and retry)."""
        text = _text(error) if isinstance(error, BaseException) else str(error)
        if self._token is None or not any(m in text for m in AUTH_REJECTED):
            return False
        self._token = None
        log.info("etcd_token_rejected", user=self._user, endpoint=self.endpoint, error=str(error)[:200])
        return True

    async def _post(self, path: str, body: dict[str, Any], *, failover: bool = True) -> Any:
        """One unary call, trying each endpoint once starting at the current one (or, without
        `failover`, only the current one, which stays current: the caller decides where to go).
        A rejected token is renewed and the call retried once."""
        errors = []
        for _ in self.endpoints if failover else self.endpoints[:1]:
            for _attempt in range(2):
                try:
                    return await self._call(self.client(), path, body, await self.auth_headers())
                except (etcd3gw.exceptions.Etcd3Exception, TimeoutError, OSError, ValueError, KeyError) as e:
                    if self.token_rejected(e) and not _attempt:
                        continue
                    errors.append(f"{self.endpoint}: {type(e).__name__}: {_text(e)[:200]}")
                    await self._name_ip_filter(e)
                    break
            if failover:
                self.rotate()
        raise EtcdUnavailable("; ".join(errors))

    async def range_prefix(self, prefix: str, *, failover: bool = True) -> tuple[int, list[KeyValue]]:
        """Linearizable range over a prefix: (header revision, key values)."""
        r = await self._post("/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))},
                             failover=failover)
        rev = int(r["header"]["revision"])
        kvs = [KeyValue(unb64(kv["key"]), unb64(kv.get("value", "")), int(kv["mod_revision"]))
               for kv in r.get("kvs", [])]
        return rev, kvs

    async def _name_ip_filter(self, e: BaseException) -> None:
        """At an endpoint's first failure: if the unit's IPAddressDeny= explains it, say so."""
        if self.endpoint in self._filter_checked:
            return
        self._filter_checked.add(self.endpoint)
        if why := await blocked_by_ip_filter(self.endpoint, e):
            log.warning("dcs_connect_blocked_by_ip_filter", endpoint=self.endpoint, **why,
                        fix="allow the address with IPAddressAllow= in a drop-in (docs/installation.md)")

    async def get(self, key: str) -> str | None:
        """Linearizable read of one key's value (None: absent)."""
        r = await self._post("/kv/range", {"key": b64(key)})
        kvs = r.get("kvs", [])
        return unb64(kvs[0].get("value", "")) if kvs else None

    async def create(self, key: str, value: str, lease: int) -> tuple[bool, str | None]:
        """Put `key` only if absent (txn on create_revision == 0), attached to `lease`:
        (True, value) when created, else (False, the value that is there)."""
        k = b64(key)
        r = await self._post("/kv/txn", {
            "compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": k, "value": b64(value), "lease": str(lease)}}],
            "failure": [{"request_range": {"key": k}}]})
        if r.get("succeeded"):
            return True, value
        for resp in r.get("responses", []):
            for kv in resp.get("response_range", {}).get("kvs", []):
                return False, unb64(kv.get("value", ""))
        return False, None

    async def lease_grant(self, ttl: int) -> int:
        return int((await self._post("/lease/grant", {"TTL": str(ttl)}))["ID"])

    async def lease_keepalive(self, lease: int) -> int:
        """The lease's remaining TTL after this keepalive; <= 0 once it has expired."""
        r = await self._post("/lease/keepalive", {"ID": str(lease)})
        return int(r.get("result", {}).get("TTL", 0))

    async def lease_revoke(self, lease: int) -> None:
        await self._post("/kv/lease/revoke", {"ID": str(lease)})

    async def scope_revisions(self, prefix: str) -> tuple[int, dict[str, int]]:
        """Linearizable keys-only range over a prefix on the current endpoint (the one the watch
        streams from): (header revision, key -> mod_revision). Cheap enough to ask whenever a
        watch has been silent: Patroni's scope holds a few keys."""
        r = await self._post("/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                           "keys_only": True}, failover=False)
        return int(r["header"]["revision"]), {unb64(kv["key"]): int(kv["mod_revision"]) for kv in r.get("kvs", [])}

    @contextlib.asynccontextmanager
    async def watch_prefix(self, prefix: str, start_revision: int
                           ) -> AsyncIterator[MemoryObjectReceiveStream[WatchEvent | WatchDied]]:
        """Open one watch stream; its messages arrive on the yielded channel, and its death as a
        WatchDied (or Compacted) item, after which nothing more comes. The stream has no read
        deadline of its own: silence on a watch is normal (etcd's progress notifications default
        to every 10 minutes), so the caller decides what a silence means (ClusterWatch asks etcd)."""
        body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision), "progress_notify": True}}
        try:
            headers = await self.auth_headers()
        except (etcd3gw.exceptions.Etcd3Exception, TimeoutError, OSError, ValueError, KeyError) as e:
            raise WatchDied(f"authentication failed: {type(e).__name__}", "connect") from None
        send, recv = anyio.create_memory_object_stream[WatchEvent | WatchDied](16)
        timeout = httpx.Timeout(self.timeout, read=None)
        failure: Exception | None = None
        async with httpx.AsyncClient(timeout=timeout, verify=self._ssl()) as http, anyio.create_task_group() as tg:
            tg.start_soon(self._read, http, body, {**headers, **REQUIRE_LEADER}, send)
            try:
                yield recv
            except Exception as e:  # raised outside the task group, so not as an ExceptionGroup
                failure = e
            finally:
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _read(self, http: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str],
                    send: MemoryObjectSendStream[WatchEvent | WatchDied]) -> None:
        async with send:
            try:
                async with http.stream("POST", f"{self.endpoint}/v3/watch", json=body, headers=headers) as resp:
                    if resp.status_code != 200:
                        raise WatchDied(f"HTTP {resp.status_code}", "http")
                    async for line in resp.aiter_lines():
                        if line.strip():
                            await send.send(_parse(line))
                raise WatchDied("stream ended (EOF)", "eof")
            except WatchDied as e:
                if e.reason == "auth":
                    self.token_rejected(e)
                await send.send(e)
            except httpx.ConnectError as e:
                await send.send(WatchDied(f"{type(e).__name__}: {e}", "connect"))
            except httpx.HTTPError as e:
                await send.send(WatchDied(f"{type(e).__name__}: {e}", "http"))


def _text(e: BaseException) -> str:
    """etcd3gw keeps the server's answer (or the transport error) in `detail_text`, not in str()."""
    return " ".join(t for t in (str(e), str(getattr(e, "detail_text", "") or "")) if t.strip())


def restart_reason(text: str, default: str) -> str:
    if "no leader" in text:
        return "no_leader"
    return "auth" if any(m in text for m in AUTH_REJECTED) else default


def _parse(line: str) -> WatchEvent:
    try:
        msg = json.loads(line)
    except ValueError:
        raise WatchDied("bad JSON on the watch stream", "bad_json") from None
    if "error" in msg:
        err = msg["error"]
        text = str(err.get("message", err) if isinstance(err, dict) else err)
        raise WatchDied(f"error frame: {text}", restart_reason(text, "error_frame"))
    res = msg.get("result")
    if not isinstance(res, dict):
        raise WatchDied("message without result", "bad_json")
    if res.get("compact_revision") and int(res["compact_revision"]) > 0:
        raise Compacted(int(res["compact_revision"]))
    if res.get("canceled"):
        text = str(res.get("cancel_reason", ""))
        raise WatchDied(f"watch canceled: {text}", restart_reason(text, "canceled"))
    rev = int(res.get("header", {}).get("revision", 0))
    changes = []
    for ev in res.get("events", []):
        kv = ev["kv"]
        deleted = ev.get("type") == "DELETE"
        changes.append(KeyValue(unb64(kv["key"]), None if deleted else unb64(kv.get("value", "")),
                                int(kv["mod_revision"])))
    return WatchEvent(rev, tuple(changes), created=bool(res.get("created")))


def backoff(attempt: int, base: float = 0.2, cap: float = 5.0) -> float:
    """Full jitter: spread reconnects of many agents after an etcd outage."""
    return random.uniform(base, min(cap, base * 2 ** attempt))  # noqa: S311
