"""pgBackRest: `info --output=json` parsing, `check` exit codes mapped to a bounded reason set,
and the two subprocess runs (argv lists under a deadline, stderr to the log, never to labels)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from agent.core import proc

log = structlog.get_logger("archive")

# pgBackRest exits with its error code (src/command/exit.c, build/error.yaml). 44 is the archive
# mismatch (version/system-id), 28 the generic "info files do not match": easy to swap.
EXIT_REASONS: dict[int, str] = {
    28: "file_invalid",
    44: "archive_mismatch",
    45: "duplicate",
    56: "db_connect",
    58: "db_mismatch",
    67: "feature_not_supported",
    68: "archive_command_invalid",
    82: "archive_timeout",
    87: "disabled",
    95: "crypto",
    103: "repo_invalid",
}
REASONS: tuple[str, ...] = (*sorted(set(EXIT_REASONS.values())), "timeout", "exec_failed", "bad_output",
                            "stanza_status", "other")


def exit_reason(returncode: int | None, timed_out: bool = False) -> str | None:
    """None for success; otherwise one of REASONS (a label value, so the set must stay closed)."""
    if timed_out or returncode is None:
        return "timeout"
    if returncode == 0:
        return None
    return EXIT_REASONS.get(returncode, "other")


@dataclass(frozen=True, slots=True, kw_only=True)
class InfoSummary:
    status_code: int                       # 0 ok, 1 missing stanza path, 2 no valid backups, ... 99 other
    status_message: str
    last_backup_stop: float | None         # epoch seconds of the newest backup that did not error
    last_backup_type: str | None
    last_backup_label: str | None
    archive_min: str | None                # for the archive id matching this system-id
    archive_max: str | None


def parse_info(raw: str, stanza: str, system_identifier: int | None) -> InfoSummary:
    """One stanza out of `info --output=json`. Archive min/max are taken only from archive ids
    whose database has this node's system-id (a repo may hold a stanza's older clusters too)."""
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"pgbackrest info: not JSON: {e}") from None
    if not isinstance(doc, list):
        raise ValueError("pgbackrest info: expected a JSON array of stanzas")
    entry = next((s for s in doc if isinstance(s, dict) and s.get("name") == stanza), None)
    if entry is None:
        raise ValueError(f"pgbackrest info: stanza {stanza!r} not in the output")
    status = entry.get("status") or {}
    dbs = {(d.get("id"), d.get("repo-key")) for d in entry.get("db") or []
           if system_identifier is None or d.get("system-id") == system_identifier}
    mins, maxes = [], []
    for a in entry.get("archive") or []:
        db = a.get("database") or {}
        if (db.get("id"), db.get("repo-key")) in dbs:
            if a.get("min"):
                mins.append(str(a["min"]))
            if a.get("max"):
                maxes.append(str(a["max"]))
    good = [b for b in entry.get("backup") or []
            if not b.get("error") and (b.get("timestamp") or {}).get("stop") is not None]
    newest: Mapping[str, Any] | None = max(good, key=lambda b: b["timestamp"]["stop"], default=None)
    # WAL names of one system sort by position; comparing the 16 position digits ignores timelines.
    return InfoSummary(
        status_code=int(status.get("code", 99)),
        status_message=str(status.get("message", "")),
        last_backup_stop=float(newest["timestamp"]["stop"]) if newest else None,
        last_backup_type=str(newest.get("type")) if newest else None,
        last_backup_label=str(newest.get("label")) if newest else None,
        archive_min=min(mins, key=lambda n: n[8:], default=None),
        archive_max=max(maxes, key=lambda n: n[8:], default=None),
    )


@dataclass(frozen=True, slots=True)
class Settings:
    binary: str
    stanza: str
    config: str = ""
    timeout: float = 120.0

    def argv(self, *args: str) -> list[str]:
        cfg = [f"--config={self.config}"] if self.config else []
        return [self.binary, *cfg, f"--stanza={self.stanza}", *args]


@dataclass(frozen=True, slots=True)
class RunResult:
    ok: bool
    reason: str | None
    returncode: int | None
    stdout: str
    duration_seconds: float


async def _run(s: Settings, args: list[str], env: Mapping[str, str] | None, what: str) -> RunResult:
    import anyio

    t0 = anyio.current_time()
    try:
        done = await proc.run(s.argv(*args), timeout=s.timeout, env=env)
    except OSError as e:
        log.warning("pgbackrest_failed", command=what, reason="exec_failed", error=str(e))
        return RunResult(False, "exec_failed", None, "", anyio.current_time() - t0)
    took = anyio.current_time() - t0
    reason = exit_reason(done.returncode, done.timed_out)
    if reason is not None:
        # stderr (and pgBackRest's own ERROR line on stdout) belongs in the log, not in a label
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        log.warning("pgbackrest_failed", command=what, reason=reason, exit_code=done.returncode,
                    duration_seconds=round(took, 3), output_tail=tail)
    return RunResult(reason is None, reason, done.returncode, done.stdout, took)


async def run_info(s: Settings, env: Mapping[str, str] | None = None) -> RunResult:
    return await _run(s, ["--output=json", "info"], env, "info")


async def run_check(s: Settings, env: Mapping[str, str] | None = None) -> RunResult:
    return await _run(s, ["check"], env, "check")
