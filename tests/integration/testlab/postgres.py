"""A standalone PostgreSQL (no Patroni) for the sampler, repack and archive tests: 15 from
Debian by default, 17 or 18 from the lab wheels (`version=`, agent.lab.pgversions).

initdb and the postmaster run as the lab user; the postmaster is our direct child (started with
`postgres -D`, not `pg_ctl`), so stop() is SIGTERM/SIGKILL by PID like every other lab process.
Root and the tests connect over the socket with peer auth mapped to `postgres`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg

from agent.lab import archive, pgversions
from agent.lab.patroni import PG_HBA, PG_IDENT, SUPERUSER
from agent.lab.ports import free_port
from agent.lab.procs import Proc, lab_user
from agent.lab.rundir import check_socket_dir, lab_subdir


class PgInstance:
    def __init__(self, run_dir: Path, name: str | None = None, settings: dict[str, Any] | None = None,
                 version: int | None = None) -> None:
        self.version = pgversions.chosen(version)
        self.bin_dir = pgversions.bin_dir(self.version)
        self.name = name = name or f"pg{self.version}"
        self.dir = lab_subdir(run_dir, name)
        self.socket_dir = check_socket_dir(self.dir)
        self.data_dir = self.dir / "data"
        self.archive_dir = lab_subdir(self.dir, "archive", 0o700)
        self.port = free_port()
        self.pg_port = self.port
        self.settings: dict[str, Any] = {
            "listen_addresses": "127.0.0.1",
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "shared_buffers": "32MB",
            "max_connections": 50,
            "shared_preload_libraries": "pg_stat_statements",
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": f"test ! -f {self.archive_dir}/%f && cp %p {self.archive_dir}/%f",
            "fsync": "off",
            **(settings or {}),
        }
        self.log_path = run_dir / f"{name}.log"
        self.proc = Proc(
            name,
            [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)],
            self.log_path,
            as_lab_user=True,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            accessible=self._accepts,
        )

    def init(self) -> None:
        user = lab_user()
        with open(self.log_path, "ab") as log:
            subprocess.run(
                [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "-A", "peer",
                 "--encoding=UTF8", "--locale=C.UTF-8", "--data-checksums"],
                stdout=log, stderr=subprocess.STDOUT, check=True, timeout=60,
                user=user, group=user, extra_groups=[] if user else None,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            )  # fmt: skip
        conf = "".join(f"{k} = {self._quote(v)}\n" for k, v in self.settings.items())
        (self.data_dir / "postgresql.auto.conf").write_text(conf)
        (self.data_dir / "pg_hba.conf").write_text("\n".join(PG_HBA) + "\n")
        (self.data_dir / "pg_ident.conf").write_text("\n".join(PG_IDENT) + "\n")

    @staticmethod
    def _quote(v: Any) -> str:
        return str(v) if isinstance(v, int) else "'" + str(v).replace("'", "''") + "'"

    def _accepts(self) -> bool:
        try:
            with self.connect():
                return True
        except psycopg.Error:
            return False

    def start(self, max_wait: float = 30.0) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self.init()
        self.proc.start(max_wait)

    def stop(self, kill: bool = False, timeout: float = 20.0) -> None:
        self.proc.stop(kill, timeout)  # SIGTERM = smart shutdown is fine: tests close their sessions

    def restart(self, max_wait: float = 30.0) -> None:
        self.stop()
        self.start(max_wait)

    def prune_archive(self) -> int:
        """Archived segments older than the newest removed (agent.lab.archive); how many."""
        return archive.prune(self.archive_dir, self.bin_dir)

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            autocommit=True,
            connect_timeout=3,
        )

    def psql(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql.encode(), params)
            return cur.fetchall() if cur.description is not None else []

    @property
    def conninfo(self) -> str:
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname=postgres"
