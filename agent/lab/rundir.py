"""The per-run directory: every data dir, socket dir, config and log of one lab lives under it.

It is owned by the lab user and world-traversable, so PostgreSQL (as `pgtest`) can write and
root (the agent, the tests) can reach the sockets. Kept when something failed (logs and configs;
see drop_data), deleted otherwise.

Run directories go under `$TMPDIR` when it is set, else `/var/tmp`: on disk, because `/tmp` is
often a tmpfs of a fraction of RAM (systemd-nspawn containers, Debian 13) that a test run's
PostgreSQL data directories and WAL outgrow.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from agent.lab.procs import chown_to_lab_user

VAR_TMP = Path("/var/tmp")
# sun_path is 108 bytes with its NUL: PostgreSQL refuses a longer socket path at startup
SOCKET_PATH_MAX = 107
_WAL_FILE = re.compile(r"[0-9A-F]{24}(\.partial)?")


def temp_root() -> Path:
    """Where run directories (and, under pytest, tmp_path) go: `$TMPDIR`, else `/var/tmp`."""
    if os.environ.get("TMPDIR"):
        return Path(os.environ["TMPDIR"])
    return VAR_TMP if VAR_TMP.is_dir() else Path(tempfile.gettempdir())


def new_run_dir(prefix: str = "pgna-lab-") -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=temp_root()))
    path.chmod(0o755)
    chown_to_lab_user(path)
    return path


def lab_subdir(parent: Path, name: str, mode: int = 0o755) -> Path:
    path = parent / name
    path.mkdir(mode=mode, exist_ok=True)
    path.chmod(mode)
    chown_to_lab_user(path)
    return path


def check_socket_dir(path: Path) -> Path:
    """PostgreSQL's socket `<dir>/.s.PGSQL.<port>` must fit sun_path; say so before it fails obscurely."""
    longest = path / ".s.PGSQL.65535"
    if len(os.fsencode(longest)) > SOCKET_PATH_MAX:
        raise ValueError(
            f"unix socket path {longest} is longer than {SOCKET_PATH_MAX} bytes: set TMPDIR to a shorter directory"
        )
    return path


def drop_data(path: Path) -> None:
    """Keep what explains a failure (logs, configs) and free the disk the data took.

    Removes the subdirectories of PostgreSQL data directories (their top-level files are the
    configs Patroni wrote), etcd's `member/`, and WAL segments (archives, pg_receivewal).
    """
    for dirpath, dirnames, filenames in os.walk(path):
        here = Path(dirpath)
        if "PG_VERSION" in filenames:
            for d in dirnames:
                if d != "log":  # logging_collector's output, when a test turns it on
                    shutil.rmtree(here / d, ignore_errors=True)
            dirnames[:] = ["log"] if "log" in dirnames else []
            continue
        if "member" in dirnames and (here / "member" / "wal").is_dir():
            shutil.rmtree(here / "member", ignore_errors=True)
            dirnames.remove("member")
        for f in filenames:
            if _WAL_FILE.fullmatch(f):
                (here / f).unlink(missing_ok=True)


def remove_run_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
