"""A listening socket that caps the HTTP connections it holds open and the file descriptors
they cost, so idle clients can never take the descriptors etcd, Patroni and PostgreSQL need.

Hypercorn has no connection limit, and asyncio accepts whatever the kernel queues. asyncio
calls the listening socket's `accept()` and each connection's `recv()`/`send()`/`close()`
as Python methods, so a socket subclass sees every connection open, move and close. At the
cap, a new connection evicts the one that has been quiet the longest (a stuck or idle client,
not a scrape in flight): fresh requests such as `/health` always get through, and descriptors
stay bounded whatever a flood does. Refusing new ones instead would let idle holders lock out
every scrape until they time out.
"""

from __future__ import annotations

import contextlib
import resource
import socket
from collections import OrderedDict
from typing import Any, TypedDict

import structlog

log = structlog.get_logger("http")

MAX_CONNECTIONS = 512
LISTEN_BACKLOG = 1024  # the kernel's queue of connections not yet accepted (no descriptor of ours)
ACCEPT_BATCH = 32  # connections asyncio accepts per loop turn (it uses the listen backlog for it)
SLACK = 128  # evictions still closing (a few turns' worth of batches): beyond, new ones are dropped


def raise_nofile() -> int:
    """Raise the soft descriptor limit to the hard one (systemd and shells start at 1,024);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:  # a container may forbid it: keep the soft one
            log.warning("nofile_not_raised", soft=soft, hard=hard, error=str(e))
    return soft


def connection_cap(nofile: int) -> int:
    """At most half the descriptors go to HTTP clients: the rest stay for etcd, Patroni,
    PostgreSQL, pg_repack's pipes and the logs."""
    return max(8, min(MAX_CONNECTIONS, nofile // 2 - SLACK))


class ConnectionStats(TypedDict):
    """/status `http.connections`."""

    open: int
    cap: int
    accepted: int
    evicted: int
    refused: int


class Gate:
    """Open connections in order of their last activity (least recent first)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: OrderedDict[int, Conn] = OrderedDict()
        self.evicted: set[int] = set()
        self.evictions = 0
        self.refused = 0
        self.accepted = 0

    def admit(self, conn: Conn) -> bool:
        key = id(conn)
        if len(self.open) >= self.cap + SLACK:
            self.refused += 1
            return False
        if len(self.open) - len(self.evicted) >= self.cap:
            self._evict_quietest()
        self.open[key] = conn
        self.accepted += 1
        return True

    def _evict_quietest(self) -> None:
        """The quietest connection not in the middle of a request; failing that, the quietest."""
        victim = next((c for k, c in self.open.items() if k not in self.evicted and not c.busy), None)
        if victim is None:
            victim = next((c for k, c in self.open.items() if k not in self.evicted), None)
        if victim is None:
            return
        self.evicted.add(id(victim))
        self.evictions += 1
        victim.evicted = True
        with contextlib.suppress(OSError):  # wakes its transport, whose next read fails (Conn.recv)
            victim.shutdown(socket.SHUT_RDWR)

    def touch(self, conn: Conn) -> None:
        key = id(conn)
        if key in self.open and key not in self.evicted:
            self.open.move_to_end(key)

    def forget(self, conn: Conn) -> None:
        key = id(conn)
        self.open.pop(key, None)
        self.evicted.discard(key)

    def stats(self) -> ConnectionStats:
        return ConnectionStats(open=len(self.open), cap=self.cap, accepted=self.accepted,
                               evicted=self.evictions, refused=self.refused)


class Conn(socket.socket):
    """An accepted connection that reports its activity and its close to the gate."""

    gate: Gate
    evicted = False
    busy = False  # bytes came in and no answer went out yet: a request in flight (or a partial
    # one, which Hypercorn's keep-alive timeout ends)

    def recv(self, *args: Any) -> bytes:
        if self.evicted:  # a read error makes asyncio close the transport and this socket at once;
            raise ConnectionResetError("evicted")  # a plain EOF would wait out Hypercorn's keep-alive
        data = super().recv(*args)
        self.busy = self.busy or bool(data)
        self.gate.touch(self)
        return data

    def recv_into(self, *args: Any) -> int:
        if self.evicted:
            raise ConnectionResetError("evicted")
        n = super().recv_into(*args)
        self.busy = self.busy or n > 0
        self.gate.touch(self)
        return n

    def send(self, *args: Any) -> int:
        n = super().send(*args)
        self.busy = False
        self.gate.touch(self)
        return n

    def close(self) -> None:
        self.gate.forget(self)
        super().close()


class Listener(socket.socket):
    gate: Gate

    def listen(self, backlog: int = LISTEN_BACKLOG) -> None:
        """asyncio passes one number as the kernel queue and as how many it accepts per loop
        turn (ACCEPT_BATCH): keep the turn small (few evictions at once) and the queue
        deep, so a burst of connects waits in the kernel instead of SYNs being dropped (which
        costs a new client such as /health a 1 s retransmit)."""
        super().listen(max(backlog, LISTEN_BACKLOG))

    def accept(self) -> tuple[socket.socket, Any]:
        while True:
            fd, addr = self._accept()  # type: ignore[attr-defined]
            conn = Conn(self.family, self.type, self.proto, fileno=fd)
            conn.gate = self.gate
            if self.gate.admit(conn):
                if self.family in (socket.AF_INET, socket.AF_INET6):
                    # asyncio sets TCP_NODELAY only when proto is IPPROTO_TCP (ours is 0): without
                    # it Nagle and delayed ACKs held every /metrics answer ~40 ms (bench/README.md)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return conn, addr
            socket.socket.close(conn)  # over cap + slack: drop it, take the next one
