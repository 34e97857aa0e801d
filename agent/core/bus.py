"""Fan-out of events to subscribers over bounded memory streams.

A slow subscriber must not stall the source: when its buffer is full the event is dropped
*for that subscriber only* and it receives `Lagged(n)` before the next event it does get,
so it knows to re-read the current NodeState instead of trusting a stale sequence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from agent.core.events import Event


@dataclass(frozen=True, slots=True)
class Lagged:
    dropped: int


@dataclass
class _Sub:
    send: MemoryObjectSendStream[Event | Lagged]
    dropped: int = 0


@dataclass
class Bus:
    buffer: int = 256
    _subs: list[_Sub] = field(default_factory=list)

    def publish(self, ev: Event) -> None:
        for sub in list(self._subs):
            try:
                if sub.dropped:
                    sub.send.send_nowait(Lagged(sub.dropped))
                    sub.dropped = 0
                sub.send.send_nowait(ev)
            except anyio.WouldBlock:
                sub.dropped += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subs.remove(sub)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[MemoryObjectReceiveStream[Event | Lagged]]:
        send, recv = anyio.create_memory_object_stream[Event | Lagged](self.buffer)
        sub = _Sub(send)
        self._subs.append(sub)
        try:
            async with recv:
                yield recv
        finally:
            if sub in self._subs:
                self._subs.remove(sub)
            send.close()
