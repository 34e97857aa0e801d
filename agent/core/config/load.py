"""Loading: TOML -> the schema's dataclasses, key by key against the field types (an unknown key,
a bare number for a duration, a wrong type: each a `ConfigError` naming the key), file names
anchored to the config file's directory, then every table's own `check` and every secret file's mode."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from agent.core.config.fields import ConfigError, Duration, Section
from agent.core.config.schema import Config
from agent.core.config.secrets import check_secret_file

DEFAULT_PATH = Path("/etc/pg-node-agent/agent.toml")


def load(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError("", f"cannot read {p}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("", f"{p}: not valid TOML: {e}") from None
    cfg = parse(data)
    cfg = dataclasses.replace(anchor_paths(cfg, p.absolute().parent), source=str(p))
    validate(cfg)
    return cfg


def anchor_paths(cfg: Config, base: Path) -> Config:
    """Relative file names mean the config file's directory, not wherever a CLI command was run
    from; a relative secret under systemd stays a credential name ($CREDENTIALS_DIRECTORY)."""
    creds = bool(os.environ.get("CREDENTIALS_DIRECTORY"))
    changes: dict[str, Any] = {}
    for sf in dataclasses.fields(Config):
        section = getattr(cfg, sf.name)
        if not dataclasses.is_dataclass(section):
            continue
        fixed = {f.name: str(base / v) for f in dataclasses.fields(section)
                 if f.metadata.get("path") and (v := getattr(section, f.name)) and not os.path.isabs(v)
                 and not (f.metadata["path"] == "secret" and creds)}
        if fixed:
            changes[sf.name] = dataclasses.replace(section, **fixed)  # type: ignore[type-var]
    return dataclasses.replace(cfg, **changes)


def parse(data: dict[str, Any]) -> Config:
    return typing.cast(Config, _build(Config, data, ""))


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a table, got {_tname(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for key in data:
        if key not in fields:
            raise ConfigError(_join(path, key), "unknown key")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(path, name)
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "required key is missing")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(typing.cast(type, tp), value, key)
    if tp is Duration:  # a bare number is refused: seconds or milliseconds would be a guess
        if not isinstance(value, str):
            raise ConfigError(key, f'expected a duration string like "30s", got {_tname(value)}')
        try:
            return Duration.parse(value)
        except ValueError as e:
            raise ConfigError(key, str(e)) from None
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(key, f"expected an array, got {_tname(value)}")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {_tname(value)}")
        return {k: _coerce(vt, v, _join(key, k)) for k, v in value.items()}
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(key, f"expected {_tname_of(tp)}, got {_tname(value)}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _tname(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "an array",
            dict: "a table"}.get(type(v), type(v).__name__)


def _tname_of(tp: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def validate(cfg: Config) -> None:
    """Each table's `check`, depth first in file order, then the secret files' modes."""
    secrets: list[tuple[str, str]] = []

    def walk(section: Any, key: str) -> None:
        if isinstance(section, Section):
            if key:
                section.check(key)
            for f in dataclasses.fields(section):  # type: ignore[arg-type]
                value, sub = getattr(section, f.name), _join(key, f.name)
                if f.metadata.get("path") == "secret" and value:
                    secrets.append((sub, value))
                walk(value, sub)
                for i, v in enumerate(value if isinstance(value, list) else ()):
                    walk(v, f"{sub}[{i}]")

    walk(cfg, "")
    for key, path in secrets:
        check_secret_file(path, key)
