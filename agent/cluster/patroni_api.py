"""The local Patroni's own word on its role: GET /patroni, polled, and re-read soon after every
leader event (a switchover shows in etcd a moment before Patroni's REST answer changes; the
follow-up times are `wake.FOLLOWUPS`)."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.abc
import httpx
import structlog

from agent.cluster.wake import Waker
from agent.core.config import ConfigError
from agent.core.context import Context
from agent.core.events import PatroniObserved, Role
from agent.core.patroni import parse_patroni
from agent.core.tls import patroni_context

log = structlog.get_logger("patroni_api")

def describe(e: BaseException, url: str) -> str:
    """One line naming what failed: the first cause with a message (httpx wraps TLS errors, and
    a server refusing our client certificate may just close the connection: say so)."""
    chain: list[BaseException] = []
    x: BaseException | None = e
    while x is not None and len(chain) < 10:
        chain.append(x)
        x = x.__cause__ or x.__context__
    first = next((c for c in chain if str(c).strip()), None)
    text = f"{type(first).__name__}: {first}" if first is not None else type(e).__name__
    cut = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, BrokenPipeError, ConnectionResetError)
    if "CERTIFICATE_REQUIRED" in text:  # TLS 1.3 sends the alert after the handshake, on first read
        text += " (the TLS server requires a client certificate: set patroni.cert_file and key_file)"
    elif url.startswith("https://") and "SSL" not in text and any(isinstance(c, cut) for c in chain):
        text += (" (the TLS server closed the connection: does it require a client certificate "
                 "(patroni.cert_file) or refuse this one?)")
    return text


def check_identity(body: dict[str, Any], scope: str, name: str) -> None:
    p = body.get("patroni", {})
    if p.get("scope") and p["scope"] != scope:
        raise ConfigError("etcd.scope", f'"{scope}" but the local Patroni serves scope "{p["scope"]}"')
    if p.get("name") and p["name"] != name:
        raise ConfigError("node.name", f'"{name}" but the local Patroni is member "{p["name"]}"')


async def run(ctx: Context, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    started = False
    verified = False
    waker = Waker()
    tls = patroni_context(ctx.config.patroni)  # a file that cannot be loaded: exit 78 naming the key
    async with httpx.AsyncClient(verify=tls) as http, anyio.create_task_group() as tg:
        tg.start_soon(waker.follow_leader_events, ctx.bus)
        while True:
            cfg = ctx.config
            ctx.liveness.beat("patroni_api")
            try:
                r = await http.get(f"{cfg.patroni.url.rstrip('/')}/patroni", timeout=cfg.patroni.timeout)
                body = r.json()
                if not isinstance(body, dict):
                    raise ValueError("not a JSON object")
                if not verified and cfg.patroni.verify_identity:
                    check_identity(body, cfg.etcd.scope, cfg.node.name)
                verified = True
                ctx.publish(parse_patroni(body))
            except (httpx.HTTPError, OSError, ValueError) as e:  # ssl.SSLError is an OSError
                if ctx.state.current.patroni_up or not started:
                    log.warning("patroni_unreachable", url=cfg.patroni.url, error=describe(e, cfg.patroni.url))
                ctx.publish(PatroniObserved(up=False, role=Role.UNKNOWN))
            if not started:
                task_status.started()
                started = True
            await waker.wait(cfg.patroni.poll_interval)
