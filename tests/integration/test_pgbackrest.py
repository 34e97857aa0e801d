"""pgBackRest 2.45 (Debian) against a real PostgreSQL 15 archiving into a real repository:
`archive-push` is the archive_command, the stanza is created, a full backup is taken, and the
agent's `archive check` reads `pgbackrest info` and runs `pgbackrest check` as it would on a node.

The tests run in file order on one repository: before a backup, after a full backup, then with
a broken archive_command. pgBackRest must run as the OS user of PostgreSQL (on a node, the agent's own `User=postgres`):
here that is the lab user, through a two-line wrapper named in `[archive] pgbackrest_binary`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg import sql
from testlab.postgres import PgInstance

from agent.archive import cli as archive_cli
from agent.core.config import Config, parse
from agent.lab.procs import lab_user, wait_until
from agent.lab.rundir import lab_subdir

pytestmark = pytest.mark.integration

STANZA = "lab"
PGBACKREST = "/usr/bin/pgbackrest"


@dataclass
class Repo:
    pg: PgInstance
    conf: Path
    wrapper: Path

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.wrapper), f"--config={self.conf}", f"--stanza={STANZA}", *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def config(self) -> Config:
        return parse({
            "node": {"name": "n1", "state_dir": str(self.pg.dir)},
            "etcd": {"scope": "pgbackrest-test"},
            "postgres": {"host": str(self.pg.socket_dir), "port": self.pg.port, "user": "postgres"},
            "archive": {"pgbackrest_stanza": STANZA, "pgbackrest_binary": str(self.wrapper),
                        "pgbackrest_config": str(self.conf), "pgbackrest_timeout": "60s"},
        })


@pytest.fixture(scope="module")
def repo(session_dir: Path) -> Iterator[Repo]:
    if not Path(PGBACKREST).exists():
        pytest.skip(f"{PGBACKREST} is not installed")
    user = lab_user()
    base = lab_subdir(session_dir, "pgbackrest")
    work = lab_subdir(base, "work", 0o700)  # repo, locks, spool: the PostgreSQL user's
    wrapper = base / "pgbackrest-as-pg-user"
    run_as = ["runuser", "-u", user, "--"] if user else []
    wrapper.write_text("#!/bin/sh\n# pgBackRest as the OS user of PostgreSQL, as the agent would run it\n"
                       f"exec {' '.join(run_as)} {PGBACKREST} \"$@\"\n")
    wrapper.chmod(0o755)
    conf = base / "pgbackrest.conf"
    pg = PgInstance(base, "pg15-bkr", {"archive_timeout": 0})
    conf.write_text(
        "[global]\n"
        f"repo1-path={work}/repo\nlock-path={work}/lock\nspool-path={work}/spool\n"
        "log-level-console=warn\nlog-level-file=off\nstart-fast=y\nrepo1-retention-full=1\n"
        "archive-timeout=30\n"
        f"[{STANZA}]\npg1-path={pg.data_dir}\npg1-socket-path={pg.socket_dir}\npg1-port={pg.port}\n"
        "pg1-user=postgres\n")
    conf.chmod(0o644)
    pg.settings["archive_command"] = f"{PGBACKREST} --config={conf} --stanza={STANZA} archive-push %p"
    pg.start()
    r = Repo(pg, conf, wrapper)
    try:
        created = r.run("stanza-create")
        assert created.returncode == 0, created.stderr
        yield r
    finally:
        pg.stop()


def test_stanza_without_a_backup_is_reported_by_info(repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    rc = archive_cli.main(repo.config())
    out = capsys.readouterr().out
    # info: the stanza exists but holds no backup yet (status 2); check: archive-push works
    assert "pgbackrest info stanza_status, status 2 (no valid backups)" in out, out
    assert "pgbackrest check ok" in out, out
    assert rc == 0, out   # PostgreSQL archives and the repo has the WAL: the archive itself is healthy


def test_after_a_full_backup_info_names_it_and_the_repo_has_the_archived_wal(
        repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    backup = repo.run("backup", "--type=full", timeout=300)
    assert backup.returncode == 0, backup.stderr
    info = repo.run("info")
    label = next(ln.split()[-1] for ln in info.stdout.splitlines() if "full backup:" in ln)
    assert archive_cli.main(repo.config()) == 0
    out = capsys.readouterr().out
    assert "archive: HEALTHY" in out
    assert f"pgbackrest info ok, status 0 (ok), newest backup {label}" in out, out
    assert "repo behind 0 segments" in out, out


def test_broken_archive_push_fails_the_check_with_its_exit_reason(
        repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    original = str(repo.pg.psql("SHOW archive_command")[0][0])

    def set_command(cmd: str) -> None:
        with repo.pg.connect() as c:
            c.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(cmd)))
            c.execute("SELECT pg_reload_conf()")

    set_command("/bin/false")
    try:
        wait_until(lambda: repo.pg.psql("SHOW archive_command")[0][0] == "/bin/false", 10, "reload")
        assert archive_cli.main(repo.config()) == 1
        out = capsys.readouterr().out
        # pgbackrest check reads archive_command first: "must contain pgbackrest", exit 68
        assert "  pgbackrest check archive_command_invalid" in out, out
        assert "UNHEALTHY" in out and "pgbackrest_check_failed" in out, out
    finally:
        set_command(original)
    wait_until(lambda: archive_cli.main(repo.config()) == 0, 120, "archiving recovers after the fix")
