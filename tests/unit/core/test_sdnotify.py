from __future__ import annotations

import os
import socket
import uuid

import pytest

from agent.core.sdnotify import Notifier, watchdog_period


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"pgnode-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        n = Notifier("@" + name)
        assert n.send("READY=1", "STATUS=ok")
        assert s.recv(100) == b"READY=1\nSTATUS=ok"
        n.close()


def test_notify_without_socket_is_a_noop() -> None:
    assert Notifier("").send("READY=1") is False


def test_watchdog_period_ignores_another_pids_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_period() == 4.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert watchdog_period() is None
