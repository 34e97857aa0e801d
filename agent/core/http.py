"""/metrics, /health and /status as a small ASGI app served by Hypercorn inside the agent's
task group (Hypercorn runs on asyncio, handles TLS, keep-alive and HTTP/1.1 properly, and
stops through a shutdown trigger instead of grabbing signals, so it fits the supervisor).

Scrapes only render memory: collectors read NodeState and the jobs' counters, never a database.
"""

from __future__ import annotations

import copy
import json
import resource
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import anyio
import anyio.abc
import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from agent.core import conns, slices
from agent.core.auth import Authenticator, Verdict
from agent.core.context import CachedMetrics

log = structlog.get_logger("http")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Api:
    def __init__(self, registry: CollectorRegistry, health: Callable[[], tuple[bool, dict[str, Any]]],
                 status: Callable[[], Mapping[str, object]], users: dict[str, str],
                 cached: list[CachedMetrics] | None = None) -> None:
        self.registry = registry
        self.cached = cached if cached is not None else []
        self._rendered: dict[tuple[int, str], tuple[int, bytes]] = {}
        self.health = health
        self.status = status
        self.auth = Authenticator(users) if users else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers = {k.decode().lower(): v.decode(errors="replace") for k, v in scope["headers"]}
        if self.auth is not None:
            verdict = await self.auth.check(headers.get("authorization", ""))
            if verdict is Verdict.THROTTLED:
                await _respond(send, 429, b"too many authentication attempts\n", "text/plain",
                               [(b"retry-after", b"1")])
                return
            if verdict is not Verdict.OK:
                await _respond(send, 401, b"unauthorized\n", "text/plain",
                               [(b"www-authenticate", b'Basic realm="pg-node-agent"')])
                return
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain")
            return
        path = scope["path"]
        if path == "/metrics":
            await _respond(send, 200, *await self.metrics_parts(headers.get("accept", "")))
        elif path == "/health":
            ok, body = self.health()
            await _respond(send, 200 if ok else 503, _json(body), "application/json")
        elif path == "/status":
            await _respond(send, 200, _json(self.status()), "application/json")
        else:
            await _respond(send, 404, b"not found\n", "text/plain")

    async def metrics(self, accept: str) -> tuple[bytes, str]:
        parts, ctype = await self.metrics_parts(accept)
        return b"".join(parts), ctype

    async def metrics_parts(self, accept: str) -> tuple[list[bytes], str]:
        """The body of /metrics in pieces, sent as they are: the cached query series (~0.2 MB
        at 10k statements) are not copied into one body on every scrape, in the loop's thread."""
        encoder, ctype = choose_encoder(accept)
        eof = b"# EOF\n"
        live = encoder(self.registry)
        openmetrics = live.endswith(eof)  # OpenMetrics: one EOF marker, at the very end
        parts = [live.removesuffix(eof)]
        for i, part in enumerate(self.cached):
            v = part.version()
            hit = self._rendered.get((i, ctype))
            if hit is None or hit[0] != v:
                # A cached part is large (the query series: tens of ms at 10k statements): it
                # renders on the loop a metric family at a time (agent/core/slices.py), from
                # the snapshot its collectors read (never changed).
                rendered = await slices.run(rendering(part.registry, encoder))
                hit = (v, rendered.removesuffix(eof))
                self._rendered[(i, ctype)] = hit
            parts.append(hit[1])
        if openmetrics:
            parts.append(eof)
        return parts, ctype


RENDER_SAMPLES = 100  # samples of a family rendered in one piece (~0.6 ms)


def rendering(registry: Collector, encoder: Callable[[Collector], bytes],
              size: int = RENDER_SAMPLES) -> slices.Slices[bytes]:
    """What `encoder(registry)` gives, made `size` samples at a time: the encoder writes each
    family on its own, as its header lines (`# HELP`, `# TYPE`...) then a line per sample, so
    a family's samples rendered in parts, the header kept from the first part only, join into
    the same bytes (one OpenMetrics EOF, at the end)."""
    eof, parts = b"# EOF\n", []
    for family in registry.collect():
        samples = family.samples
        for i in range(0, max(len(samples), 1), size):
            part = copy.copy(family)
            part.samples = samples[i:i + size]
            text = encoder(_Family(part))
            if i:  # the header is the part's leading comment lines; a sample line never starts with #
                lines = text.splitlines(keepends=True)
                text = b"".join(lines[next(n for n, ln in enumerate(lines) if not ln.startswith(b"#")):])
            parts.append(text.removesuffix(eof))
            yield None
    ends = encoder(_Family(None))  # what the encoder writes for nothing: OpenMetrics' EOF, or b""
    return b"".join(parts) + ends


class _Family(Collector):
    def __init__(self, family: Metric | None) -> None:
        self._family = family

    def collect(self) -> Iterable[Metric]:
        return [] if self._family is None else [self._family]


def _json(body: Any) -> bytes:
    return json.dumps(body, default=str, sort_keys=True).encode() + b"\n"


async def _respond(send: Send, code: int, body: bytes | list[bytes], ctype: str,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    parts = [body] if isinstance(body, bytes) else [p for p in body if p]
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(sum(map(len, parts))).encode())]
    await send({"type": "http.response.start", "status": code, "headers": headers + (extra or [])})
    for i, p in enumerate(parts):
        await send({"type": "http.response.body", "body": p, "more_body": i < len(parts) - 1})
    if not parts:
        await send({"type": "http.response.body", "body": b""})


KEEP_ALIVE = 5.0  # seconds an idle connection (or one that never sends a request) is kept
READ_TIMEOUT = 10  # seconds for each read once a request has started (a trickling client)


def bind(listen: str, nofile: int | None = None) -> conns.Listener:
    """Bind before serving so a busy port fails at start with a clear message. The listener
    holds at most `conns.connection_cap(nofile)` connections (see conns)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = conns.Listener(family, socket.SOCK_STREAM)
    sock.gate = conns.Gate(conns.connection_cap(nofile or resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen()
    sock.setblocking(False)
    return sock


async def serve(app: Api, sock: socket.socket, certfile: str = "", keyfile: str = "", *,
                task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.config import Config as HyperConfig
    from hypercorn.config import Sockets
    from hypercorn.utils import wrap_app

    hc = HyperConfig()
    hc.accesslog = None
    hc.errorlog = None
    hc.graceful_timeout = 1.0
    hc.backlog = conns.ACCEPT_BATCH  # asyncio accepts this many per loop turn (the kernel queue is deeper)
    hc.keep_alive_timeout = KEEP_ALIVE
    hc.read_timeout = READ_TIMEOUT
    hc.ssl_handshake_timeout = KEEP_ALIVE  # Hypercorn's 60 s would let a silent TLS client sit
    if certfile:
        hc.certfile, hc.keyfile = certfile, keyfile
    # our listener itself, not an fd:// bind (that would wrap the fd in a plain socket)
    sockets = Sockets([sock], [], []) if certfile else Sockets([], [sock], [])
    stop = anyio.Event()

    async def _serve() -> None:
        # Hypercorn stops through its shutdown trigger, not through cancellation; it closes
        # the listener it was handed.
        asgi = wrap_app(app, hc.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        with anyio.CancelScope(shield=True):
            await worker_serve(asgi, hc, sockets=sockets, shutdown_trigger=stop.wait)

    async with anyio.create_task_group() as tg:
        tg.start_soon(_serve)
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            stop.set()
