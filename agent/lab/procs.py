"""Process controllers and waits with deadlines.

`Proc` follows Patroni's `features/environment.py`: `start(max_wait)` spawns and waits until
`is_accessible()`, naming what did not come up; `stop()` sends SIGTERM, then SIGKILL after a grace
period, always by PID, and `wait()`s so no zombie is left to make `kill -0` lie. Children get
their own session, so a Ctrl-C in the terminal reaches the lab, which then stops them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

LAB_USER = "pgtest"


class LabTimeout(TimeoutError):
    """A wait ran out; the message says what was awaited and the last thing seen."""


def lab_user() -> str | None:
    """The OS user PostgreSQL and Patroni run as: `pgtest` under root, else ourselves."""
    return LAB_USER if os.geteuid() == 0 else None


def chown_to_lab_user(path: Path) -> None:
    user = lab_user()
    if user is not None:
        pw = pwd.getpwnam(user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.1,
    detail: Callable[[], object] | None = None,
) -> object:
    """Poll `predicate` until it returns something truthy, and return it; raise LabTimeout naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = f"; last seen: {detail()!r}" if detail is not None else ""
            raise LabTimeout(f"{what}: not within {timeout:.1f}s{seen}")
        time.sleep(interval)


async def await_until(
    predicate: Callable[[], object],
    within: float,
    what: str,
    interval: float = 0.1,
    detail: Callable[[], object] | None = None,
) -> object:
    """`wait_until` for async tests: the predicate (and `detail`) run in a worker thread, the wait
    yields to the loop."""
    deadline = time.monotonic() + within
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = f"; last seen: {await asyncio.to_thread(detail)!r}" if detail is not None else ""
            raise LabTimeout(f"{what}: not within {within:.1f}s{seen}")
        await asyncio.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie (`kill -0` succeeds on zombies; /proc tells them apart)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def children(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc (no psutil)."""
    kids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        for kid in children(todo.pop()):
            out.append(kid)
            todo.append(kid)
    return out


def signal_pids(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def pss_kib(pid: int) -> int:
    """Proportional set size of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Proc:
    """One child process: spawned, awaited, paused, stopped, by PID.

    Subclasses (or callers, via `accessible=`) say what "up" means: an HTTP answer, a socket.
    `start()` may be called again after `stop()` or `kill9()`; the same log file is appended to.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        as_lab_user: bool = False,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        accessible: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.as_lab_user = as_lab_user
        self.env = env
        self.cwd = cwd
        self._accessible = accessible
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def is_running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def is_accessible(self) -> bool:
        return self._accessible() if self._accessible is not None else self.is_running()

    def spawn(self) -> None:
        """Start the process without waiting for it to become accessible."""
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _reap
        user = lab_user() if self.as_lab_user else None
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            user=user,
            group=user,
            extra_groups=[] if user is not None else None,
            start_new_session=True,
        )

    def start(self, max_wait: float = 30.0) -> None:
        self.spawn()
        self.wait_accessible(max_wait)

    def wait_accessible(self, max_wait: float) -> None:
        def up() -> bool:
            if not self.is_running():
                code = self.popen.returncode if self.popen is not None else None
                raise RuntimeError(f"{self.name} exited with {code} before it was up; log {self.log_path}")
            return self.is_accessible()

        wait_until(up, max_wait, f"{self.name} (pid {self.pid}) accessible; log {self.log_path}")

    def stop(self, kill: bool = False, timeout: float = 15.0) -> int | None:
        """SIGTERM (SIGKILL if `kill`), SIGKILL after `timeout`, then reap. Returns the exit code."""
        p = self.popen
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
                p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            except ProcessLookupError:
                p.wait(10)
        self._reap()
        return p.returncode

    def kill9(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self._reap()

    def pause(self) -> None:
        os.kill(self._live_pid(), signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._live_pid(), signal.SIGCONT)

    def _live_pid(self) -> int:
        if self.popen is None or self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} is not running")
        return self.popen.pid

    def _reap(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __repr__(self) -> str:
        return f"<Proc {self.name} pid={self.pid} running={self.is_running()}>"
