"""Free TCP ports on 127.0.0.1.

A port is free when the kernel hands it out for an ephemeral bind. Ports given out once are
remembered for the life of the process, so two controllers started before either binds never
receive the same port.
"""

from __future__ import annotations

import socket
import threading

_given: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError("no free port on 127.0.0.1 after 100 tries")


def free_ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]
