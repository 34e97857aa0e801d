"""Finding the agents and asking them: this node's /status, or Patroni's member list (etcd's
member keys when the local Patroni does not answer) and every member's agent concurrently.

A member's agent is found at the URL in its Patroni tag `pg_node_agent` (patroni.yml:
`tags: {pg_node_agent: "http://10.0.0.11:9188"}`), else at the member's host with this node's
agent port."""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypedDict
from urllib.parse import urlsplit

import anyio
import httpx

from agent.core.config import Config, Secret
from agent.core.tls import patroni_context
from agent.etcd.client import Etcd, EtcdUnavailable
from agent.etcd.keys import Keys, member_as_in_cluster_api, parse_pause
from agent.status.contract import AgentStatus, conform
from agent.status.judge import problems

AGENT_TAG = "pg_node_agent"
TIMEOUT = 3.0

Json = dict[str, Any]  # Patroni's member list: another program's JSON, read defensively
Auth = tuple[str, Secret] | None


class Row(TypedDict):
    member: Json                 # Patroni's entry for the member
    agent_url: str
    agent: AgentStatus | None    # None: no answer, or no agent's /status (see `error`)
    error: str
    auth_refused: str | None     # why the credentials were withheld from this URL


class ClusterView(TypedDict):
    scope: str | None
    patroni_url: str
    source: str                  # "patroni", or "etcd" when the local Patroni did not answer
    paused: bool
    members: list[Row]
    error: str | None            # no member list at all
    problems: list[str]


def _d(x: Any) -> Json:
    """A JSON object from another process, or {}: a malformed body must not crash the view."""
    return x if isinstance(x, dict) else {}


def own_url(cfg: Config) -> str:
    scheme = "https" if cfg.http.tls_cert_file else "http"
    return f"{scheme}://{cfg.http.listen}"


def agent_url(member: Json, fallback: str) -> str:
    """The member's agent: its tag, else its host with the port and scheme of `fallback`."""
    tag = _d(member.get("tags")).get(AGENT_TAG)
    if isinstance(tag, str) and tag:
        return tag if "://" in tag else f"http://{tag}"
    own = urlsplit(fallback)
    host = str(member.get("host") or "")
    host = f"[{host}]" if ":" in host else host
    return f"{own.scheme}://{host}:{own.port or 9188}"


def read_auth(path: Path) -> tuple[str, Secret]:
    """`user:password` on the first line of a file (the agents' basic auth), never on the command line."""
    lines = path.read_text().splitlines()
    user, sep, password = (lines[0] if lines else "").partition(":")
    if not sep or not user:
        raise ValueError(f"{path}: expected user:password on the first line")
    return user, Secret(password)


def _host(h: str) -> str:
    h = h.strip().strip("[]").lower()
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        return h.rstrip(".")


def credential_refusal(url: str, member: Json, allow_hosts: Collection[str] = ()) -> str | None:
    """Why the operator's password must not go to `url`, or None. The URL is a Patroni tag that
    whoever writes one node's patroni.yml, or etcd, chooses: credentials go over https only, and
    only to the member's own address (its host or REST API host in Patroni's member list) or to a
    host the operator named (--auth-host)."""
    u = urlsplit(url)
    if u.scheme != "https":
        return f"credentials not sent to {url}: https only"
    host = _host(u.hostname or "")
    own = {_host(str(member.get("host") or "")), _host(urlsplit(str(member.get("api_url") or "")).hostname or "")}
    own.discard("")
    if host in own or host in {_host(h) for h in allow_hosts}:
        return None
    return (f"credentials not sent to {url}: {u.hostname} is not the member's address "
            f"({', '.join(sorted(own)) or 'none known'}); name it with --auth-host if it is the agent's")


async def _get(client: httpx.AsyncClient, url: str, auth: Auth = None) -> tuple[Json | None, str]:
    try:
        r = await client.get(url, timeout=TIMEOUT,
                             auth=(auth[0], auth[1].reveal()) if auth else httpx.USE_CLIENT_DEFAULT)
        if r.status_code == 401:
            return None, "401 Unauthorized: " + ("wrong user or password in --auth-file" if auth
                                                 else "basic auth is on, give --auth-file")
        r.raise_for_status()
        body = r.json()
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:
        return None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return (body, "") if isinstance(body, dict) else (None, "not a JSON object")


async def _status(client: httpx.AsyncClient, url: str, auth: Auth = None) -> tuple[AgentStatus | None, str]:
    body, error = await _get(client, f"{url.rstrip('/')}/status", auth)
    return conform(body) if body is not None else (None, error)


async def fetch_node(url: str, auth: Auth = None) -> tuple[AgentStatus | None, str]:
    async with httpx.AsyncClient() as client:
        return await _status(client, url, auth)


async def members_from_etcd(cfg: Config) -> Json:
    """Patroni's member keys in etcd, shaped like its GET /cluster."""
    e = cfg.etcd
    etcd = Etcd.from_config(e)
    keys = Keys(e.namespace, e.scope)
    _rev, kvs = await etcd.range_prefix(keys.prefix)
    leader = next((kv.value for kv in kvs if kv.key == keys.leader), None)
    config = next((kv.value for kv in kvs if kv.key == keys.prefix + "config"), None)
    return {"scope": e.scope, "pause": parse_pause(config or ""), "members": [
        member_as_in_cluster_api(kv.key.removeprefix(keys.members), kv.value or "", leader)
        for kv in kvs if kv.key.startswith(keys.members)]}


async def fetch_cluster(patroni_url: str, fallback: str, auth: Auth = None, cfg: Config | None = None,
                        auth_hosts: Collection[str] = ()) -> ClusterView:
    """Patroni's /cluster (or, with `cfg`, its member keys in etcd when the local Patroni does not
    answer), and each member's agent /status fetched concurrently (with `auth` only where
    `credential_refusal` allows it), judged."""
    notes: list[str] = []
    async with httpx.AsyncClient(verify=patroni_context(cfg.patroni) if cfg else True) as patroni:
        topo, err = await _get(patroni, f"{patroni_url.rstrip('/')}/cluster")
    if topo is None and cfg is not None:
        notes.append(f"local Patroni unreachable at {patroni_url} ({err}): members read from etcd")
        try:
            topo = await members_from_etcd(cfg)
        except EtcdUnavailable as e:
            err = f"{err}; etcd: {e}"
    view = ClusterView(scope=None, patroni_url=patroni_url, source="etcd" if notes else "patroni", paused=False,
                       members=[], error=None, problems=notes)
    if topo is None:
        view["error"] = f"cannot read Patroni's member list: {err}"
        return view
    scope = topo.get("scope")
    view["scope"], view["paused"] = str(scope) if scope is not None else None, bool(topo.get("pause", False))
    raw = topo.get("members")
    members: list[Json] = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []

    async def ask(client: httpx.AsyncClient, m: Json) -> None:
        url = agent_url(m, fallback)
        refused = credential_refusal(url, m, auth_hosts) if auth else None
        body, error = await _status(client, url, None if refused else auth)
        if refused and error.startswith("401"):
            error = "401 Unauthorized: credentials withheld"
        view["members"].append(Row(member=m, agent_url=url, agent=body, error=error, auth_refused=refused))

    async with httpx.AsyncClient() as client, anyio.create_task_group() as tg:
        for m in members:
            tg.start_soon(ask, client, m)
    view["members"].sort(key=lambda r: str(r["member"].get("name")))
    view["problems"] += problems(view["members"])
    return view
