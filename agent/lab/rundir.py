"""The per-run directory: every data dir, socket dir, config and log of one lab lives under it.

It is owned by the lab user and world-traversable, so PostgreSQL (as `pgtest`) can write and
root (the agent, the tests) can reach the sockets. Kept when something failed, deleted otherwise.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from agent.lab.procs import chown_to_lab_user


def new_run_dir(prefix: str = "pgna-lab-") -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    chown_to_lab_user(path)
    return path


def lab_subdir(parent: Path, name: str, mode: int = 0o755) -> Path:
    path = parent / name
    path.mkdir(mode=mode, exist_ok=True)
    path.chmod(mode)
    chown_to_lab_user(path)
    return path


def remove_run_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
