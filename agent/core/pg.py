"""Connections to the local PostgreSQL: socket/peer auth by default, password from a file,
`application_name` naming the job, and statement/lock timeouts on every session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from agent.core.config import PostgresConfig, read_secret


def conn_kwargs(cfg: PostgresConfig, job: str, dbname: str | None = None) -> dict[str, Any]:
    """Everything but the password, which `connect` reveals only inside the call that sends it."""
    return {
        "host": cfg.host, "port": cfg.port, "user": cfg.user, "dbname": dbname or cfg.dbname,
        "application_name": f"pg-node-agent/{job}",
        "connect_timeout": max(1, int(cfg.connect_timeout)),
        "options": f"-c statement_timeout={int(cfg.statement_timeout * 1000)} "
                   f"-c lock_timeout={int(cfg.lock_timeout * 1000)}",
    }


async def connect(cfg: PostgresConfig, job: str, dbname: str | None = None,
                  autocommit: bool = True) -> psycopg.AsyncConnection[dict[str, Any]]:
    secret = read_secret(cfg.password_file) if cfg.password_file else None
    return await psycopg.AsyncConnection.connect(  # a None password is left out of the conninfo
        autocommit=autocommit, row_factory=dict_row, password=secret.reveal() if secret else None,
        **conn_kwargs(cfg, job, dbname))


def subprocess_env(cfg: PostgresConfig, job: str, state_dir: Path, dbname: str | None = None) -> dict[str, str]:
    """libpq environment for a child (pg_repack, pgbackrest): the password goes through a 0600
    PGPASSFILE in the state directory, never argv or the environment."""
    env = {"PGHOST": cfg.host, "PGPORT": str(cfg.port), "PGUSER": cfg.user,
           "PGDATABASE": dbname or cfg.dbname, "PGAPPNAME": job,
           "PGCONNECT_TIMEOUT": str(max(1, int(cfg.connect_timeout)))}
    if cfg.password_file:
        pgpass = state_dir / "pgpass"
        secret = read_secret(cfg.password_file)
        fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"*:*:*:{cfg.user}:{_pgpass_escape(secret.reveal())}\n")
        env["PGPASSFILE"] = str(pgpass)
    return env


def _pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")
