"""`pg-node-agent status`: one agent's /status as a short text (or JSON), and `--cluster`: every
member's agent, found through the local Patroni's member list, on one screen. Exit 1 when a
member's agent does not answer or the members disagree, so the command can stand in a check
script.

`contract` types the body (each section declared beside its producer), `fetch` finds and asks
the agents, `judge` names what is wrong, `render` draws it."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path

import anyio

from agent.core.config import Config
from agent.status.contract import AgentStatus, conform
from agent.status.fetch import AGENT_TAG, agent_url, credential_refusal, fetch_cluster, fetch_node, own_url, read_auth
from agent.status.judge import problems
from agent.status.render import render_cluster, render_node

__all__ = ["AGENT_TAG", "AgentStatus", "agent_url", "conform", "credential_refusal", "fetch_cluster", "fetch_node",
           "main", "problems", "render_cluster", "render_node"]


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
        return 1 if view["error"] or view["problems"] else 0
    base = url or own_url(cfg)
    body, error = anyio.run(fetch_node, base, auth)
    if body is None:
        err(f"pg-node-agent: cannot reach the agent at {base}: {error}")
        return 1
    echo(json.dumps(body, indent=2, sort_keys=True) if raw else render_node(body))
    return 0
