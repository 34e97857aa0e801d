"""The only module that talks to etcd.

Unary calls (range, lease, txn) go through etcd3gw in a worker thread with a timeout. The watch
is NOT etcd3gw's: its watcher hangs forever on compaction, an etcd restart or a frozen etcd
(measured). We stream the gateway's /v3/watch ourselves with httpx, in the event loop, under a
per-message deadline; etcd's progress notifications keep a healthy idle stream talking.
"""

from __future__ import annotations

import base64
import functools
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import etcd3gw
import httpx
import structlog

from agent.cluster.ipfilter import blocked_by_ip_filter
from agent.cluster.keys import KeyValue
from agent.core.config import Secret, read_secret

log = structlog.get_logger("cluster_watch")


class EtcdUnavailable(Exception):
    """No endpoint answered (or the answer was not usable)."""


class WatchDied(Exception):
    """The stream ended: error frame, cancel, EOF, bad JSON or deadline. One path handles all;
    `reason` is a bounded label value for pgnode_etcd_watch_restarts_total."""

    def __init__(self, message: str, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


WATCH_REASONS = ("deadline", "eof", "error_frame", "canceled", "compacted", "bad_json", "http", "connect")


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
    revision: int  # header revision of the message
    changes: tuple[KeyValue, ...]  # empty for progress notifications and `created`


class Etcd:
    def __init__(self, endpoints: list[str], timeout: float, watch_deadline: float,
                 ca_file: str = "", cert_file: str = "", key_file: str = "",
                 username: str = "", password_file: str = "") -> None:
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self._user = username
        self._password_file = password_file
        self._tokens: dict[str, Secret] = {}  # endpoint -> auth token (etcd RBAC through the gateway)
        self.timeout = timeout
        self.watch_deadline = watch_deadline
        self._tls = (ca_file, cert_file, key_file)
        self._current = 0
        self._clients: dict[str, etcd3gw.Etcd3Client] = {}
        self._filter_checked: set[str] = set()

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
            self._clients[ep] = c
        return c

    async def _call(self, c: etcd3gw.Etcd3Client, path: str, body: dict[str, Any]) -> Any:
        with anyio.fail_after(self.timeout + 1):
            return await anyio.to_thread.run_sync(
                functools.partial(c.post, c.get_url(path), json=body), abandon_on_cancel=True)

    async def auth_headers(self) -> dict[str, str]:
        """The gateway takes an RBAC token from /v3/auth/authenticate in `Authorization`. A token
        is dropped on any failure and fetched again, so an expired one heals by itself."""
        if not self._user:
            return {}
        ep = self.endpoint
        if ep not in self._tokens:
            pw = read_secret(self._password_file)
            token = Secret(str((await self._call(self.client(), "/auth/authenticate",
                                                 {"name": self._user, "password": pw.reveal()}))["token"]))
            self._tokens[ep] = token
            self.client().session.headers["Authorization"] = token.reveal()
        return {"Authorization": self._tokens[ep].reveal()}

    def drop_token(self) -> None:
        self._tokens.pop(self.endpoint, None)

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        """One unary call, trying each endpoint once starting at the current one."""
        errors = []
        for _ in self.endpoints:
            try:
                await self.auth_headers()
                return await self._call(self.client(), path, body)
            except (etcd3gw.exceptions.Etcd3Exception, TimeoutError, OSError, ValueError, KeyError) as e:
                errors.append(f"{self.endpoint}: {type(e).__name__}")
                await self._name_ip_filter(e)
                self.drop_token()
                self.rotate()
        raise EtcdUnavailable("; ".join(errors))

    async def _name_ip_filter(self, e: BaseException) -> None:
        """At an endpoint's first failure: if the unit's IPAddressDeny= explains it, say so."""
        if self.endpoint in self._filter_checked:
            return
        self._filter_checked.add(self.endpoint)
        if why := await blocked_by_ip_filter(self.endpoint, e):
            log.warning("dcs_connect_blocked_by_ip_filter", endpoint=self.endpoint, **why,
                        fix="allow the address with IPAddressAllow= in a drop-in (docs/installation.md)")

    async def range_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """Linearizable range over a prefix: (header revision, key values)."""
        r = await self._post("/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))})
        rev = int(r["header"]["revision"])
        kvs = [KeyValue(unb64(kv["key"]), unb64(kv.get("value", "")), int(kv["mod_revision"]))
               for kv in r.get("kvs", [])]
        return rev, kvs

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Yield messages of one watch stream; raise WatchDied (or Compacted) when it ends."""
        body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision), "progress_notify": True}}
        ca, cert, key = self._tls
        timeout = httpx.Timeout(self.timeout, read=self.watch_deadline)
        try:
            headers = await self.auth_headers()
        except (etcd3gw.exceptions.Etcd3Exception, TimeoutError, OSError, ValueError, KeyError) as e:
            self.drop_token()
            raise WatchDied(f"authentication failed: {type(e).__name__}", "connect") from None
        async with httpx.AsyncClient(timeout=timeout, verify=ca or True,
                                     cert=(cert, key) if cert else None) as http:
            try:
                async with http.stream("POST", f"{self.endpoint}/v3/watch", json=body, headers=headers) as resp:
                    if resp.status_code != 200:
                        raise WatchDied(f"HTTP {resp.status_code}", "http")
                    lines = resp.aiter_lines()
                    while True:
                        with anyio.fail_after(self.watch_deadline):
                            try:
                                line = await lines.__anext__()
                            except StopAsyncIteration:
                                raise WatchDied("stream ended (EOF)", "eof") from None
                        if not line.strip():
                            continue
                        yield _parse(line)
            except TimeoutError:
                raise WatchDied(f"no message within {self.watch_deadline:g}s", "deadline") from None
            except httpx.ConnectError as e:
                raise WatchDied(f"{type(e).__name__}: {e}", "connect") from None
            except httpx.HTTPError as e:
                raise WatchDied(f"{type(e).__name__}: {e}", "http") from None


def _parse(line: str) -> WatchEvent:
    try:
        msg = json.loads(line)
    except ValueError:
        raise WatchDied("bad JSON on the watch stream", "bad_json") from None
    if "error" in msg:
        err = msg["error"]
        raise WatchDied(f"error frame: {err.get('message', err) if isinstance(err, dict) else err}", "error_frame")
    res = msg.get("result")
    if not isinstance(res, dict):
        raise WatchDied("message without result", "bad_json")
    if res.get("compact_revision") and int(res["compact_revision"]) > 0:
        raise Compacted(int(res["compact_revision"]))
    if res.get("canceled"):
        raise WatchDied(f"watch canceled: {res.get('cancel_reason', '')}", "canceled")
    rev = int(res.get("header", {}).get("revision", 0))
    changes = []
    for ev in res.get("events", []):
        kv = ev["kv"]
        deleted = ev.get("type") == "DELETE"
        changes.append(KeyValue(unb64(kv["key"]), None if deleted else unb64(kv.get("value", "")),
                                int(kv["mod_revision"])))
    return WatchEvent(rev, tuple(changes))


def backoff(attempt: int, base: float = 0.2, cap: float = 5.0) -> float:
    """Full jitter: spread reconnects of many agents after an etcd outage."""
    return random.uniform(base, min(cap, base * 2 ** attempt))  # noqa: S311
