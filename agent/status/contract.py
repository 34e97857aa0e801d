"""What /status is: the core's part (`NodeStatus`) plus one section per producer, each a TypedDict
declared beside the code that writes it, so the type checker finds a view reading a field that no
producer writes. A body comes from another process (maybe another version): `conform` checks it
against the same types before anything reads it, so a section that does not fit is named, not
half-read."""

from __future__ import annotations

import types
from typing import Any, Union, cast, get_args, get_origin, get_type_hints, is_typeddict

from agent.archive.rounds import ArchiveStatus
from agent.cluster.watch import ClusterWatchStatus
from agent.cluster.watchdog.feeder import WatchdogStatus
from agent.core.supervisor import HttpStatus, NodeStatus
from agent.repack.component import RepackStatus
from agent.sampler.component import SamplerStatus


class AgentStatus(NodeStatus, total=False):
    """A section is absent when its job is disabled (or, after `conform`, did not fit its type)."""

    http: HttpStatus
    cluster_watch: ClusterWatchStatus
    watchdog: WatchdogStatus
    sampler: SamplerStatus
    repack: RepackStatus
    archive: ArchiveStatus
    unreadable: dict[str, str]  # written by `conform`: section -> why it was dropped


SECTIONS = AgentStatus.__optional_keys__ - {"unreadable"}


def mismatch(value: object, tp: Any, where: str = "") -> str | None:
    """The first place where `value` (parsed JSON) does not fit the type `tp`, or None."""
    if is_typeddict(tp):
        if not isinstance(value, dict):
            return f"{where or 'body'}: not an object"
        missing = sorted(k for k in tp.__required_keys__ if k not in value)
        if missing:
            return f"{where or 'body'}: no {', '.join(missing)}"
        hints = get_type_hints(tp)
        return next((m for k, v in value.items() if k in hints
                     and (m := mismatch(v, hints[k], f"{where}.{k}".lstrip(".")))), None)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        fits = [mismatch(value, a, where) for a in args]
        return None if None in fits else next(m for a, m in zip(args, fits, strict=True) if a is not type(None))
    if origin in (list, dict):
        if not isinstance(value, origin):
            return f"{where}: {type(value).__name__}, expected {origin.__name__}"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        return next((m for k, v in items if (m := mismatch(v, args[-1], f"{where}[{k}]"))), None)
    if tp in (int, float):  # JSON has no bool/int/float split of its own: true is not a number
        ok = isinstance(value, int if tp is int else (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(None) if tp is None else tp)
    return None if ok else f"{where}: {type(value).__name__}, expected {getattr(tp, '__name__', tp)}"


def conform(raw: object) -> tuple[AgentStatus | None, str]:
    """The body as the contract types it, or None and why it is no agent's /status. A section
    that does not fit is dropped and named in `unreadable` (with its own error when the agent
    reported one: a section that raised is `{"error": ...}`)."""
    if not isinstance(raw, dict):
        return None, "not a JSON object"
    wrong = mismatch({k: v for k, v in raw.items() if k in NodeStatus.__required_keys__}, NodeStatus)
    if wrong:
        return None, f"not an agent's /status ({wrong})"
    body = dict(raw)
    hints = get_type_hints(AgentStatus)
    unreadable = {}
    for name in sorted(SECTIONS & body.keys()):
        wrong = mismatch(body[name], hints[name], name)
        if wrong:
            err = body.pop(name)
            unreadable[name] = str(err["error"]) if isinstance(err, dict) and set(err) == {"error"} else wrong
    body.pop("unreadable", None)
    if unreadable:
        body["unreadable"] = unreadable
    return cast(AgentStatus, body), ""
