"""A hostile client for the agent's HTTP port, on loopback and bounded: it holds `holders`
idle connections (re-opening those the agent closes, at most `reopen_rate` a second) and sends
`rate` wrong-password requests a second over `workers` keep-alive connections. It runs in a
process of its own (this file run as a script), so neither its load nor the GIL slows the test
or bench script that drives the lab and probes the agent meanwhile; its figures come back as
JSON on its stdout when it is stopped (SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class FloodStats:
    answers: Counter[int] = field(default_factory=Counter)  # status code -> count
    errors: int = 0        # flood requests that failed (connection closed, refused, timeout)
    opened: int = 0        # idle connections opened (first time and re-opened)
    closed_by_agent: int = 0
    held_max: int = 0


class Flood:
    """The driver's side: starts the flood process, stops it and reads its figures."""

    def __init__(self, port: int, *, holders: int = 5000, rate: float = 1000.0, workers: int = 100,
                 reopen_rate: float = 200.0, user: str = "prom", password: str = "wrong") -> None:  # noqa: S107
        self.argv = [sys.executable, __file__, "--port", str(port), "--holders", str(holders),
                     "--rate", str(rate), "--workers", str(workers), "--reopen-rate", str(reopen_rate),
                     "--user", user, "--password", password]
        self.stats = FloodStats()
        self._p: subprocess.Popen[str] | None = None

    def start(self) -> Flood:
        self._p = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        return self

    def stop(self) -> FloodStats:
        if self._p is not None and self._p.poll() is None:
            self._p.send_signal(signal.SIGTERM)
            try:
                out, _ = self._p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self._p.kill()
                out, _ = self._p.communicate()
            if not out.strip():
                raise RuntimeError(f"the flood process ended with {self._p.returncode} and no figures")
            got = json.loads(out.strip().splitlines()[-1])
            got["answers"] = Counter({int(k): v for k, v in got["answers"].items()})
            self.stats = FloodStats(**got)
        return self.stats

    def __enter__(self) -> Flood:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Flooder:
    def __init__(self, port: int, *, holders: int, rate: float, workers: int, reopen_rate: float,
                 user: str, password: str) -> None:
        self.port = port
        self.holders = holders
        self.rate = rate
        self.workers = workers
        self.reopen_rate = reopen_rate
        self.auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.stats = FloodStats()
        self.stopping = False  # loops check it too: wait_for on 3.11 can swallow a cancellation

    async def run(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = self.holders + self.workers + 256
        if soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        parent = os.getppid()
        tasks = [asyncio.create_task(self._hold())]
        tasks += [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        while not stop.is_set() and os.getppid() == parent:  # the driver died: stop too
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        self.stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=10)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            pair = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
        except (TimeoutError, OSError):
            return None
        self.stats.opened += 1
        return pair

    async def _hold(self) -> None:
        held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for i in range(0, self.holders, 100):  # open them all, 100 handshakes at a time
                got = await asyncio.gather(*(self._open() for _ in range(min(100, self.holders - i))))
                held += [p for p in got if p is not None]
            while not self.stopping:
                self.stats.held_max = max(self.stats.held_max, len(held))
                alive = []
                for r, w in held:
                    if r.at_eof() or r.exception() is not None or w.is_closing():
                        self.stats.closed_by_agent += 1
                        w.close()
                    else:
                        alive.append((r, w))
                held = alive
                budget = int(self.reopen_rate)
                while len(held) < self.holders and budget > 0:
                    budget -= 1
                    pair = await self._open()
                    if pair is not None:
                        held.append(pair)
                await asyncio.sleep(1.0)
        finally:
            for _, w in held:
                w.close()

    async def _worker(self) -> None:
        req = (f"GET /metrics HTTP/1.1\r\nHost: agent\r\nAuthorization: Basic {self.auth}\r\n\r\n").encode()
        period = self.workers / self.rate
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        next_at = time.monotonic()
        while not self.stopping:
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            try:
                if conn is None or conn[0].at_eof():
                    conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
                rd, wr = conn
                wr.write(req)
                head = await asyncio.wait_for(rd.readuntil(b"\r\n\r\n"), 10)
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await asyncio.wait_for(rd.readexactly(length), 10)
                self.stats.answers[status] += 1
            except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError, IndexError):
                self.stats.errors += 1
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn[1].close()
                conn = None


def main() -> None:
    ap = argparse.ArgumentParser()
    for name, typ in (("port", int), ("holders", int), ("rate", float), ("workers", int),
                      ("reopen-rate", float), ("user", str), ("password", str)):
        ap.add_argument(f"--{name}", type=typ, required=True)
    a = ap.parse_args()
    f = _Flooder(a.port, holders=a.holders, rate=a.rate, workers=a.workers, reopen_rate=a.reopen_rate,
                 user=a.user, password=a.password)
    asyncio.run(f.run())
    print(json.dumps({**asdict(f.stats), "answers": dict(f.stats.answers)}), flush=True)  # noqa: T201 (read by Flood.stop)


if __name__ == "__main__":
    main()
