"""Run a subprocess from an argv list under a deadline; stop it with a signal, then KILL."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import anyio.abc
import structlog

log = structlog.get_logger("proc")


@dataclass(frozen=True, slots=True)
class Completed:
    returncode: int | None  # None: killed at the deadline
    stdout: str
    stderr: str
    timed_out: bool


async def run(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
              max_output: int = 1 << 20, on_line: Callable[[str, str], None] | None = None,
              grace: float = 2.0, stop_signal: int = signal.SIGTERM) -> Completed:
    """Run argv, collect stdout/stderr (capped), hand each line to `on_line(stream, line)`."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    out: dict[str, list[str]] = {"stdout": [], "stderr": []}
    sizes = {"stdout": 0, "stderr": 0}
    timed_out = False
    async with await anyio.open_process(list(argv), env=full_env, start_new_session=True) as p:

        async def pump(name: str, stream: anyio.abc.ByteReceiveStream | None) -> None:
            await pump_lines(stream, lambda line: _take(name, line))

        def _take(name: str, line: str) -> None:
            if sizes[name] < max_output:
                out[name].append(line)
                sizes[name] += len(line) + 1
            if on_line is not None:
                on_line(name, line)

        async with anyio.create_task_group() as tg:
            tg.start_soon(pump, "stdout", p.stdout)
            tg.start_soon(pump, "stderr", p.stderr)
            with anyio.move_on_after(timeout) as scope:
                await p.wait()
            if scope.cancelled_caught:
                timed_out = True
                await stop(p, stop_signal, grace)
    return Completed(None if timed_out else p.returncode, "\n".join(out["stdout"]),
                     "\n".join(out["stderr"]), timed_out)


async def pump_lines(stream: anyio.abc.ByteReceiveStream | None, on_line: Callable[[str], None]) -> None:
    """Hand a child's output to `on_line` line by line as it arrives (the last line may lack \\n)."""
    if stream is None:
        return
    buf = b""
    async for chunk in stream:
        buf += chunk
        *done, buf = buf.split(b"\n")
        for raw in done:
            on_line(raw.decode(errors="replace"))
    if buf:
        on_line(buf.decode(errors="replace"))


async def stop(p: anyio.abc.Process, sig: int = signal.SIGTERM, grace: float = 2.0) -> None:
    """Signal the process group, wait `grace`, then SIGKILL the group (children included)."""
    with anyio.CancelScope(shield=True):
        _killpg(p.pid, sig)
        with anyio.move_on_after(grace):
            await p.wait()
            return
        _killpg(p.pid, signal.SIGKILL)
        await p.wait()


def _killpg(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
