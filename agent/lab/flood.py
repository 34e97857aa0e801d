"""A hostile client for the agent's HTTP port, on loopback and bounded: it holds `holders`
idle connections (re-opening those the agent closes, at most `reopen_rate` a second) and sends
`rate` wrong-password requests a second over `workers` keep-alive connections. It runs in a
thread with its own event loop, so a test or bench script drives the lab meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import resource
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FloodStats:
    answers: Counter[int] = field(default_factory=Counter)  # status code -> count
    errors: int = 0        # flood requests that failed (connection closed, refused, timeout)
    opened: int = 0        # idle connections opened (first time and re-opened)
    closed_by_agent: int = 0
    held_max: int = 0


class Flood:
    def __init__(self, port: int, *, holders: int = 5000, rate: float = 1000.0, workers: int = 25,
                 reopen_rate: float = 200.0, user: str = "prom", password: str = "wrong") -> None:  # noqa: S107
        self.port = port
        self.holders = holders
        self.rate = rate
        self.workers = workers
        self.reopen_rate = reopen_rate
        self.auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.stats = FloodStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Flood:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = self.holders + self.workers + 256
        if soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="flood", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> FloodStats:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        return self.stats

    def __enter__(self) -> Flood:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _main(self) -> None:
        tasks = [asyncio.create_task(self._hold())]
        tasks += [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        await asyncio.to_thread(self._stop.wait)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

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
            while True:
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
        while True:
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
