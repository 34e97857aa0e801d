"""What the schema is made of: `ConfigError` (always naming the key), `Duration`, and `doc`, which
declares a field with its meaning."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from typing import Any, Literal

EX_CONFIG = 78


class ConfigError(Exception):
    """A bad configuration, always naming the key path (`repack.windows[1].cron`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class Duration(float):
    """Seconds, written in the file as "500ms", "30s", "5m", "2h", "1d" (or "1h30m")."""

    _PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
    _UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

    @classmethod
    def parse(cls, text: str) -> Duration:
        t = text.strip()
        pos, total = 0, 0.0
        for m in cls._PART.finditer(t):
            if m.start() != pos:
                break
            total += float(m.group(1)) * cls._UNIT[m.group(2)]
            pos = m.end()
        if not t or pos != len(t):
            raise ValueError(f'invalid duration "{text}" (use e.g. "500ms", "30s", "5m", "2h")')
        return cls(total)


PathKind = Literal["", "file", "secret"]
_PATH_DOC = {
    "file": "A relative path is taken from the config file's directory.",
    "secret": "A relative name is looked up in $CREDENTIALS_DIRECTORY when systemd hands credentials over "
              "(LoadCredential=), else taken from the config file's directory.",
}


def doc(text: str, default: Any = dataclasses.MISSING, *, path: PathKind = "", **kw: Any) -> Any:
    """A field with its meaning attached (rendered into docs/configuration.md). `path` marks a
    file name that `load` anchors to the config file's directory; a "secret" one is also checked
    for its mode."""
    meta = {"doc": f"{text} {_PATH_DOC[path]}" if path else text, "path": path}
    if isinstance(default, list | dict):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


class Section:
    """A table of the file. `check` holds the rules its fields' types cannot say; the loader calls
    it with the table's key path after the whole file has been read."""

    __slots__ = ()

    def check(self, key: str) -> None:
        """No rule beyond the field types."""


def positive(key: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(key, "must be positive")


URL = re.compile(r"https?://[^/\s]+/?")
