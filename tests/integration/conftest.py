"""Fixtures over `agent.lab`: real etcd, Patroni and PostgreSQL 15 processes on loopback.

Session-scoped `etcd` and `cluster` serve tests that only observe (or leave the cluster healthy,
like a switchover); `fresh_etcd` and `fresh_cluster` are per test, for destructive ones. Run
directories (under $TMPDIR, else /var/tmp: agent.lab.rundir) are deleted after passing tests;
after a failure their logs and configs are kept (path printed) and their data dirs removed.

`fresh_cluster` and `fresh_agents` run on the default lab unless a test parametrizes
`lab_variant` with one of `TIMING_VARIANTS` or `PROD_VARIANTS`. The default lab runs Patroni with
fast timings (`LAB_FAST`, a convenience); "patroni-defaults" is the same plain lab (etcd 3.4,
HTTP, Patroni 4) with Patroni's own defaults (ttl 30, loop_wait 10, retry_timeout 10). The
PROD_VARIANTS are etcd 3.5 with TLS, client certificates and RBAC (expiring tokens), Patroni's
REST API over HTTPS, under Patroni 4 or 3.
"""

from __future__ import annotations

import itertools
import os
import pwd
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from testlab.postgres import PgInstance
from testlab.secure import LabEtcd, start_secure_etcd

from agent.lab import pgversions
from agent.lab.agents import Agents
from agent.lab.cluster import Cluster
from agent.lab.etcd import ETCD35_BIN, ETCD_BIN, Etcd
from agent.lab.patroni import LAB_FAST, PATRONI3_BIN, PATRONI_BIN, PATRONI_DEFAULTS, PG_BIN_DIR, PatroniTimings
from agent.lab.procs import LAB_USER
from agent.lab.rundir import drop_data, new_run_dir, remove_run_dir

HERE = Path(__file__).parent
_scopes = itertools.count(1)
# the session's archiving instances: each test's archived WAL is pruned after it (_archive_retention)
_session_archives: list[Callable[[], int]] = []


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


@pytest.fixture(autouse=True)
def _archive_retention() -> Iterator[None]:
    """The session instances live for the whole run and archive every test's WAL (the repack
    tests alone write ~60 MB each): after each test their archives keep only the newest segment,
    as an operator's pg_archivecleanup would (agent.lab.archive)."""
    yield
    for prune in _session_archives:
        prune()


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


@pytest.fixture
def secure_etcd(run_dir: Path) -> Iterator[Callable[[str], LabEtcd]]:
    """`secure_etcd(scope)`: a fresh production-shaped etcd 3.5 (testlab.secure) for `scope`."""
    started: list[LabEtcd] = []

    def make(scope: str) -> LabEtcd:
        if not Path(ETCD35_BIN).exists():
            pytest.skip(f"etcd 3.5 missing (run .ci/install): {ETCD35_BIN}")
        started.append(start_secure_etcd(run_dir, scope))
        return started[-1]

    yield make
    for lab in started:
        lab.etcd.stop()


# lab_variant -> Patroni's timings, on the session etcd with plain HTTP
TIMING_VARIANTS: dict[str, PatroniTimings] = {"default": LAB_FAST, "patroni-defaults": PATRONI_DEFAULTS}
# lab_variant -> the Patroni it runs, on `secure_etcd` with Patroni's REST API over HTTPS
PROD_VARIANTS = {"prod": PATRONI_BIN, "prod-patroni3": PATRONI3_BIN}


@pytest.fixture
def lab_variant() -> str:
    """Which lab `fresh_cluster` and `fresh_agents` build: "default", or a test parametrizes it
    with TIMING_VARIANTS or PROD_VARIANTS keys."""
    return "default"


@pytest.fixture
def lab_scope() -> str:
    return f"t{next(_scopes)}"


@pytest.fixture
def lab_etcd(request: pytest.FixtureRequest, lab_variant: str, lab_scope: str) -> LabEtcd:
    """The session etcd for the plain labs; a `secure_etcd` of the test's own for the others."""
    if lab_variant in TIMING_VARIANTS:
        return LabEtcd(request.getfixturevalue("etcd"))
    secure: Callable[[str], LabEtcd] = request.getfixturevalue("secure_etcd")
    return secure(lab_scope)


@pytest.fixture(scope="session")
def cluster(session_dir: Path, etcd: Etcd) -> Iterator[Cluster]:
    c = Cluster(session_dir, etcd.url, scope="lab")
    try:
        c.start()
        _session_archives.append(c.prune_archive)
        yield c
    finally:
        c.stop()


@pytest.fixture
def fresh_cluster(run_dir: Path, lab_variant: str, lab_etcd: LabEtcd, lab_scope: str) -> Iterator[Cluster]:
    """A cluster of its own (own scope on the session etcd, or on the variant's etcd) that a test may break."""
    if lab_variant in TIMING_VARIANTS:
        c = Cluster(run_dir, lab_etcd.etcd.url, scope=lab_scope, timings=TIMING_VARIANTS[lab_variant])
    else:
        if not PROD_VARIANTS[lab_variant].exists():
            pytest.skip(f"{lab_variant}: missing (run .ci/install): {PROD_VARIANTS[lab_variant]}")
        ca = lab_etcd.etcd.tls
        c = Cluster(run_dir, lab_etcd.etcd.url, scope=lab_scope, tls=ca, etcd_tls=ca,
                    etcd_user=lab_etcd.patroni_user, patroni_bin=PROD_VARIANTS[lab_variant])
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
        _session_archives.append(pg.prune_archive)
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
            _session_archives.append(pg.prune_archive)
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


def _agents_of(run_dir: Path, cluster: Cluster, etcd: Etcd, etcd_toml: str = "") -> Iterator[Agents]:
    a = Agents(run_dir, cluster, [etcd.url], etcd_toml=etcd_toml)
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
def fresh_agents(run_dir: Path, fresh_cluster: Cluster, lab_etcd: LabEtcd) -> Iterator[Agents]:
    """One agent per node of a cluster the test may break."""
    yield from _agents_of(run_dir, fresh_cluster, lab_etcd.etcd, lab_etcd.agent_toml)
