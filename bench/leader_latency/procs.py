"""Process bookkeeping: children started in their own session and stopped TERM then KILL, pipes
read and stamped as lines arrive, and the agent's /proc figures."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.leader_latency.net import hostport, now_ns


@dataclass
class Cleanup:
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    files: list[IO[bytes]] = field(default_factory=list)

    def spawn(
        self, name: str, argv: Sequence[str], log: Path | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        out: Any = subprocess.PIPE
        if log is not None:
            f = log.open("ab")
            self.files.append(f)
            out = f
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", out)
        kw.setdefault("stderr", subprocess.STDOUT if log is not None else None)
        p = subprocess.Popen(list(argv), start_new_session=True, **kw)
        self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGKILL)
                p.wait(5)

    def all(self) -> None:
        for _, p in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(p)
        self.procs.clear()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        self.namespaces.clear()
        for f in self.files:
            f.close()


class Seen:
    """First monotonic time each consumer saw each value, fed by reader threads."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.at: dict[str, dict[str, int]] = {}
        self.extra: dict[str, dict[str, tuple[int, float]]] = {}  # agent: value -> (scrape start, observed)

    def record(self, consumer: str, value: str, t: int) -> None:
        with self.cond:
            self.at.setdefault(consumer, {}).setdefault(value, t)
            self.cond.notify_all()

    def wait(self, consumers: Sequence[str], value: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(value in self.at.get(c, {}) for c in consumers):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True


def reader(stream: IO[bytes], on_line: Callable[[int, str], None]) -> threading.Thread:
    """Read a pipe with os.read (no userspace buffering delay); stamp each line when it arrives."""

    def run() -> None:
        fd = stream.fileno()
        pending = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            t = now_ns()
            if not chunk:
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                on_line(t, line.decode(errors="replace"))

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def http_json(url: str) -> dict[str, Any]:
    host, port = hostport(url.split("/", 3)[0] + "//" + url.split("/", 3)[2])
    c = http.client.HTTPConnection(host, port, timeout=2)
    try:
        c.request("GET", "/" + url.split("/", 3)[3])
        r = c.getresponse()
        return json.loads(r.read()) if r.status == 200 else {}
    except (OSError, ValueError):
        return {}
    finally:
        c.close()


def wait_for(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s")
        time.sleep(0.05)


def proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def cpu_seconds(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
