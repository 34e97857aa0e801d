from __future__ import annotations

import base64
import hashlib
from typing import Any

import bcrypt
import pytest
from prometheus_client import CollectorRegistry, Counter

from agent.core.context import CachedMetrics
from agent.core.http import Api

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def api(users: dict[str, str] | None = None) -> tuple[Api, list[int]]:
    live, cached = CollectorRegistry(), CollectorRegistry()
    Counter("pgnode_live", "live.", registry=live).inc()
    c = Counter("pgnode_cached", "cached.", registry=cached)
    version = [0]
    c.inc()
    a = Api(live, lambda: (True, {"status": "ok"}), lambda: {"node": "n1"}, users or {},
            [CachedMetrics(cached, lambda: version[0])])
    a._counter = c  # type: ignore[attr-defined]
    return a, version


async def call(app: Api, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    await app(scope, receive, send)
    body = b"".join(m["body"] for m in sent[1:])
    assert [m.get("more_body", False) for m in sent[1:]] == [True] * (len(sent) - 2) + [False]
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(body)).encode()
    return sent[0]["status"], body


async def test_cached_series_render_once_per_version_and_openmetrics_has_one_eof() -> None:
    a, version = api()
    code, body = await call(a, "/metrics")
    assert code == 200 and b"pgnode_live_total 1.0" in body and b"pgnode_cached_total 1.0" in body
    a._counter.inc()  # type: ignore[attr-defined]
    assert b"pgnode_cached_total 1.0" in (await call(a, "/metrics"))[1]  # same version: cached bytes
    version[0] += 1
    assert b"pgnode_cached_total 2.0" in (await call(a, "/metrics"))[1]
    _, om = await call(a, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert om.count(b"# EOF") == 1 and om.endswith(b"# EOF\n") and b"pgnode_cached_total 2.0" in om


async def test_the_cached_series_are_sent_as_rendered_not_copied_per_scrape() -> None:
    """A scrape copies nothing of the cached part (~0.2 MB at 10k statements) on the loop: the
    very bytes object rendered once is what goes out."""
    a, _ = api()
    first, _ = await a.metrics_parts("")
    again, _ = await a.metrics_parts("")
    assert again[1] is first[1] and b"pgnode_cached_total 1.0" in first[1]


async def test_unknown_path_is_404_and_post_is_405() -> None:
    a, _ = api()
    assert (await call(a, "/nope"))[0] == 404
    assert (await call(a, "/metrics", method="POST"))[0] == 405


async def test_basic_auth_with_bcrypt_and_sha256() -> None:
    users = {"ops": bcrypt.hashpw(b"pw1", bcrypt.gensalt(4)).decode(),
             "prom": "sha256:" + hashlib.sha256(b"pw2").hexdigest()}
    a, _ = api(users)

    def auth(u: str, p: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()}

    assert (await call(a, "/health"))[0] == 401
    assert (await call(a, "/health", auth("ops", "wrong")))[0] == 401
    assert (await call(a, "/health", auth("ops", "pw1")))[0] == 200
    assert (await call(a, "/health", auth("ops", "pw1")))[0] == 200  # cached verification
    assert (await call(a, "/status", auth("prom", "pw2")))[0] == 200
    assert (await call(a, "/status", auth("nobody", "pw2")))[0] == 401
