"""Network faults between a client and etcd, and CPU saturation.

`TcpProxy` is an asyncio proxy running in its own thread and event loop, so sync tests and async
tests drive it the same way. `blackhole()` stops moving bytes (connections stay open, new ones are
accepted but not forwarded; the kernel buffers fill, as on a partitioned link), `heal()` lets the
held bytes flow again, and `reset()` closes every open connection with a TCP RST.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from agent.lab.ports import free_port

T = TypeVar("T")


class TcpProxy:
    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", listen_port: int | None = None
    ) -> None:
        self.target = (target_host, target_port)
        self.port = listen_port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"tcp-proxy-{self.port}", daemon=True
        )
        self._flowing = asyncio.Event()  # binds to the proxy's loop on first use
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.StreamWriter, asyncio.StreamWriter | None] = {}  # client -> upstream
        self.connections_total = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- control, from any thread ---

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def blackhole(self) -> None:
        self._call(self._set_flowing(False))

    def heal(self) -> None:
        self._call(self._set_flowing(True))

    def reset(self) -> int:
        """RST every open connection; returns how many were reset."""
        return self._call(self._reset())

    def open_connections(self) -> int:
        return self._call(self._count())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- inside the proxy's loop ---

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _set_flowing(self, on: bool) -> None:
        if on:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _count(self) -> int:
        return len(self._conns)

    async def _reset(self) -> int:
        conns = list(self._conns.items())
        self._conns.clear()
        for client, upstream in conns:
            for w in (client, upstream):
                if w is None:
                    continue
                sock = w.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort()
        return len(conns)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset()
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        self._conns[c_writer] = None
        try:
            await self._flowing.wait()  # a blackholed link: accepted by the kernel, never connected through
            u_reader, u_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._conns.pop(c_writer, None)
            c_writer.transport.abort()
            return
        if c_writer not in self._conns:  # reset while connecting
            u_writer.transport.abort()
            return
        self._conns[c_writer] = u_writer
        await asyncio.gather(self._pipe(c_reader, u_writer), self._pipe(u_reader, c_writer))
        self._conns.pop(c_writer, None)
        for w in (c_writer, u_writer):
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()  # bytes read just before a blackhole are held, not delivered
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, asyncio.IncompleteReadError):
            writer.transport.abort()


_BURN = "import time,sys\nend=time.monotonic()+float(sys.argv[1])\nwhile time.monotonic()<end: pass\n"


@contextlib.contextmanager
def cpu_burn(seconds: float, procs: int = 2) -> Iterator[list[int]]:
    """Saturate `procs` CPUs for at most `seconds` (busy loops, killed on exit); yields their PIDs."""
    ps = [subprocess.Popen([sys.executable, "-c", _BURN, str(seconds)]) for _ in range(procs)]
    try:
        yield [p.pid for p in ps]
    finally:
        for p in ps:
            p.kill()
        for p in ps:
            p.wait(10)
