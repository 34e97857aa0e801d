"""The HTTP listener holds a bounded number of connections: idle holders are evicted (quietest
first) so a fresh /health still gets through, and the descriptor limit is raised at start."""

from __future__ import annotations

import resource
import socket

import anyio
import anyio.lowlevel
import pytest

from agent.core import conns, http
from tests.unit.core.test_http import api

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def get(port: int, path: str) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as s:
        await s.send(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        out = b""
        with anyio.move_on_after(10):
            while True:
                try:
                    out += await s.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
        return out


async def test_idle_holders_beyond_the_cap_are_evicted_and_health_still_answers() -> None:
    sock = http.bind("127.0.0.1:0", nofile=300)
    gate = sock.gate
    assert gate.cap == 22
    port = sock.getsockname()[1]
    a, _ = api()
    holders: list[socket.socket] = []
    async with anyio.create_task_group() as tg:
        await tg.start(http.serve, a, sock)
        try:
            for _ in range(400):
                c = socket.create_connection(("127.0.0.1", port))
                holders.append(c)
                await anyio.lowlevel.checkpoint()  # let the loop accept as we go, like a real flood
            while gate.accepted + gate.refused < 400:
                await anyio.sleep(0.01)
            assert len(gate.open) <= gate.cap + conns.SLACK
            assert gate.evictions > 0 and gate.evictions + gate.refused >= 400 - gate.cap - conns.SLACK
            assert (await get(port, "/health")).startswith(b"HTTP/1.1 200")
            # the evicted holders see their connection closed by the agent
            closed = 0
            for c in holders:
                c.setblocking(False)
                try:
                    closed += c.recv(1) == b""
                except BlockingIOError:
                    pass
                except ConnectionResetError:
                    closed += 1
            assert closed >= 400 - gate.cap - conns.SLACK
        finally:
            for c in holders:
                c.close()
            tg.cancel_scope.cancel()


async def test_a_closed_connection_leaves_the_gate() -> None:
    sock = http.bind("127.0.0.1:0", nofile=300)
    a, _ = api()
    async with anyio.create_task_group() as tg:
        await tg.start(http.serve, a, sock)
        for _ in range(20):
            assert (await get(sock.getsockname()[1], "/health")).startswith(b"HTTP/1.1 200")
        while sock.gate.open:
            await anyio.sleep(0.01)
        assert sock.gate.accepted == 20 and sock.gate.evictions == 0
        tg.cancel_scope.cancel()


def test_soft_nofile_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert conns.raise_nofile() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_cap_leaves_half_the_descriptors_to_the_rest() -> None:
    assert conns.connection_cap(1024) + conns.SLACK <= 512
    assert conns.connection_cap(1 << 20) == conns.MAX_CONNECTIONS


async def test_a_request_in_flight_outlives_a_burst_of_idle_holders() -> None:
    import base64

    import bcrypt

    sock = http.bind("127.0.0.1:0", nofile=300)
    port = sock.getsockname()[1]
    a, _ = api({"ops": bcrypt.hashpw(b"pw", bcrypt.gensalt(12)).decode()})  # a slow check: in flight a while
    holders: list[socket.socket] = []
    async with anyio.create_task_group() as tg:
        await tg.start(http.serve, a, sock)
        try:
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                auth = base64.b64encode(b"ops:pw").decode()
                await s.send(f"GET /health HTTP/1.1\r\nHost: t\r\nAuthorization: Basic {auth}\r\n\r\n".encode())
                while sock.gate.accepted < 1 or not any(c.busy for c in sock.gate.open.values()):
                    await anyio.sleep(0.001)
                for _ in range(300):  # many times the cap, while the bcrypt check runs
                    holders.append(socket.create_connection(("127.0.0.1", port)))
                    await anyio.lowlevel.checkpoint()
                with anyio.fail_after(30):
                    assert (await s.receive()).startswith(b"HTTP/1.1 200")
            assert sock.gate.evictions > 0
        finally:
            for c in holders:
                c.close()
            tg.cancel_scope.cancel()


async def test_a_large_answer_is_not_held_back_by_nagle_and_delayed_acks() -> None:
    """A keep-alive client asking for a body of several segments got each answer ~40 ms late
    (Nagle's algorithm waiting for the client's delayed ACK) until accepted sockets had
    TCP_NODELAY; the accepted socket itself is checked, not a timing."""
    sock = http.bind("127.0.0.1:0", nofile=300)
    a, _ = api()
    async with anyio.create_task_group() as tg:
        await tg.start(http.serve, a, sock)
        c = socket.create_connection(sock.getsockname())
        try:
            while not sock.gate.open:
                await anyio.sleep(0.01)
            (conn,) = sock.gate.open.values()
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            c.close()
            tg.cancel_scope.cancel()
