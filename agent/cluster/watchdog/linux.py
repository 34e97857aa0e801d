"""A Linux watchdog device of the agent's own (e.g. a second softdog), as Patroni drives one:
open O_WRONLY, WDIOC_SETTIMEOUT, keepalive by writing, magic close 'V' on a clean stop."""

from __future__ import annotations

import errno
import fcntl
import os
import struct

import structlog

from agent.cluster.watchdog.base import Device
from agent.core.config import WATCHDOG_DEVICE_UNIT_HINT, ConfigError

log = structlog.get_logger("watchdog")

# <linux/watchdog.h>: _IOWR('W', 6, int) and _IOR('W', 7, int)
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707


class WatchdogBusy(Exception):
    pass


class LinuxDevice(Device):
    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = int(timeout)
        self._fd: int | None = None

    @property
    def describe(self) -> str:
        return self.path

    def open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY)
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise WatchdogBusy(f"{self.path} is held by another process (Patroni?)") from e
            # Retrying cannot help (a sandbox or permissions): a config error, exit 78, no restart loop.
            raise ConfigError("watchdog.device", f"cannot open {self.path}: {e.strerror}; "
                              + WATCHDOG_DEVICE_UNIT_HINT.format(dev=self.path)) from None
        try:
            fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("I", self.timeout))
        except OSError as e:  # not a watchdog driver (ENOTTY) or no SETTIMEOUT support
            log.warning("watchdog_timeout_not_set", device=self.path, error=e.strerror,
                        timeout_seconds=self.timeout)

    def keepalive(self) -> None:
        if self._fd is not None:
            os.write(self._fd, b"1")

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.write(self._fd, b"V")
            finally:
                os.close(self._fd)
                self._fd = None

    def get_timeout(self) -> float | None:
        if self._fd is None:
            return None
        try:
            buf = fcntl.ioctl(self._fd, WDIOC_GETTIMEOUT, struct.pack("I", 0))
            return float(struct.unpack("I", buf)[0])
        except OSError:
            return float(self.timeout)
