"""The agent's HTTP port against hostile clients, on a real agent process and a real etcd:
idle holders past the descriptor limit, and malformed input of every kind."""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import AgentProc

from agent.lab.etcd import Etcd
from agent.lab.procs import wait_until

pytestmark = pytest.mark.integration


def hold(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        out.append(s)
    return out


def test_idle_holders_past_the_descriptor_limit_leave_health_and_etcd_alone(run_dir: Path, etcd: Etcd) -> None:
    scope = f"s{uuid.uuid4().hex[:8]}"
    a = AgentProc(run_dir, etcd.url, scope=scope, nofile=(256, 256)).start().wait_ready()
    held: list[socket.socket] = []
    try:
        size0 = a.log_path.stat().st_size
        held = hold(a.port, 600)  # more than twice the agent's 256 descriptors
        wait_until(lambda: a.status().get("http", {}).get("connections", {}).get("accepted", 0) >= 600, 20,
                   "the agent took every connection", detail=a.tail)
        for _ in range(5):
            assert a.get("/health")[0] == 200
            assert a.metric("pgnode_dcs_up") == 1.0
            assert a.fds() < 256
        # the leader watch still sees etcd (it needs descriptors of its own)
        etcd.put(f"/service/{scope}/leader", "node9")
        wait_until(lambda: a.status().get("state", {}).get("leader") == "node9", 10, "leader seen", detail=a.tail)
        assert a.status()["http"]["connections"]["open"] <= a.status()["http"]["connections"]["cap"] + 128
        events = [e for e in a.logs() if e.get("event") == "dcs_availability_changed"]
        assert all(e["new"] for e in events), events
        assert a.log_path.stat().st_size - size0 < 100_000
    finally:
        for s in held:
            s.close()
        a.stop()


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one(run_dir: Path, etcd: Etcd) -> None:
    a = AgentProc(run_dir, etcd.url, scope=f"s{uuid.uuid4().hex[:8]}", nofile=(256, 4096)).start()
    try:
        assert a.p is not None
        limits = Path(f"/proc/{a.p.pid}/limits").read_text()
        line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"]
    finally:
        a.stop()


# ----------------------------------------------------------------------------- fuzzed input

def client_hello() -> bytes:
    """A real TLS ClientHello, as a TLS client would send it to the plain port."""
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="agent")
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def cases() -> list[tuple[str, bytes]]:
    rnd = random.Random(17)
    fixed = [
        ("garbage request line", b"GARBAGE\r\n\r\n"),
        ("no target", b"GET\r\n\r\n"),
        ("bad version", b"GET /health HTTP/1.1x\r\nHost: a\r\n\r\n"),
        ("nul bytes", b"GET /\x00health HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("binary", bytes(range(256)) * 4),
        ("huge target", b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("huge header", b"GET /health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 1_000_000 + b"\r\n\r\n"),
        ("many headers", b"GET /health HTTP/1.1\r\nHost: a\r\n" + b"X-A: 1\r\n" * 20_000 + b"\r\n"),
        ("header without colon", b"GET /health HTTP/1.1\r\nHost a\r\n\r\n"),
        ("bad chunk size", b"POST /health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("chunk longer than said", b"POST /health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"2\r\nabcdef\r\n0\r\n\r\n"),
        ("huge chunk", b"POST /health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"fffffffffffffffffff\r\nabc"),
        ("te and cl", b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"0\r\n\r\n"),
        ("negative length", b"POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n"),
        ("two hosts", b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("no host 1.1", b"GET /health HTTP/1.1\r\n\r\n"),
        ("tls hello", client_hello()),
        ("lone cr", b"GET /health HTTP/1.1\rHost: a\r\r"),
        ("nul before the method", b"\x00\xffGET /health HTTP/1.1\nHost: a\n\n"),
    ]
    methods = [b"GET", b"POST", b"\x16\x03", b"G\xffT", b"", b"OPTIONS"]
    for i in range(40):  # mutated request lines and headers
        line = rnd.choice(methods) + b" " + bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 60)))
        hdrs = b"".join(bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 80))) + b"\r\n"
                        for _ in range(rnd.randrange(0, 5)))
        fixed.append((f"mutated {i}", line + b" HTTP/1.1\r\n" + hdrs + b"\r\n"))
    return fixed


@pytest.fixture(scope="module")
def fuzz_agent(tmp_path_factory: pytest.TempPathFactory, etcd: Etcd) -> Iterator[AgentProc]:
    a = AgentProc(tmp_path_factory.mktemp("fuzz"), etcd.url, scope=f"s{uuid.uuid4().hex[:8]}").start().wait_ready()
    yield a
    a.stop()


@pytest.mark.parametrize("name,payload", cases(), ids=[c[0] for c in cases()])
def test_malformed_input_gets_4xx_or_is_dropped_and_the_agent_answers_on(
        fuzz_agent: AgentProc, name: str, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", fuzz_agent.port), timeout=15) as s:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(payload)  # dropped while we were still sending: allowed
        got = b""
        try:
            while chunk := s.recv(65536):
                got += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    status = got.split(b"\r\n", 1)[0]
    assert got == b"" or (status.startswith(b"HTTP/1.1 4") and int(status.split()[1]) in range(400, 500)), \
        (name, got[:200])
    assert fuzz_agent.get("/health")[0] == 200
    assert fuzz_agent.p is not None and fuzz_agent.p.poll() is None
