"""A failed test's run dir keeps what explains the failure and gives back the disk its data took.

Over real data: an initdb'd PostgreSQL 15 that archived WAL and a real etcd's data dir.
"""

from __future__ import annotations

from pathlib import Path

from testlab.postgres import PgInstance

from agent.lab.etcd import Etcd
from agent.lab.rundir import drop_data


def _size(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())


def test_drop_data_keeps_logs_and_configs_and_frees_the_data(run_dir: Path) -> None:
    pg = PgInstance(run_dir, "kept")
    pg.start()
    try:
        pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100000) g")
        pg.psql("SELECT pg_switch_wal()")
        pg.psql("CHECKPOINT")
    finally:
        pg.stop()
    etcd = Etcd(run_dir)
    etcd.start()
    etcd.stop()
    assert any(pg.archive_dir.iterdir()), "nothing archived: the test would not check the WAL rule"
    before = _size(run_dir)

    drop_data(run_dir)

    for kept in (
        pg.log_path,
        etcd.log_path,
        pg.data_dir / "postgresql.auto.conf",
        pg.data_dir / "pg_hba.conf",
        pg.data_dir / "PG_VERSION",
    ):
        assert kept.is_file(), kept
    assert pg.log_path.stat().st_size > 0
    for gone in ("base", "global", "pg_wal"):
        assert not (pg.data_dir / gone).exists(), gone
    assert not (etcd.data_dir / "member").exists()
    assert not any(pg.archive_dir.iterdir())
    assert before > 40 * 1024 * 1024 and _size(run_dir) < 1024 * 1024, (before, _size(run_dir))
