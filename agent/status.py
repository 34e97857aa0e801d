"""`pg-node-agent status`: one agent's /status as a short text (or JSON), and `--cluster`: every
member's agent, found through the local Patroni's member list, on one screen.

A member's agent is found at the URL in its Patroni tag `pg_node_agent` (patroni.yml:
`tags: {pg_node_agent: "http://10.0.0.11:9188"}`), else at the member's host with this node's
agent port. Exit 1 when a member's agent does not answer or the members disagree, so the
command can stand in a check script."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from agent.cluster.etcd import Etcd, EtcdUnavailable
from agent.cluster.keys import Keys, member_as_in_cluster_api, parse_pause
from agent.core.config import Config, Secret

AGENT_TAG = "pg_node_agent"
TIMEOUT = 3.0

Body = dict[str, Any]


def _d(x: Any) -> Body:
    """A JSON object from another process, or {}: a malformed body must not crash the view."""
    return x if isinstance(x, dict) else {}


# ---------------------------------------------------------------- finding and asking


def own_url(cfg: Config) -> str:
    scheme = "https" if cfg.http.tls_cert_file else "http"
    return f"{scheme}://{cfg.http.listen}"


def agent_url(member: Body, fallback: str) -> str:
    """The member's agent: its tag, else its host with the port and scheme of `fallback`."""
    tag = _d(member.get("tags")).get(AGENT_TAG)
    if isinstance(tag, str) and tag:
        return tag if "://" in tag else f"http://{tag}"
    own = urlsplit(fallback)
    host = str(member.get("host") or "")
    host = f"[{host}]" if ":" in host else host
    return f"{own.scheme}://{host}:{own.port or 9188}"


Auth = tuple[str, Secret] | None


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


def credential_refusal(url: str, member: Body, allow_hosts: Collection[str] = ()) -> str | None:
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


async def _get(client: httpx.AsyncClient, url: str, auth: Auth = None) -> tuple[Body | None, str]:
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


async def fetch_node(url: str, auth: Auth = None) -> tuple[Body | None, str]:
    async with httpx.AsyncClient() as client:
        return await _get(client, f"{url.rstrip('/')}/status", auth)


async def members_from_etcd(cfg: Config) -> Body:
    """Patroni's member keys in etcd, shaped like its GET /cluster."""
    e = cfg.etcd
    etcd = Etcd(e.endpoints, e.timeout, e.watch_deadline, e.ca_file, e.cert_file, e.key_file, e.username,
                e.password_file)
    keys = Keys(e.namespace, e.scope)
    _rev, kvs = await etcd.range_prefix(keys.prefix)
    leader = next((kv.value for kv in kvs if kv.key == keys.leader), None)
    config = next((kv.value for kv in kvs if kv.key == keys.prefix + "config"), None)
    return {"scope": e.scope, "pause": parse_pause(config or ""), "members": [
        member_as_in_cluster_api(kv.key.removeprefix(keys.members), kv.value or "", leader)
        for kv in kvs if kv.key.startswith(keys.members)]}


async def fetch_cluster(patroni_url: str, fallback: str, auth: Auth = None, cfg: Config | None = None,
                        auth_hosts: Collection[str] = ()) -> Body:
    """Patroni's /cluster (or, with `cfg`, its member keys in etcd when the local Patroni does not
    answer), and each member's agent /status fetched concurrently (with `auth` only where
    `credential_refusal` allows it)."""
    notes: list[str] = []
    async with httpx.AsyncClient() as client:
        topo, err = await _get(client, f"{patroni_url.rstrip('/')}/cluster")
        if topo is None and cfg is not None:
            notes.append(f"local Patroni unreachable at {patroni_url} ({err}): members read from etcd")
            try:
                topo = await members_from_etcd(cfg)
            except EtcdUnavailable as e:
                err = f"{err}; etcd: {e}"
        if topo is None:
            return {"patroni_url": patroni_url, "error": f"cannot read Patroni's member list: {err}", "members": []}
        raw = topo.get("members")
        members: list[Body] = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []
        rows: list[Body] = []

        async def ask(m: Body) -> None:
            url = agent_url(m, fallback)
            refused = credential_refusal(url, m, auth_hosts) if auth else None
            body, error = await _get(client, f"{url.rstrip('/')}/status", None if refused else auth)
            if refused and error.startswith("401"):
                error = "401 Unauthorized: credentials withheld"
            rows.append({"member": m, "agent_url": url, "agent": body, "error": error, "auth_refused": refused})

        async with anyio.create_task_group() as tg:
            for m in members:
                tg.start_soon(ask, m)
    rows.sort(key=lambda r: str(r["member"].get("name")))
    view: Body = {"scope": topo.get("scope"), "patroni_url": patroni_url, "members": rows,
                  "paused": bool(topo.get("pause", False)), "source": "etcd" if notes else "patroni"}
    view["problems"] = notes + problems(view)
    return view


# ---------------------------------------------------------------- judging


def problems(view: Body) -> list[str]:
    """What an operator must look at; empty when the cluster is whole and of one mind."""
    out: list[str] = []
    rows: list[Body] = view["members"]
    leaders = [r["member"]["name"] for r in rows if r["member"].get("role") in ("leader", "standby_leader")]
    if not leaders:
        out.append("Patroni names no leader")
    patroni_leader = leaders[0] if len(leaders) == 1 else None
    confirmed = []
    for r in rows:
        name = r["member"].get("name")
        a = r["agent"]
        if r.get("auth_refused"):
            out.append(f"{name}: {r['auth_refused']}")
        if a is None:
            out.append(f"{name}: agent not reachable at {r['agent_url']} ({r['error']})")
            continue
        if a.get("node") != name:
            out.append(f"{name}: {r['agent_url']} is the agent of {a.get('node')!r}, not of this member")
            continue
        s = _d(a.get("state"))
        if s.get("confirmed_primary"):
            confirmed.append(str(name))
        if patroni_leader and s.get("leader") != patroni_leader:
            out.append(f"{name}: its agent sees leader {s.get('leader')!r}, Patroni says {patroni_leader!r}")
        if s.get("disagreement"):
            out.append(f"{name}: {s['disagreement']}")
        for flag, what in (("dcs_up", "etcd"), ("patroni_up", "Patroni"), ("postgres_up", "PostgreSQL")):
            if not s.get(flag):
                out.append(f"{name}: {what} unreachable from the agent")
        down = sorted(str(c) for c, h in _d(a.get("components")).items() if not _d(h).get("up"))
        if down:
            out.append(f"{name}: components down: {', '.join(down)}")
        smp = a.get("sampler")
        if isinstance(smp, dict) and smp.get("unavailable"):
            out.append(f"{name}: sampler not reading: {smp['unavailable']}")
        arch = a.get("archive")
        if isinstance(arch, dict) and arch.get("healthy") is False:
            why = "; ".join(map(str, arch.get("reasons") or [])) or arch.get("error")
            out.append(f"{name}: archive unhealthy: {why}")
    standby_cluster = any(r["member"].get("role") == "standby_leader" for r in rows)
    if not standby_cluster and len(confirmed) != 1 and any(r["agent"] for r in rows):
        out.append(f"{len(confirmed)} confirmed primaries ({', '.join(confirmed) or 'none'}), expected exactly 1")
    return out


# ---------------------------------------------------------------- rendering


def _updown(v: Any) -> str:
    return "up" if v else "DOWN"


def _watchdog(a: Body) -> str:
    w = _d(a.get("watchdog"))
    if not w:
        return "-"
    if w.get("withholding"):
        return "WITHHELD (" + ",".join(map(str, w["withholding"])) + ")"
    if not w.get("enabled"):
        return "off"
    return f"fed {w.get('last_feed_age_seconds')}s"


def _sampler(a: Body) -> str:
    s = a.get("sampler")
    if not isinstance(s, dict):
        return "off"
    if s.get("unavailable"):
        return "NOT READING"
    if not s.get("source"):
        return "starting"
    return f"{s['source']} {s.get('series', 0)} series"


def _repack(a: Body) -> str:
    r = a.get("repack")
    if not isinstance(r, dict):
        return "off"
    if r.get("running"):
        run = r["running"]
        return f"RUNNING {run.get('database')}.{run.get('table')}" if isinstance(run, dict) else "RUNNING"
    return f"next {r.get('next_window') or 'none'}"


def _archive(a: Body) -> str:
    x = a.get("archive")
    if not isinstance(x, dict):
        return "off"
    if x.get("healthy") is False:
        return "UNHEALTHY"
    return f"ok, {x.get('ready_files', 0)} .ready"


def _lost(lost: Any) -> str:
    """`{"expired": 2, "reset": 1}` -> "3 (expired 2, reset 1)"; 0 when none."""
    parts = {k: v for k, v in lost.items() if v} if isinstance(lost, dict) else {}
    if not parts:
        return "0"
    return f"{sum(parts.values())} (" + ", ".join(f"{k} {v}" for k, v in sorted(parts.items())) + ")"


def render_node(a: Body) -> str:
    s = _d(a.get("state"))
    lines = [
        f"node {a.get('node')} (scope {a.get('scope')}), agent {a.get('version')}, up {a.get('uptime_seconds')} s",
        f"  role {s.get('role')}  leader {s.get('leader')}  view {s.get('leader_view')}  "
        f"confirmed primary {'yes' if s.get('confirmed_primary') else 'no'}  timeline {s.get('timeline')}",
        f"  etcd {_updown(s.get('dcs_up'))}  patroni {_updown(s.get('patroni_up'))} ({s.get('patroni_state')})  "
        f"postgres {_updown(s.get('postgres_up'))}  failover pending {'yes' if s.get('failover_pending') else 'no'}"
        + ("  PAUSED" if s.get("paused") else ""),
    ]
    if s.get("disagreement"):
        lines.append(f"  DISAGREEMENT: {s['disagreement']}")
    lines.append(f"  watchdog  {_watchdog(a)}")
    smp = a.get("sampler")
    lines.append(f"  sampler   {_sampler(a)}"
                 + ((f" ({smp['unavailable']})" if smp.get("unavailable") else
                     f", watermark {smp.get('watermark')}, lost buckets {_lost(smp.get('buckets_lost'))}")
                    if isinstance(smp, dict) else ""))
    rp = _d(a.get("repack"))
    waiting = ", ".join(map(str, rp.get("waiting_for") or [])) or "-"
    lines.append(f"  repack    {_repack(a)}"
                 + (f", leftovers {rp.get('leftovers')}, waiting for {waiting}" if rp else ""))
    ar = a.get("archive")
    lines.append(f"  archive   {_archive(a)}"
                 + (f", last archived {ar.get('last_archived_wal') or '-'}, failed {ar.get('failed_count')}"
                    + (f" ({'; '.join(map(str, ar.get('reasons') or []))})" if ar.get("reasons") else "")
                    if isinstance(ar, dict) else ""))
    for name, c in sorted(_d(a.get("components")).items()):
        c = _d(c)
        lines.append(f"  {name:<14} {_updown(c.get('up')):<5} restarts {c.get('restarts')}  "
                     f"heartbeat {c.get('heartbeat_age_seconds')} s  {c.get('last_error') or ''}".rstrip())
    return "\n".join(lines)


def render_cluster(view: Body) -> str:
    if view.get("error"):
        return f"pg-node-agent: {view['error']}"
    head = ("MEMBER", "PATRONI", "TL", "LAG", "AGENT", "ROLE", "LEADER", "PRIMARY", "ETCD", "PG", "WATCHDOG",
            "SAMPLER", "REPACK", "ARCHIVE")
    table: list[tuple[str, ...]] = [head]
    for r in view["members"]:
        m, a = r["member"], r["agent"]
        lag = m.get("lag", m.get("receive_lag"))
        patroni = (str(m.get("role", "?")), str(m.get("timeline", "-")), "-" if lag is None else str(lag))
        if a is None:
            table.append((str(m.get("name")), patroni[0] + " " + str(m.get("state", "")), *patroni[1:], "DOWN",
                          *("?",) * 9))
            continue
        s = _d(a.get("state"))
        table.append((str(m.get("name")), patroni[0] + " " + str(m.get("state", "")), *patroni[1:], "up",
                      str(s.get("role")), str(s.get("leader")), "yes" if s.get("confirmed_primary") else "no",
                      _updown(s.get("dcs_up")), _updown(s.get("postgres_up")), _watchdog(a), _sampler(a),
                      _repack(a), _archive(a)))
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    n = len(view["members"])
    source = f"Patroni at {view['patroni_url']}" if view.get("source") != "etcd" else "member keys in etcd"
    title = f"cluster {view.get('scope')}: {n} member{'' if n == 1 else 's'} ({source})"
    if view.get("paused"):
        title += ", maintenance mode (paused)"
    out = [title] + ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    probs = view.get("problems") or []
    out.append("problems:" if probs else "ok: every agent answered, one confirmed primary, all see the same leader")
    out += [f"  - {p}" for p in probs]
    return "\n".join(out)


# ---------------------------------------------------------------- the command


def main(cfg: Config, url: str | None, raw: bool, cluster: bool, auth_file: Path | None = None,
         echo: Callable[[str], None] = print, err: Callable[[str], None] = print,
         auth_hosts: Collection[str] = ()) -> int:
    try:
        auth = read_auth(auth_file) if auth_file else None
    except (OSError, ValueError) as e:
        err(f"pg-node-agent: --auth-file: {e}")
        return 2
    if cluster:
        view = anyio.run(fetch_cluster, cfg.patroni.url, url or own_url(cfg), auth, cfg, auth_hosts)
        echo(json.dumps(view, indent=2, sort_keys=True) if raw else render_cluster(view))
        return 1 if view.get("error") or view.get("problems") else 0
    base = url or own_url(cfg)
    body, error = anyio.run(fetch_node, base, auth)
    if body is None:
        err(f"pg-node-agent: cannot reach the agent at {base}: {error}")
        return 1
    echo(json.dumps(body, indent=2, sort_keys=True) if raw else render_node(body))
    return 0
