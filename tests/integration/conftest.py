"""Fixtures over `agent.lab`: real etcd, Patroni and PostgreSQL 15 processes on loopback.

Session-scoped `etcd` and `cluster` serve tests that only observe (or leave the cluster healthy,
like a switchover); `fresh_etcd` and `fresh_cluster` are per test, for destructive ones. Run
directories (under $TMPDIR, else /var/tmp: agent.lab.rundir) are deleted after passing tests;
after a failure their logs and configs are kept (path printed) and their data dirs removed.
"""

from __future__ import annotations

import itertools
import os
import pwd
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from testlab.postgres import PgInstance

from agent.lab import pgversions
from agent.lab.agents import Agents
from agent.lab.cluster import Cluster
from agent.lab.etcd import ETCD_BIN, Etcd
from agent.lab.patroni import PATRONI_BIN, PG_BIN_DIR
from agent.lab.procs import LAB_USER
from agent.lab.rundir import drop_data, new_run_dir, remove_run_dir

HERE = Path(__file__).parent
_scopes = itertools.count(1)


def _missing() -> str | None:
    need = [Path(ETCD_BIN), PATRONI_BIN, PG_BIN_DIR / "postgres", PG_BIN_DIR / "initdb"]
    missing = [str(p) for p in need if not p.exists()]
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(LAB_USER)
        except KeyError:
            missing.append(f"OS user {LAB_USER}")
    return f"lab prerequisites missing (run .ci/install): {', '.join(missing)}" if missing else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, object, object]:
    rep = yield
    setattr(item, f"rep_{call.when}", rep)
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(getattr(getattr(node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))


def _finish(request: pytest.FixtureRequest, run_dir: Path, failed: bool) -> None:
    if failed:
        drop_data(run_dir)  # a run of failures must not fill the disk; logs tell what happened
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            who = request.node.nodeid or "the session's shared lab"
            reporter.write_line(f"lab: kept logs and configs of {who} in {run_dir}", yellow=True)
    else:
        remove_run_dir(run_dir)


@pytest.fixture(scope="session")
def lab_prereqs() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def session_dir(request: pytest.FixtureRequest, lab_prereqs: None) -> Iterator[Path]:
    run_dir = new_run_dir("pgna-test-")
    failed_before = request.session.testsfailed
    yield run_dir
    _finish(request, run_dir, request.session.testsfailed > failed_before)


@pytest.fixture
def run_dir(request: pytest.FixtureRequest, lab_prereqs: None) -> Iterator[Path]:
    path = new_run_dir("pgna-test-")
    yield path
    _finish(request, path, _failed(request))


@pytest.fixture(scope="session")
def etcd(session_dir: Path) -> Iterator[Etcd]:
    e = Etcd(session_dir)
    e.start()
    yield e
    e.stop()


@pytest.fixture
def fresh_etcd(run_dir: Path) -> Iterator[Etcd]:
    e = Etcd(run_dir)
    e.start()
    yield e
    e.stop()


@pytest.fixture(scope="session")
def cluster(session_dir: Path, etcd: Etcd) -> Iterator[Cluster]:
    c = Cluster(session_dir, etcd.url, scope="lab")
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def fresh_cluster(run_dir: Path, etcd: Etcd) -> Iterator[Cluster]:
    """A cluster of its own (own scope on the session etcd) that a test may break."""
    c = Cluster(run_dir, etcd.url, scope=f"t{next(_scopes)}")
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def pg15(session_dir: Path) -> Iterator[PgInstance]:
    """Standalone PostgreSQL 15: pg_stat_statements preloaded, archive_mode on, peer auth as postgres."""
    pg = PgInstance(session_dir, version=15)
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session")
def pg_other(session_dir: Path) -> Iterator[Callable[[int], PgInstance]]:
    """Standalone PostgreSQL 17/18 from the lab wheels, started on first use, one per version."""
    started: dict[int, PgInstance] = {}

    def get(version: int) -> PgInstance:
        if version not in started:
            pg = PgInstance(session_dir, version=version)
            if not (pg.bin_dir / "postgres").exists():
                pytest.skip(f"PostgreSQL {version} missing (run .ci/install): {pg.bin_dir}")
            pg.start()
            started[version] = pg
        return started[version]

    try:
        yield get
    finally:
        for pg in started.values():
            pg.stop()


@pytest.fixture(params=pgversions.VERSIONS, ids=[f"pg{v}" for v in pgversions.VERSIONS])
def pg_any(request: pytest.FixtureRequest) -> PgInstance:
    """The read paths that differ between versions run on each: 15 (the session `pg15`), 17, 18."""
    if request.param == 15:
        return request.getfixturevalue("pg15")
    return request.getfixturevalue("pg_other")(request.param)


def _agents_of(run_dir: Path, cluster: Cluster, etcd: Etcd) -> Iterator[Agents]:
    a = Agents(run_dir, cluster, [etcd.url])
    try:
        a.start()
        yield a
    finally:
        a.stop()


@pytest.fixture
def agents(run_dir: Path, cluster: Cluster, etcd: Etcd) -> Iterator[Agents]:
    """One agent per node of the session cluster, as root over the nodes' sockets."""
    yield from _agents_of(run_dir, cluster, etcd)


@pytest.fixture
def fresh_agents(run_dir: Path, fresh_cluster: Cluster, etcd: Etcd) -> Iterator[Agents]:
    """One agent per node of a cluster the test may break."""
    yield from _agents_of(run_dir, fresh_cluster, etcd)
