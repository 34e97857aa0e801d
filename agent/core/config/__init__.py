"""The agent's configuration: one TOML file into frozen dataclasses. Any problem is a
`ConfigError` that names the key path; the CLI turns it into exit code 78 (EX_CONFIG).

`schema` declares every key once (type, default, meaning) with each table's checks beside its
fields; `load` reads a file into it; `secrets` holds the hidden values and their files;
`reference` writes docs/configuration.md and the example file from the schema."""

from agent.core.config.fields import EX_CONFIG, ConfigError, Duration
from agent.core.config.load import DEFAULT_PATH, anchor_paths, load, parse, validate
from agent.core.config.reference import example_toml, reference_markdown, sections
from agent.core.config.schema import (
    WATCHDOG_DEVICE_UNIT_HINT,
    ArchiveConfig,
    Config,
    EtcdConfig,
    HookConfig,
    HttpConfig,
    LoggingConfig,
    NodeConfig,
    PatroniConfig,
    PostgresConfig,
    RepackConfig,
    RepackWindow,
    SamplerConfig,
    WatchdogConfig,
    check_watchdog_device,
)
from agent.core.config.secrets import Secret, check_secret_file, read_secret, resolve_secret_path

__all__ = [
    "DEFAULT_PATH", "EX_CONFIG", "WATCHDOG_DEVICE_UNIT_HINT", "ArchiveConfig", "Config", "ConfigError", "Duration",
    "EtcdConfig", "HookConfig", "HttpConfig", "LoggingConfig", "NodeConfig", "PatroniConfig", "PostgresConfig",
    "RepackConfig", "RepackWindow", "SamplerConfig", "Secret", "WatchdogConfig", "anchor_paths",
    "check_secret_file", "check_watchdog_device", "example_toml", "load", "parse", "read_secret",
    "reference_markdown", "resolve_secret_path", "sections", "validate",
]
