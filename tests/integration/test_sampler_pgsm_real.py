"""The sampler against the real pg_stat_monitor 2.3.2, and the stand-in checked against it.

pg_stat_monitor has no Debian package: these tests run where it has been built from its upstream
source and installed for the lab's PostgreSQL 15, and skip, saying so, everywhere else (CI runs
the same workloads on the stand-in, tests/integration/test_sampler_pgsm.py).

Ground truth is pgbench's own per-transaction log (-l): every transaction runs each statement of
its script once. Buckets are short (pgsm_bucket_time 3 s, 6 buckets: 18 s retention) to keep the
run in minutes; everything else is the extension's default.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sampler_loop import run_sampler_until
from testlab.postgres import PgInstance

from agent.core import config as config_mod
from agent.core.context import Context
from agent.lab.etcd import Etcd
from agent.lab.patroni import PG_BIN_DIR, SUPERUSER
from agent.lab.procs import wait_until
from agent.sampler.pg_stat_monitor import COLUMNS, LABEL_SQL, build_select
from tests.integration.agentproc import AgentProc
from tests.integration.pgsm_standin import loader

LIBDIR = PG_BIN_DIR.parent / "lib"
SHAREDIR = Path("/usr/share/postgresql") / PG_BIN_DIR.parent.name / "extension"
BT, MB, GRACE = 3, 6, 1.0
SCRIPT = """\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
"""
STATEMENTS = {
    "select": "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "update": "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "insert": "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
}


def _missing() -> str | None:
    need = [LIBDIR / "pg_stat_monitor.so", SHAREDIR / "pg_stat_monitor.control"]
    gone = [str(p) for p in need if not p.exists()]
    return ("the real pg_stat_monitor is not installed for this PostgreSQL (" + ", ".join(gone)
            + "): real-extension tests skipped; the stand-in tests cover the same workloads") if gone else None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def settings(bt: int = BT, mb: int = MB) -> dict[str, Any]:
    return {"shared_preload_libraries": "pg_stat_monitor,pg_stat_statements",
            "pg_stat_monitor.pgsm_bucket_time": bt, "pg_stat_monitor.pgsm_max_buckets": mb,
            "pg_stat_monitor.pgsm_max": "10MB", "pg_stat_monitor.pgsm_normalized_query": "on"}


@pytest.fixture(scope="module")
def pgsm(session_dir: Path) -> Iterator[PgInstance]:
    yield from _bench_server(session_dir, "pgsm-real", settings())


def _bench_server(session_dir: Path, name: str, conf: dict[str, Any]) -> Iterator[PgInstance]:
    pg = PgInstance(session_dir, name=name, settings=conf)
    pg.start()
    try:
        pg.psql("CREATE EXTENSION pg_stat_monitor")
        pg.psql("CREATE EXTENSION pg_stat_statements")
        pg.psql("CREATE DATABASE bench")
        subprocess.run([str(PG_BIN_DIR / "pgbench"), "-i", "-q", "-s", "1", "-h", str(pg.socket_dir),
                        "-p", str(pg.port), "-U", SUPERUSER, "bench"], check=True, capture_output=True, timeout=120)
        yield pg
    finally:
        pg.stop()


# ---------------------------------------------------------------- the stand-in against the real one

def _facts(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    cur = conn.execute
    return {
        "pg_settings": sorted(cur("SELECT name, setting, unit FROM pg_settings "
                                  "WHERE name LIKE 'pg_stat_monitor.%'").fetchall()),
        "current_setting": sorted(cur("SELECT name, current_setting(name) FROM pg_settings "
                                      "WHERE name LIKE 'pg_stat_monitor.%'").fetchall()),
        "internal": cur("SELECT pg_get_function_identity_arguments(to_regprocedure("
                        "'pg_stat_monitor_internal(boolean)'))").fetchone(),
        "view": cur("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                    "WHERE attrelid = to_regclass('pg_stat_monitor') AND attnum > 0 ORDER BY attnum").fetchall(),
        "timings": cur("SELECT get_histogram_timings()").fetchone(),
        "version": cur("SELECT pg_stat_monitor_version()").fetchone(),
    }


# the columns of an error or warning row the sampler and the stand-in's rows depend on
ROW_SHAPE = ("SELECT elevel, sqlcode, message IS NOT NULL, queryid = pgsm_query_id, cmd_type, cmd_type_text, "
             "planid, relations, calls, total_exec_time, resp_calls[1]::int = calls, "
             "(SELECT sum(x::int) FROM unnest(resp_calls) x) = calls, rows "
             "FROM pg_stat_monitor WHERE elevel = %s")


def test_standin_shows_what_the_real_extension_shows(pgsm: PgInstance, pg15: PgInstance) -> None:
    """Settings with their units, both read paths' columns and types, histogram ranges and the
    shape of error and warning rows: the stand-in (on a server without the extension) must equal
    the real 2.3.2 on each."""
    with pgsm.connect() as real:
        real.execute("SELECT pg_stat_monitor_reset()")
        with pgsm.connect("bench") as c:
            with pytest.raises(psycopg.errors.DivisionByZero):
                c.execute("SELECT 1/0")
            c.execute("COMMIT")  # outside a transaction: a WARNING (25P01)
        time.sleep(0.2)
        want = _facts(real)
        want_rows = {lv: real.execute(ROW_SHAPE, (lv,)).fetchall() for lv in (19, 21)}
    with pg15.connect() as admin:
        loader.install(admin, "pgsm_standin_check", bucket_time=BT, max_buckets=MB)
    with pg15.connect("pgsm_standin_check") as fake:
        got = _facts(fake)
        now = fake.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        start = now.replace(second=now.second - now.second % BT, microsecond=0)
        loader.insert_row(fake, bucket_start=start, queryid=7, calls=1, exec_ms=0, elevel=21, sqlcode="22012",
                          bucket_time=BT, max_buckets=MB)
        loader.insert_row(fake, bucket_start=start, queryid=8, calls=1, exec_ms=0, elevel=19, sqlcode="25P01",
                          bucket_time=BT, max_buckets=MB)
        got_rows = {lv: fake.execute(ROW_SHAPE, (lv,)).fetchall() for lv in (19, 21)}
    assert got["pg_settings"] == want["pg_settings"]
    assert ("pg_stat_monitor.pgsm_bucket_time", "3s") in want["current_setting"]
    assert got["current_setting"] == want["current_setting"]
    assert got["internal"] == want["internal"]
    assert got["view"] == want["view"]
    assert got["timings"] == want["timings"]
    assert got["version"] == want["version"]
    assert want_rows[21] == [(21, "22012", True, True, 0, "", None, None, 1, 0.0, True, True, 0)]
    assert want_rows[19] == [(19, "25P01", True, True, 0, "", None, None, 1, 0.0, True, True, 0)]
    assert got_rows == want_rows


# ---------------------------------------------------------------- workloads against a real agent

class Agent(AgentProc):
    """A real agent process (kill -9 is a real kill) whose only job is the sampler."""

    def __init__(self, run_dir: Path, etcd_url: str, pg: PgInstance,
                 sampler: str = 'source = "pg_stat_monitor"\ngrace = "1s"\ninterval = "1s"\n') -> None:
        self.pg, self.sampler_toml = pg, sampler
        super().__init__(run_dir, etcd_url, scope=f"s{uuid.uuid4().hex[:8]}")

    def render(self, etcd_url: str, extra: str, name: str, scope: str, etcd_toml: str = "") -> str:
        return (
            f'[node]\nname = "{name}"\nstate_dir = "{self.run_dir}/state-{self.port}"\n'
            f'[etcd]\nscope = "{scope}"\nendpoints = ["{etcd_url}"]\n' + (etcd_toml + "\n" if etcd_toml else "") +
            f'[patroni]\nurl = "http://127.0.0.1:1"\n'
            f'[postgres]\nhost = "{self.pg.socket_dir}"\nport = {self.pg.port}\nuser = "{SUPERUSER}"\n'
            f'dbname = "postgres"\n'
            f'[sampler]\n{self.sampler_toml}top_n = 50\n'
            f'labels = ["datname"]\n[archive]\nenabled = false\n'
            f'[http]\nlisten = "127.0.0.1:{self.port}"\n[logging]\nformat = "json"\n'
        )

    def kill9(self) -> None:
        assert self.p is not None
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)

    def sampler(self) -> dict[str, Any]:
        return dict(self.status().get("sampler") or {})

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        _, body = self.get("/metrics")
        out = {}
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


def value(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


class Bench:
    """pgbench runs with -l into their own directory; `count(tag)` reads the transactions back."""

    def __init__(self, pg: PgInstance, root: Path) -> None:
        self.pg, self.root = pg, root
        self.script = root / "tx.sql"
        self.script.write_text(SCRIPT)

    def run(self, tag: str, seconds: float, clients: int = 2) -> None:
        d = self.root / tag
        d.mkdir()
        subprocess.run([str(PG_BIN_DIR / "pgbench"), "-n", "-M", "simple", "-c", str(clients), "-j", str(clients),
                        "-T", str(seconds), "-l", f"--log-prefix={d}/log", "-f", str(self.script),
                        "-h", str(self.pg.socket_dir), "-p", str(self.pg.port), "-U", SUPERUSER, "bench"],
                       check=True, capture_output=True, timeout=seconds + 60)

    def count(self, tag: str) -> int:
        """Transactions pgbench logged (one line each; a failed one would carry 'failed')."""
        n = 0
        for f in (self.root / tag).iterdir():
            for line in f.read_text().splitlines():
                assert "failed" not in line and "skipped" not in line, line
                n += 1
        return n

    def background(self, tag: str, seconds: float) -> threading.Thread:
        t = threading.Thread(target=self.run, args=(tag, seconds), daemon=True)
        t.start()
        return t


def assert_exact_but_for_rotation_race(got: dict[str, float], n: int, seconds: float, clients: int = 2) -> None:
    """Every statement ran `n` times. The agent reads each finished bucket once, so it never counts
    more; pg_stat_monitor 2.3.2 itself can drop an execution that straddles a bucket rotation
    (pgsm_store resets the entry when the bucket id changes; seen as 500 held for 502 run, see
    shared/notes/pg-stat-monitor-real.md), at most one per client per rotation. A shortfall
    larger than that, or any surplus, is the agent's."""
    bound = clients * (math.ceil(seconds / BT) + 1)
    assert all(0 <= n - v <= bound for v in got.values()), (got, n, bound)


def send_errors(pg: PgInstance, div0: int, missing: int, warnings: int, spread: float) -> None:
    """Counted failing statements, interleaved over `spread` seconds: 22012, 42P01, and COMMIT
    outside a transaction (a WARNING, 25P01)."""
    kinds = ["div0"] * div0 + ["missing"] * missing + ["warn"] * warnings
    kinds = [kinds[i] for i in sorted(range(len(kinds)), key=lambda i: (i * 7919) % len(kinds))]
    with pg.connect("bench") as c:
        for k in kinds:
            try:
                if k == "warn":
                    c.execute("COMMIT")
                else:
                    c.execute("SELECT 1/0" if k == "div0" else "SELECT * FROM pgsm_missing_table")
            except (psycopg.errors.DivisionByZero, psycopg.errors.UndefinedTable):
                pass
            time.sleep(spread / len(kinds))


def server_now(pg: PgInstance) -> float:
    return float(pg.psql("SELECT extract(epoch FROM clock_timestamp())::float8")[0][0])


def consumed_past(a: Agent, t: float, timeout: float = 30, bt: int = BT) -> None:
    """Waits until the agent consumed the bucket holding server time `t`."""
    b = math.floor(t / bt) * bt
    wait_until(lambda: (a.sampler().get("watermark") or 0) >= b, timeout, f"sampler consumed bucket {b}",
               detail=a.tail)


def at_phase(pg: PgInstance, lo: float, hi: float) -> float:
    """Sleeps until the server clock is between lo and hi seconds into a bucket; returns that time.
    A reset or restart placed there hits the bucket that was unfinished at the agent's last read
    (reads run GRACE after a bucket ends), so the buckets it destroys are known beforehand."""
    while True:
        t = server_now(pg)
        if lo <= t % BT <= hi:
            return t
        time.sleep(0.05)


def qids(pg: PgInstance) -> dict[str, str]:
    rows = pg.psql("SELECT s.query, s.queryid::text FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                   "WHERE d.datname = 'bench'")
    by_text = dict(rows)
    return {k: by_text[q] for k, q in STATEMENTS.items()}


def calls_by_q(m: dict[tuple[str, tuple[tuple[str, str], ...]], float], q: dict[str, str]) -> dict[str, float]:
    return {k: value(m, "pgnode_query_calls_total", datname="bench", queryid=v) for k, v in q.items()}


@pytest.mark.slow
def test_real_extension_counts_equal_pgbench_and_losses_are_counted_by_reason(
    pgsm: PgInstance, etcd: Etcd, run_dir: Path
) -> None:
    bench = Bench(pgsm, run_dir)
    pgsm.psql("SELECT pg_stat_monitor_reset()")
    a = Agent(run_dir, etcd.url, pgsm).start()
    figures: list[str] = []
    try:
        wait_until(lambda: a.sampler().get("watermark") is not None, 30, "watermark primed", detail=a.tail)

        # phase 1: undisturbed; pgbench plus counted errors and warnings
        errs = threading.Thread(target=send_errors, args=(pgsm, 30, 20, 10, 6.0), daemon=True)
        errs.start()
        bench.run("p1", 8)
        errs.join(30)
        consumed_past(a, server_now(pgsm))
        q = qids(pgsm)
        m1 = a.samples()
        n1 = bench.count("p1")
        got1 = calls_by_q(m1, q)
        assert_exact_but_for_rotation_race(got1, n1, 8)
        assert value(m1, "pgnode_query_errors_total", elevel="21", sqlcode="22012") == 30
        assert value(m1, "pgnode_query_errors_total", elevel="21", sqlcode="42P01") == 20
        assert value(m1, "pgnode_query_warnings_total", sqlcode="25P01") == 10
        assert not any(k[0] == "pgnode_query_errors_total" and ("elevel", "19") in k[1] for k in m1)
        all_calls = sum(v for (n, lab), v in m1.items() if n == "pgnode_query_calls_total" and ("datname", "bench") in lab)
        assert value(m1, "pgnode_query_latency_seconds_count", datname="bench") == all_calls
        assert value(m1, "pgnode_sampler_histogram_mismatches_total") == 0
        assert {r: value(m1, "pgnode_query_buckets_lost_total", reason=r) for r in ("expired", "reset", "restart")} \
            == {"expired": 0, "reset": 0, "restart": 0}
        figures.append(f"phase1 undisturbed: pgbench {n1} tx; calls {got1}; errors 22012=30 42P01=20, "
                       f"warnings 25P01=10; histogram _count {all_calls:.0f} = calls")

        # phase 2: pg_stat_monitor_reset() mid-run destroys the unfinished bucket
        t = bench.background("p2", 8)
        time.sleep(3)
        at_phase(pgsm, GRACE + 0.5, BT - 0.5)
        pgsm.psql("SELECT pg_stat_monitor_reset()")
        t.join(60)
        consumed_past(a, server_now(pgsm))
        m2 = a.samples()
        n2 = bench.count("p2")
        got2 = {k: v - got1[k] for k, v in calls_by_q(m2, q).items()}
        assert all(0 < n2 - v < n2 for v in got2.values()), (got2, n2)  # lost, never doubled
        assert value(m2, "pgnode_query_buckets_lost_total", reason="reset") == 1
        figures.append(f"phase2 reset: pgbench {n2} tx; ingested {got2} (lost {[n2 - v for v in got2.values()]}); "
                       "lost buckets reset=1")

        # phase 3: a fast server restart destroys the unfinished bucket; the phase after it is exact
        down = at_phase(pgsm, GRACE + 0.5, BT - 0.5)
        os.kill(pgsm.proc.pid or 0, signal.SIGINT)  # fast shutdown: the agent's session must not hold it
        pgsm.proc.stop(timeout=30)
        pgsm.start()
        up = float(pgsm.psql("SELECT extract(epoch FROM pg_postmaster_start_time())::float8")[0][0])
        # unread then: the bucket unfinished at the agent's last read, up to the one the server
        # came back in (the same one unless the restart crossed a bucket boundary)
        restart_lost = math.floor(up / BT) - math.floor(down / BT) + 1
        bench.run("p3", 6)
        consumed_past(a, server_now(pgsm))
        m3 = a.samples()
        n3 = bench.count("p3")
        got3 = {k: v - got1[k] - got2[k] for k, v in calls_by_q(m3, q).items()}
        assert_exact_but_for_rotation_race(got3, n3, 6)
        assert value(m3, "pgnode_query_buckets_lost_total", reason="restart") == restart_lost
        assert value(m3, "pgnode_sampler_source_resets_total", kind="server_restart") == 1
        figures.append(f"phase3 after restart: pgbench {n3} tx; calls {got3}; lost buckets restart={restart_lost}")

        # phase 4: agent kill -9 mid-run, back within the retention: exact, nothing doubled
        t = bench.background("p4", 10)
        time.sleep(3)
        a.kill9()
        time.sleep(5)
        a.start()
        t.join(60)
        consumed_past(a, server_now(pgsm))
        m4 = a.samples()
        n4 = bench.count("p4")
        base = calls_by_q(m3, q)
        got4 = {k: v - base[k] for k, v in calls_by_q(m4, q).items()}
        assert_exact_but_for_rotation_race(got4, n4, 10)
        assert value(m4, "pgnode_query_buckets_lost_total", reason="expired") == 0
        figures.append(f"phase4 agent kill -9 (down 5 s < {BT * MB} s retention): pgbench {n4} tx; calls {got4}")

        # phase 5: agent down past the retention: what ran early expires (counted), what ran
        # within the retention before it came back is read exactly
        a.kill9()
        killed = server_now(pgsm)
        bench.run("p5a", 3)
        a_end = server_now(pgsm)
        while server_now(pgsm) < a_end + BT * MB + BT:
            time.sleep(0.2)
        bench.run("p5b", 3)
        a.start()
        consumed_past(a, server_now(pgsm))
        m5 = a.samples()
        n5a, n5b = bench.count("p5a"), bench.count("p5b")
        base = calls_by_q(m4, q)
        got5 = {k: v - base[k] for k, v in calls_by_q(m5, q).items()}
        assert_exact_but_for_rotation_race(got5, n5b, 3)
        expired = value(m5, "pgnode_query_buckets_lost_total", reason="expired")
        spanned = math.floor(a_end / BT) - math.floor(killed / BT) + 1  # buckets pgbench p5a ran in
        assert spanned <= expired <= (server_now(pgsm) - killed) / BT + 1, (expired, spanned)
        figures.append(f"phase5 agent down {server_now(pgsm) - killed:.0f} s (> {BT * MB} s): pgbench {n5a} tx "
                       f"expired unread, {n5b} tx read exactly ({got5}); lost buckets expired={expired:.0f} "
                       f"(pgbench ran in {spanned})")
        assert {r: value(m5, "pgnode_query_buckets_lost_total", reason=r) for r in ("reset", "restart")} \
            == {"reset": 1, "restart": restart_lost}
        assert value(m5, "pgnode_sampler_read_failures_total", reason="error") == 0
    finally:
        a.stop()
        print("\n" + "\n".join(figures))  # noqa: T201


@pytest.mark.slow
def test_real_extension_at_its_defaults_and_the_agent_at_its_own(session_dir: Path, etcd: Etcd, run_dir: Path) -> None:
    """The other tests shorten the buckets to 3 s; operators run the extension's 1-minute buckets
    (10 kept) and the agent's defaults (source auto, read every 10 s, 1 s grace). One bucket of
    pgbench and counted errors, read back exactly."""
    pg = next(gen := _bench_server(session_dir, "pgsm-defaults",
                                   {"shared_preload_libraries": "pg_stat_monitor,pg_stat_statements"}))
    try:
        assert pg.psql("SELECT current_setting('pg_stat_monitor.pgsm_bucket_time'), "
                       "current_setting('pg_stat_monitor.pgsm_max_buckets')") == [("1min", "10")]
        a = Agent(run_dir, etcd.url, pg, sampler="").start()
        try:
            wait_until(lambda: a.sampler().get("watermark") is not None, 90, "watermark primed", detail=a.tail)
            assert a.sampler()["source"] == "pg_stat_monitor"
            errs = threading.Thread(target=send_errors, args=(pg, 6, 4, 2, 3.0), daemon=True)
            errs.start()
            bench = Bench(pg, run_dir)
            bench.run("d", 5)
            errs.join(30)
            consumed_past(a, server_now(pg), timeout=60 + 10 + 15, bt=60)
            m = a.samples()
            n = bench.count("d")
            got = calls_by_q(m, qids(pg))
            assert_exact_but_for_rotation_race(got, n, 5)
            assert value(m, "pgnode_query_errors_total", elevel="21", sqlcode="22012") == 6
            assert value(m, "pgnode_query_errors_total", elevel="21", sqlcode="42P01") == 4
            assert value(m, "pgnode_query_warnings_total", sqlcode="25P01") == 2
            calls = sum(v for (k, lab), v in m.items() if k == "pgnode_query_calls_total" and ("datname", "bench") in lab)
            assert value(m, "pgnode_query_latency_seconds_count", datname="bench") == calls
            assert sum(v for (k, _), v in m.items() if k == "pgnode_query_buckets_lost_total") == 0
            print(f"\ndefaults (1min x 10 buckets, agent every 10 s): pgbench {n} tx; calls {got}")  # noqa: T201
        finally:
            a.stop()
    finally:
        gen.close()


async def test_real_extension_created_but_not_preloaded_falls_back_to_pgss(pg15: PgInstance, tmp_path: Path) -> None:
    """The session's PostgreSQL preloads pg_stat_statements only: pg_stat_monitor can be created
    there, and every read of it fails. `auto` reports that once and reads pg_stat_statements."""
    pg15.psql("DROP DATABASE IF EXISTS pgsm_unloaded_real WITH (FORCE)")
    pg15.psql("CREATE DATABASE pgsm_unloaded_real")
    with pg15.connect("pgsm_unloaded_real") as c:
        c.execute("CREATE EXTENSION pg_stat_monitor")
        c.execute("CREATE EXTENSION pg_stat_statements")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="shared_preload_libraries"):
            c.execute("SELECT count(*) FROM pg_stat_monitor")
    cfg = config_mod.parse({
        "node": {"name": "n1", "state_dir": str(tmp_path)}, "etcd": {"scope": "s"},
        "postgres": {"host": str(pg15.socket_dir), "port": pg15.port, "user": SUPERUSER,
                     "dbname": "pgsm_unloaded_real"},
        "sampler": {"interval": "200ms", "labels": ["datname"]}})
    ctx = Context.create(cfg)
    s = await run_sampler_until(ctx, lambda s: s.health.source == "pg_stat_statements" and s.health.reads >= 1,
                                limit=15)
    assert s.health.fallback is not None and "shared_preload_libraries" in s.health.fallback
    assert s.health.read_failures == {"error": 1, "timeout": 0}
    assert s.health.postgres_outages == 0


def test_every_label_reads_from_the_real_function(pgsm: PgInstance) -> None:
    """The read with all five labels runs on the real 2.3.2 and gives the view's values."""
    with pgsm.connect() as c:
        c.execute("SELECT pg_stat_monitor_reset()")
        with pgsm.connect("bench") as b:
            b.execute("SELECT abalance FROM pgbench_accounts WHERE aid = 1")
            with pytest.raises(psycopg.errors.DivisionByZero):
                b.execute("SELECT 1/0")
        time.sleep(0.2)
        cols = {r[0] for r in c.execute(COLUMNS).fetchall()}
        labels = tuple(LABEL_SQL)
        q = build_select(cols, labels)
        now = c.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
        rows = c.execute(q, {"lo": now.replace(year=2000), "hi": now}).fetchall()
        view = c.execute("SELECT queryid::text, datname, username, cmd_type_text, coalesce(application_name, ''), "
                         "coalesce(client_ip::text, '') FROM pg_stat_monitor WHERE datname = 'bench'").fetchall()
    got = {(r[1], *r[6:6 + len(labels)]) for r in rows if r[1] is not None and r[6] == "bench"}
    assert labels == ("datname", "username", "cmd_type", "application_name", "client_ip")
    assert got == {tuple(v) for v in view}
    assert {r[3] for r in got} == {"SELECT", ""}  # the error row has no command type
