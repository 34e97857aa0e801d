"""State files the agent keeps in `node.state_dir`: written so that a crash or a power cut leaves
the old file or the new one, never half of one; read so that a damaged file costs its contents,
never the agent."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import structlog


def write_atomic(path: Path, data: bytes) -> None:
    """tmp + fsync + rename + fsync(dir): a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_json_object(path: Path, log: structlog.typing.FilteringBoundLogger, event: str) -> dict[str, Any]:
    """The JSON object in `path`; {} when there is none, logged as `event` when it is unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning(event, path=str(path), error=str(e))
        return {}
    if not isinstance(data, dict):
        log.warning(event, path=str(path), error="not a JSON object")
        return {}
    return data


def save_json(path: Path, data: dict[str, Any], log: structlog.typing.FilteringBoundLogger, event: str) -> None:
    """`data` as JSON through write_atomic; a failure is logged as `event`, not raised (the state it
    keeps is found again from the database, or costs one early retry)."""
    try:
        write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())
    except OSError as e:
        log.warning(event, path=str(path), error=str(e))
