"""A watchdog device has four verbs; NullDevice lets callers never ask "is there one?"."""

from __future__ import annotations

from abc import ABC, abstractmethod


class Device(ABC):
    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def keepalive(self) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Disarm cleanly (magic close) on a clean stop."""

    @abstractmethod
    def get_timeout(self) -> float | None: ...

    @property
    def describe(self) -> str:
        return type(self).__name__


class NullDevice(Device):
    def open(self) -> None:
        pass

    def keepalive(self) -> None:
        pass

    def close(self) -> None:
        pass

    def get_timeout(self) -> float | None:
        return None
