"""Secrets: a value that hides itself, and the files it is read from (mode checked at load, a
relative name looked up among systemd's credentials)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.core.config.fields import ConfigError


class Secret:
    """A password or token. Not a str: repr, str and format hide it, so a log line, a traceback or
    a dict it sits in cannot show it; `reveal()` is called only where it is sent."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


def resolve_secret_path(path: str) -> Path:
    """A relative secret path is looked up in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)."""
    p = Path(path)
    cred = os.environ.get("CREDENTIALS_DIRECTORY")
    if not p.is_absolute() and cred:
        return Path(cred) / p
    return p


def check_secret_file(path: str, key: str) -> None:
    p = resolve_secret_path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise ConfigError(key, f"cannot read secret file {p}: {e.strerror}") from None
    if st.st_mode & stat.S_IROTH or st.st_mode & stat.S_IWOTH:
        raise ConfigError(key, f"secret file {p} is readable by others (mode {stat.S_IMODE(st.st_mode):o}); "
                               "chmod 0600 or 0640")


def read_secret(path: str) -> Secret:
    return Secret(resolve_secret_path(path).read_text().strip())
