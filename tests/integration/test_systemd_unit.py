"""The shipped unit under a real systemd 252 (Debian bookworm booted with systemd-nspawn).

One container for the module: the agent is installed the way docs/installation.md tells an
operator (wheels into a venv at /opt/pg-node-agent, user postgres, the unit copied unchanged,
config in /etc/pg-node-agent, the database password as a systemd credential), plus one drop-in
for the test (a 3 s watchdog, the credential). The agent talks to the lab's etcd and a lab
PostgreSQL 15 over the host's loopback (the container shares the host's network).

PostgreSQL is reached over TCP with a password (scram) handed over as a credential, not the unix
socket: the lab's peer auth maps OS users through pg_ident, and the container's `postgres` uid is
not the host's, so a bind-mounted socket would authenticate the wrong OS user. TCP also exercises
the `LoadCredential=` + relative `password_file` path the issue asks for.

Skips (with the reason) where systemd-nspawn cannot run (not root, no CAP_SYS_ADMIN, no cgroups).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from psycopg import sql
from testlab import nspawn
from testlab.postgres import PgInstance

from agent.lab.etcd import Etcd
from agent.lab.ports import free_port
from agent.lab.procs import LabTimeout, wait_until

ROOT = Path(__file__).resolve().parents[2]
UNIT = "pg-node-agent.service"
CONFIG = "/etc/pg-node-agent/agent.toml"
STATE_DIR = "/var/lib/pg-node-agent"
DROPIN = f"/etc/systemd/system/{UNIT}.d/10-test.conf"
WATCHDOG_SEC = 3
ROLE = "pgna_ct"
LEADER = "node-x"

HTTP_GET = """
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=3) as r:
        print(r.status); sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); sys.stdout.write(e.read().decode())
except OSError as e:
    print(0); sys.stdout.write(str(e))
"""

pytestmark = pytest.mark.slow


@dataclass
class Machine:
    ct: nspawn.Container
    etcd: Etcd
    pg: PgInstance
    port: int
    scope: str
    good_config: str
    timings: dict[str, float] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)

    # -- views
    def props(self, *names: str) -> dict[str, str]:
        return self.ct.show(UNIT, *names)

    def http(self, path: str) -> tuple[int, str]:
        """GET from inside the container (python3 of the image, no curl in minbase)."""
        r = self.ct.run(["python3", "-c", HTTP_GET, f"http://127.0.0.1:{self.port}{path}"], check=False)
        code, _, body = r.stdout.partition("\n")
        return int(code or 0), body

    def metric(self, name: str) -> float | None:
        code, body = self.http("/metrics")
        for line in body.splitlines() if code == 200 else []:
            k, _, v = line.rpartition(" ")
            if k == name:
                return float(v)
        return None

    def main_pid(self) -> int:
        return int(self.props("MainPID")["MainPID"])

    def proc(self, pid: int, what: str) -> str:
        return self.ct.read_file(f"/proc/{pid}/{what}")

    def cursor(self) -> str:
        out = self.ct.run(["journalctl", "-q", "-n", "0", "--show-cursor"], check=False).stdout
        m = re.search(r"-- cursor: (\S+)", out)
        return m.group(1) if m else ""

    def journal_since(self, cursor: str) -> str:
        return self.ct.journal(None, *([f"--after-cursor={cursor}"] if cursor else []))

    # -- actions
    def wait_active(self, timeout: float = 30) -> dict[str, str]:
        box: dict[str, str] = {}

        def ok() -> bool:
            box.update(self.props("ActiveState", "SubState", "MainPID", "NRestarts"))
            return box["ActiveState"] == "active" and box["SubState"] == "running"

        wait_until(ok, timeout, "pg-node-agent active/running", detail=lambda: box)
        return box

    def ensure_running(self) -> None:
        if self.props("ActiveState")["ActiveState"] != "active":
            self.ct.systemctl("reset-failed", UNIT)
            r = self.ct.systemctl("start", UNIT)
            assert r.returncode == 0, r.stderr + self.ct.journal(UNIT)[-3000:]
        self.wait_active()


def _prepare_pg(pg: PgInstance, password: str) -> None:
    """A login role with a password (scram over 127.0.0.1) and its own database with pg_stat_statements."""
    with pg.connect() as c:
        if c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone() is None:
            c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
        c.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(password)))
        c.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(ROLE)))
        if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (ROLE,)).fetchone() is None:
            c.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(ROLE), sql.Identifier(ROLE))
            )
    with pg.connect(ROLE) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def _config(etcd: Etcd, pg: PgInstance, port: int, scope: str) -> str:
    return f"""# written by tests/integration/test_systemd_unit.py
[node]
name = "ct1"

[etcd]
endpoints = ["{etcd.url}"]
scope = "{scope}"
watch_deadline = "3s"

[patroni]
# no Patroni in this test: unreachable, reported, not fatal
url = "http://127.0.0.1:{free_port()}"

[postgres]
host = "127.0.0.1"
port = {pg.port}
user = "{ROLE}"
dbname = "{ROLE}"
password_file = "pgpass"

[sampler]
source = "pg_stat_statements"
interval = "1s"

[archive]
enabled = false

[http]
listen = "127.0.0.1:{port}"

[logging]
format = "json"
"""


@pytest.fixture(scope="module")
def machine(request: pytest.FixtureRequest, etcd: Etcd, pg15: PgInstance) -> Iterator[Machine]:
    reason = nspawn.unavailable_reason()
    if reason:
        pytest.skip(f"systemd-nspawn unavailable: {reason}")
    log_dir = Path(f"/var/tmp/pgna-nspawn-logs/{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    log_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        lower = nspawn.ensure_rootfs(log_dir / "build.log")
    except nspawn.NspawnUnavailable as e:
        pytest.skip(f"systemd-nspawn unavailable: {e}")
    timings["rootfs (build/extract if needed)"] = time.monotonic() - t0
    timings.update({k: v for k, v in nspawn.TIMINGS.items() if k.startswith("rootfs")})
    t = time.monotonic()
    agent_dir, deps_dir = nspawn.agent_wheels(ROOT, log_dir / "wheels.log")
    timings["wheels"] = time.monotonic() - t

    password = secrets.token_urlsafe(18)
    _prepare_pg(pg15, password)
    scope = f"ct{uuid.uuid4().hex[:8]}"
    etcd.put(f"/service/{scope}/leader", LEADER)
    port = free_port()
    binds = nspawn.agent_binds(ROOT, agent_dir, deps_dir)
    failed_before = request.session.testsfailed
    with nspawn.Container(lower, binds_ro=binds, log_dir=log_dir) as ct:
        timings["boot"] = nspawn.TIMINGS["boot_s"]
        t = time.monotonic()
        # --- docs/installation.md, as an operator would do it
        nspawn.install_agent(ct, ROOT)  # steps 2-4: venv, user, the unit unchanged
        ct.write_file("/etc/pg-node-agent/pgpass", password + "\n", mode="0600")
        good = _config(etcd, pg15, port, scope)
        ct.write_file(CONFIG, good, mode="0640", owner="root:postgres")
        ct.write_file(
            DROPIN,
            f"[Service]\nWatchdogSec={WATCHDOG_SEC}s\nLoadCredential=pgpass:/etc/pg-node-agent/pgpass\n",
        )
        ct.systemctl("daemon-reload", check=True)
        timings["install"] = time.monotonic() - t
        m = Machine(ct, etcd, pg15, port, scope, good, timings)
        try:
            yield m
        finally:
            if request.session.testsfailed > failed_before:
                (log_dir / "journal.txt").write_text(ct.journal(None))
            t = time.monotonic()
    timings["poweroff+cleanup"] = time.monotonic() - t
    shutil.rmtree(agent_dir.parent, ignore_errors=True)
    failed = request.session.testsfailed > failed_before
    if not failed:
        shutil.rmtree(log_dir, ignore_errors=True)
    _report(
        request,
        [
            *m.report,
            "systemd-nspawn timings: " + ", ".join(f"{k}={v:.2f}s" for k, v in timings.items()),
            *([f"systemd-nspawn: kept {log_dir} (container journal, console, build logs)"] if failed else []),
        ],
    )


def _report(request: pytest.FixtureRequest, lines: list[str]) -> None:
    """Write to the terminal even with output capture on (the cost of the fixture belongs in -q runs)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


@pytest.fixture(autouse=True)
def _timed(request: pytest.FixtureRequest) -> Iterator[None]:
    if "machine" not in request.fixturenames:
        yield
        return
    m: Machine = request.getfixturevalue("machine")
    t = time.monotonic()
    yield
    m.timings[request.node.name.removeprefix("test_")[:40]] = time.monotonic() - t


# --------------------------------------------------------------------------- 1. READY=1


def test_start_returns_after_ready_with_status_and_health(machine: Machine) -> None:
    m, ct = machine, machine.ct
    if m.props("ActiveState")["ActiveState"] != "inactive":
        ct.systemctl("stop", UNIT, check=True)
    ct.run(["systemd-analyze", "set-log-level", "debug"])  # PID 1 then logs each notify message
    try:
        cur = m.cursor()
        r = ct.systemctl("start", UNIT)
    finally:
        ct.run(["systemd-analyze", "set-log-level", "info"])
    assert r.returncode == 0, r.stderr + ct.journal(UNIT)[-3000:]
    # Right after `start` returned, before any wait: Type=notify made it wait for READY=1.
    p = m.props("ActiveState", "SubState", "StatusText", "MainPID", "Result")
    code, body = m.http("/health")
    assert p["ActiveState"] == "active" and p["SubState"] == "running", p
    assert re.search(rf"role=\S+ leader={LEADER} .*dcs=up", p["StatusText"]), p["StatusText"]
    assert code == 200, body
    # PID 1 got READY=1 (with the STATUS= line) from the main process, then marked the unit started.
    log = m.journal_since(cur)
    steps = [
        "Changed dead -> start",
        f"Got notification message from PID {p['MainPID']} (READY=1, STATUS=role=",
        "Changed start -> running",
        "Started pg-node-agent.service",
    ]
    at = [log.find(s) for s in steps]
    assert all(i >= 0 for i in at) and at == sorted(at), (list(zip(steps, at, strict=True)), log[-4000:])
    # ...as User=postgres, with the credential and the state directory handed over.
    uid = ct.run(["id", "-u", "postgres"]).stdout.strip()
    status = m.proc(int(p["MainPID"]), "status")
    assert re.search(rf"^Uid:\s+{uid}\s", status, re.M), status
    env = m.proc(int(p["MainPID"]), "environ").split("\0")
    assert f"STATE_DIRECTORY={STATE_DIR}" in env and any(e.startswith("CREDENTIALS_DIRECTORY=") for e in env)


def test_documentation_the_unit_names_is_installed(machine: Machine) -> None:
    """`Documentation=` names files that docs/installation.md's steps put on the node."""
    uris = machine.props("Documentation")["Documentation"].replace('"', "").split()
    assert uris and all(u.startswith("file:///") for u in uris), uris
    for path in (u.removeprefix("file://") for u in uris):
        r = machine.ct.run(["test", "-s", path], check=False)
        assert r.returncode == 0, f"{path} (Documentation= of the unit) is not installed"


# --------------------------------------------------------------------------- 2. watchdog


def test_frozen_agent_is_killed_by_the_watchdog_and_restarted(machine: Machine) -> None:
    m, ct = machine, machine.ct
    m.ensure_running()
    before = m.props("MainPID", "NRestarts")
    cur = m.cursor()
    t0 = time.monotonic()
    ct.run(["kill", "-STOP", before["MainPID"]])
    box: dict[str, str] = {}

    def restarted() -> bool:
        box.update(m.props("NRestarts", "ActiveState", "SubState", "MainPID"))
        return (
            int(box["NRestarts"]) > int(before["NRestarts"])
            and box["ActiveState"] == "active"
            and box["SubState"] == "running"
            and box["MainPID"] not in ("0", before["MainPID"])
        )

    wait_until(restarted, 40, "watchdog restart", detail=lambda: box)
    took = time.monotonic() - t0
    log = m.journal_since(cur)
    assert f"Watchdog timeout (limit {WATCHDOG_SEC}s)!" in log, log[-3000:]
    assert "Failed with result 'watchdog'" in log, log[-3000:]
    assert wait_until(lambda: m.http("/health")[0] == 200, 10, "/health after restart")
    # Detected after WatchdogSec, restarted after RestartSec=2s, ready again.
    assert WATCHDOG_SEC <= took < WATCHDOG_SEC + 2 + 20, took


# --------------------------------------------------------------------------- 3. exit 78


def test_bad_config_fails_with_78_and_is_not_restarted(machine: Machine) -> None:
    m, ct = machine, machine.ct
    m.ensure_running()
    bad = m.good_config.replace('[node]\nname = "ct1"\n', '[node]\nname = "ct1"\nnmae_typo = "x"\n')
    assert bad != m.good_config
    ct.write_file(CONFIG, bad, mode="0640", owner="root:postgres")
    try:
        r = ct.systemctl("restart", UNIT)
        assert r.returncode != 0, "start of a unit whose process exits 78 must fail"
        p = m.props("ActiveState", "Result", "ExecMainStatus", "ExecMainCode", "NRestarts")
        assert p["ActiveState"] == "failed" and p["Result"] == "exit-code" and p["ExecMainStatus"] == "78", p
        # Not restarted: nothing changes for two RestartSec periods.
        with pytest.raises(LabTimeout):
            wait_until(
                lambda: (
                    m.props("ActiveState", "NRestarts")
                    != {"ActiveState": "failed", "NRestarts": p["NRestarts"]}
                ),
                4.0,
                "a restart that must not happen",
            )
        assert "nmae_typo" in ct.journal(UNIT)
    finally:
        ct.write_file(CONFIG, m.good_config, mode="0640", owner="root:postgres")
    r = ct.systemctl("start", UNIT)
    assert r.returncode == 0, r.stderr
    assert m.props("ActiveState", "SubState") == {"ActiveState": "active", "SubState": "running"}


# --------------------------------------------------------------------------- 4. clean stop


def test_stop_is_clean_with_stopping_within_timeout(machine: Machine) -> None:
    m, ct = machine, machine.ct
    m.ensure_running()
    timeout_stop = int(m.props("TimeoutStopUSec")["TimeoutStopUSec"].removesuffix("s") or 0)
    pid = m.main_pid()
    ct.run(["systemd-analyze", "set-log-level", "debug"])  # PID 1 then logs each notify message
    try:
        cur = m.cursor()
        t0 = time.monotonic()
        r = ct.systemctl("stop", UNIT)
        took = time.monotonic() - t0
    finally:
        ct.run(["systemd-analyze", "set-log-level", "info"])
    assert r.returncode == 0, r.stderr
    assert m.props("ActiveState", "SubState") == {"ActiveState": "inactive", "SubState": "dead"}
    assert took < timeout_stop, (took, timeout_stop)
    # An inactive unit that nothing references is garbage-collected at once ("Collecting."), which
    # drops ExecMainStatus/Result from `systemctl show`; PID 1's debug log keeps them, in order.
    log = m.journal_since(cur)
    steps = [
        "Changed running -> stop-sigterm",  # deactivating
        f"Got notification message from PID {pid} (STOPPING=1",  # the agent's STOPPING=1
        "Main process exited, code=exited, status=0/SUCCESS (success)",
        "Deactivated successfully.",
        "Changed stop-sigterm -> dead",
    ]  # inactive
    at = [log.find(s) for s in steps]
    assert all(i >= 0 for i in at) and at == sorted(at), (list(zip(steps, at, strict=True)), log[-4000:])
    assert '"agent_stopping"' in log


# --------------------------------------------------------------------------- 5. hardening


def _mount_opts(mountinfo: str, target: str) -> set[str]:
    opts: set[str] = set()
    for line in mountinfo.splitlines():
        f = line.split()
        if f[4] == target:
            opts = set(f[5].split(","))  # the last (topmost) mount on the target wins
    return opts


def test_hardened_unit_serves_metrics_keeps_state_and_cannot_write_usr_or_etc(machine: Machine) -> None:
    m, ct = machine, machine.ct
    m.ensure_running()
    wait_until(
        lambda: m.metric("pgnode_postgres_up") == 1.0 and m.metric("pgnode_dcs_up") == 1.0,
        20,
        "postgres and etcd reached",
        detail=lambda: m.http("/metrics")[1][-1500:],
    )
    wait_until(
        lambda: ct.run(["test", "-s", f"{STATE_DIR}/sampler.json"], check=False).returncode == 0,
        20,
        "sampler state written",
        detail=lambda: ct.journal(UNIT)[-1500:],
    )
    st = ct.run(["stat", "-c", "%U %a", STATE_DIR, f"{STATE_DIR}/sampler.json"]).stdout.split("\n")
    assert st[:2] == ["postgres 700", "postgres 600"], st

    # State kept across a restart: the new process restores it.
    cur = m.cursor()
    assert ct.systemctl("restart", UNIT).returncode == 0
    m.wait_active()
    restored = [
        json.loads(x.split(": ", 1)[1])
        for x in m.journal_since(cur).splitlines()
        if '"sampler_state_restored"' in x
    ]
    assert restored and restored[0]["path"] == f"{STATE_DIR}/sampler.json", m.journal_since(cur)[-2000:]

    pid = m.main_pid()
    status, mountinfo = m.proc(pid, "status"), m.proc(pid, "mountinfo")
    # A negative control: the same kind of probe on an unhardened transient unit, same user.
    ct.run(["systemd-run", "--unit=pgna-control", "--collect", "-p", "User=postgres", "sleep", "120"])
    try:
        cpid = int(ct.show("pgna-control.service", "MainPID")["MainPID"])
        c_status, c_mountinfo = m.proc(cpid, "status"), m.proc(cpid, "mountinfo")
        c_write = ct.run(
            ["nsenter", "-t", str(cpid), "-m", "touch", "/usr/pgna-probe", "/etc/pgna-probe"], check=False
        )
        ct.run(["rm", "-f", "/usr/pgna-probe", "/etc/pgna-probe"])
    finally:
        ct.systemctl("stop", "pgna-control.service")

    def field_of(text: str, name: str) -> str:
        return re.search(rf"^{name}:\s+(.*)$", text, re.M).group(1).strip()  # type: ignore[union-attr]

    assert field_of(status, "NoNewPrivs") == "1" and field_of(c_status, "NoNewPrivs") == "0"
    assert field_of(status, "Seccomp") == "2"
    assert int(field_of(status, "Seccomp_filters")) > int(field_of(c_status, "Seccomp_filters"))
    assert int(field_of(status, "CapEff"), 16) == 0 and int(field_of(status, "CapBnd"), 16) == 0
    assert "ro" in _mount_opts(mountinfo, "/") and "rw" in _mount_opts(c_mountinfo, "/")
    assert "rw" in _mount_opts(mountinfo, STATE_DIR)
    # Writes from inside the agent's own mount namespace (even as root): refused by the mounts.
    for path in ("/usr/pgna-probe", "/etc/pgna-probe", "/opt/pg-node-agent/pgna-probe"):
        w = ct.run(["nsenter", "-t", str(pid), "-m", "touch", path], check=False)
        assert w.returncode != 0 and "Read-only file system" in w.stderr, (path, w)
    w = ct.run(["nsenter", "-t", str(pid), "-m", "touch", f"{STATE_DIR}/pgna-probe"], check=False)
    assert w.returncode == 0, w.stderr
    ct.run(["rm", "-f", f"{STATE_DIR}/pgna-probe"])
    assert c_write.returncode == 0, c_write.stderr  # control: the unhardened unit's namespace can

    code, body = m.http("/metrics")
    assert code == 200 and "pgnode_watchdog_feeds_total" in body
    assert (m.metric("pgnode_watchdog_enabled") or 0) == 1.0

    sec = ct.run(["systemd-analyze", "security", "--no-pager", UNIT], check=False)
    print(sec.stdout)  # noqa: T201 - shown with -s or on failure
    exposure = re.search(r"Overall exposure level for \S+: ((\d+\.\d+).*)", sec.stdout)
    assert exposure, sec.stdout + sec.stderr
    m.report.append(f"systemd-analyze security {UNIT} (systemd 252, in the container): {exposure.group(1)}")
    assert float(exposure.group(2)) <= 2.0, sec.stdout


# --------------------------------------------------------------------------- 6. reload


def test_reload_applies_a_changed_config_without_restart(machine: Machine) -> None:
    m, ct = machine, machine.ct
    m.ensure_running()
    before = m.props("MainPID", "NRestarts")
    ok0 = m.metric('pgnode_config_reloads_total{result="success"}') or 0.0
    ct.write_file(
        CONFIG,
        m.good_config.replace('interval = "1s"', 'interval = "2s"'),
        mode="0640",
        owner="root:postgres",
    )
    try:
        assert ct.systemctl("reload", UNIT).returncode == 0
        wait_until(
            lambda: (m.metric('pgnode_config_reloads_total{result="success"}') or 0.0) > ok0,
            10,
            "config reloaded",
            detail=lambda: ct.journal(UNIT)[-1500:],
        )
    finally:
        ct.write_file(CONFIG, m.good_config, mode="0640", owner="root:postgres")
    assert m.props("MainPID", "NRestarts") == before
    assert m.props("ActiveState")["ActiveState"] == "active"


# --------------------------------------------------------------------------- 7. PostgreSQL's IPC, descriptors


def _field_of_limits(limits: str, name: str) -> tuple[str, str]:
    for line in limits.splitlines():
        if line.startswith(name):
            soft, hard = line[len(name):].split()[:2]
            return soft, hard
    raise AssertionError(f"{name!r} not in /proc/<pid>/limits:\n{limits}")


def test_postgres_shared_memory_survives_agent_stop_and_restart(machine: Machine) -> None:
    """RemoveIPC=yes would delete the postgres user's IPC when the agent (the last postgres unit
    here, as when Patroni is stopped and its postmaster left running) stops."""
    m, ct = machine, machine.ct
    m.ensure_running()
    # What an orphaned postmaster holds: a SysV segment and a POSIX object in /dev/shm, both
    # created by the postgres user outside any unit.
    made = ct.run(["runuser", "-u", "postgres", "--", "ipcmk", "-M", "65536"]).stdout
    shmid = re.search(r"Shared memory id: (\d+)", made)
    assert shmid, made
    posix = "/dev/shm/PostgreSQL.4242"
    ct.run(["runuser", "-u", "postgres", "--", "dd", "if=/dev/zero", f"of={posix}", "bs=4096", "count=1",
            "status=none"])
    try:

        def survives(when: str) -> None:
            seg = ct.run(["ipcs", "-m", "-i", shmid.group(1)], check=False)
            assert seg.returncode == 0 and "uid=" in seg.stdout, (when, seg.stdout, seg.stderr)
            assert ct.run(["stat", "-c", "%U", posix], check=False).stdout.strip() == "postgres", when

        survives("before")
        assert ct.systemctl("stop", UNIT).returncode == 0
        assert m.props("ActiveState")["ActiveState"] == "inactive"
        survives("after the agent stopped")
        assert ct.systemctl("start", UNIT).returncode == 0
        m.wait_active()
        survives("after the agent started again")
        assert ct.systemctl("restart", UNIT).returncode == 0
        m.wait_active()
        survives("after a restart")
    finally:
        ct.run(["ipcrm", "-m", shmid.group(1)], check=False)
        ct.run(["rm", "-f", posix], check=False)
    # The agent itself sees none of it: an IPC namespace of its own (PrivateIPC=yes).
    pid = m.main_pid()
    own = ct.run(["readlink", f"/proc/{pid}/ns/ipc"]).stdout.strip()
    assert own and own != ct.run(["readlink", "/proc/1/ns/ipc"]).stdout.strip()


def test_descriptor_limit_of_the_unit_is_in_force(machine: Machine) -> None:
    """LimitNOFILE=65536, up to the ceiling PID 1 has: systemd clamps a unit's limit to its own
    hard limit (on a real host far above 65,536; in this lab the hard limit of whatever started
    the tests, since the container cannot raise it)."""
    m, ct = machine, machine.ct
    m.ensure_running()
    ceiling = int(_field_of_limits(m.proc(1, "limits"), "Max open files")[1])
    want = str(min(65536, ceiling))
    assert _field_of_limits(m.proc(m.main_pid(), "limits"), "Max open files") == (want, want)
    # A negative control: a unit of the same user without LimitNOFILE= keeps systemd's soft 1,024.
    ct.run(["systemd-run", "--unit=pgna-nofile", "--collect", "-p", "User=postgres", "sleep", "120"])
    try:
        cpid = int(ct.show("pgna-nofile.service", "MainPID")["MainPID"])
        assert _field_of_limits(m.proc(cpid, "limits"), "Max open files")[0] == "1024"
    finally:
        ct.systemctl("stop", "pgna-nofile.service")
    m.report.append(f"LimitNOFILE in force on the agent: {want} (PID 1's hard limit in the container: {ceiling})")


# --------------------------------------------------------------------------- 8. a watchdog device


def test_watchdog_device_hidden_by_the_unit_fails_with_78_naming_its_settings(machine: Machine) -> None:
    """/dev/net/tun is a character device the container has and the unit's private /dev has not,
    as any second watchdog device would be."""
    m, ct = machine, machine.ct
    m.ensure_running()
    dev = "/dev/net/tun"
    with_device = m.good_config + f'\n[watchdog]\ndevice = "{dev}"\n'
    # Run by hand as root, outside the unit: the device is there, and the relative password_file
    # is found next to the config (no $CREDENTIALS_DIRECTORY out here).
    ct.write_file("/etc/pg-node-agent/with-device.toml", with_device)
    outside = ct.run(["/opt/pg-node-agent/bin/pg-node-agent", "-c", "/etc/pg-node-agent/with-device.toml",
                      "check-config"], check=False)
    ct.run(["rm", "-f", "/etc/pg-node-agent/with-device.toml"])
    assert outside.returncode == 0, outside.stderr
    ct.write_file(CONFIG, with_device, mode="0640", owner="root:postgres")
    try:
        assert ct.systemctl("restart", UNIT).returncode != 0
        p = m.props("ActiveState", "ExecMainStatus")
        assert p == {"ActiveState": "failed", "ExecMainStatus": "78"}, p
        log = ct.journal(UNIT)
        assert f"watchdog.device: {dev}: No such file or directory" in log, log[-2000:]
        assert f"PrivateDevices=no and DeviceAllow={dev} rw" in log, log[-2000:]
    finally:
        ct.write_file(CONFIG, m.good_config, mode="0640", owner="root:postgres")
        ct.systemctl("reset-failed", UNIT)
    m.ensure_running()
