"""The agent's configuration: one TOML file into frozen dataclasses.

Every key is declared once, here, as a dataclass field with a default and a one-line meaning
(`doc`). The loader, the example file test and `docs/configuration.md` all read these fields,
so the three cannot drift apart. Any problem is a `ConfigError` that names the key path; the
CLI turns it into exit code 78 (EX_CONFIG).
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

EX_CONFIG = 78
DEFAULT_PATH = Path("/etc/pg-node-agent/agent.toml")


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


PathKind = Literal["", "file", "secret"]
_PATH_DOC = {
    "file": "A relative path is taken from the config file's directory.",
    "secret": "A relative name is looked up in $CREDENTIALS_DIRECTORY when systemd hands credentials over "
              "(LoadCredential=), else taken from the config file's directory.",
}


def doc(text: str, default: Any = dataclasses.MISSING, *, path: PathKind = "", **kw: Any) -> Any:
    """A field with its meaning attached (rendered into docs/configuration.md). `path` marks a
    file name that `load` anchors to the config file's directory."""
    meta = {"doc": f"{text} {_PATH_DOC[path]}" if path else text, "path": path}
    if isinstance(default, list | dict):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    name: str = doc("This node's Patroni member name (Patroni `name`). Required.")
    state_dir: str = doc(
        "Directory for persistent state (sampler watermark and counters). "
        "Default: $STATE_DIRECTORY (systemd StateDirectory=) or /var/lib/pg-node-agent.",
        "",
        path="file",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class PatroniConfig:
    url: str = doc("Base URL of the local Patroni REST API.", "http://127.0.0.1:8008")
    poll_interval: Duration = doc("How often GET /patroni is polled between leader events.", Duration(5))
    timeout: Duration = doc("Timeout of one REST request.", Duration(2))
    verify_identity: bool = doc(
        "Refuse to start (exit 78) when /patroni names another scope or member than this config.", True
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdConfig:
    endpoints: list[str] = doc("etcd v3 gRPC-gateway URLs, tried in order.", ["http://127.0.0.1:2379"])
    namespace: str = doc("Patroni `namespace` (key prefix).", "/service")
    scope: str = doc("Patroni `scope` (the cluster name). Required.")
    timeout: Duration = doc("Timeout of unary etcd calls (range, lease, txn).", Duration(2))
    watch_deadline: Duration = doc(
        "A watch stream silent this long is dead (etcd sends progress notifications).", Duration(5)
    )
    username: str = doc("etcd user (RBAC); empty for none.", "")
    password_file: str = doc("File holding the etcd password (mode 0600/0640).", "", path="secret")
    ca_file: str = doc("CA bundle for https endpoints.", "", path="file")
    cert_file: str = doc("Client certificate for https endpoints.", "", path="file")
    key_file: str = doc("Client key for https endpoints.", "", path="file")


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresConfig:
    host: str = doc("Socket directory (peer auth) or host name of the local PostgreSQL.", "/var/run/postgresql")
    port: int = doc("PostgreSQL port.", 5432)
    user: str = doc("Database role the agent connects as.", "postgres")
    dbname: str = doc("Database the agent connects to.", "postgres")
    password_file: str = doc("File holding the password (or use peer auth / a pgpass file).", "", path="secret")
    connect_timeout: Duration = doc("Connection timeout.", Duration(3))
    statement_timeout: Duration = doc("statement_timeout of the agent's sessions.", Duration(5))
    lock_timeout: Duration = doc("lock_timeout of the agent's sessions.", Duration(1))
    poll_interval: Duration = doc("How often pg_is_in_recovery() is checked between events.", Duration(2))


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    listen: str = doc("host:port of the /metrics, /health, /status server.", "127.0.0.1:9188")
    tls_cert_file: str = doc("PEM certificate; with tls_key_file enables HTTPS.", "", path="file")
    tls_key_file: str = doc("PEM private key.", "", path="file")
    basic_auth_users: dict[str, str] = doc(
        'Basic auth: user -> bcrypt hash ("$2b$...") or "sha256:<hex>". Empty disables auth.', {}
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchdogConfig:
    heartbeat_timeout: Duration = doc(
        "A component whose heartbeat is older than this is stale: the watchdog stops being fed.",
        Duration(30),
    )
    device: str = doc(
        "Optional Linux watchdog device of the agent's own (never Patroni's /dev/watchdog). Empty: none. "
        "The shipped unit hides devices: it needs a drop-in (docs/installation.md). A stop that is not "
        "clean (kill -9, OOM, systemd's watchdog) leaves it armed: the machine resets after "
        "device_timeout unless the agent is running again by then.",
        "",
    )
    device_timeout: Duration = doc("Timeout set on the device.", Duration(30))


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplerConfig:
    enabled: bool = doc("Sample query statistics.", True)
    source: Literal["auto", "pg_stat_monitor", "pg_stat_statements"] = doc(
        "Query-statistics source; auto prefers pg_stat_monitor when installed.", "auto"
    )
    interval: Duration = doc("How often the source is read.", Duration(10))
    top_n: int = doc("Queries keeping their own queryid label; the rest fold into queryid=\"other\".", 100)
    labels: list[str] = doc(
        "Labels of query series, from datname, username, cmd_type, application_name, client_ip.",
        ["datname", "username"],
    )
    grace: Duration = doc("A bucket is read this long after it ended.", Duration(1))
    max_series: int = doc(
        "Hard cap on query series (queryid x labels); beyond it increments go to the all-\"other\" series.",
        1000,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RepackWindow:
    cron: str = doc('Cron expression of the window start (5 fields, e.g. "0 2 * * *"). Required.')
    duration: Duration = doc("Length of the window. Required.")
    timezone: str = doc("Time zone of the cron expression.", "UTC")
    databases: list[str] = doc("Databases to consider.", ["postgres"])
    include: list[str] = doc("Table patterns (schema.table, shell globs) to consider.", ["*.*"])
    exclude: list[str] = doc("Table patterns to skip.", [])
    min_table_bytes: int = doc("Tables smaller than this are left alone.", 10 * 1024 * 1024)
    max_table_bytes: int = doc("Tables larger than this are left alone.", 100 * 1024**3)
    bloat_ratio: float = doc("Minimum estimated bloat (0..1) to repack a table.", 0.3)
    max_tables_per_window: int = doc("At most this many tables per window.", 5)
    min_interval: Duration = doc("A table is not repacked again within this interval.", Duration(7 * 86400))


@dataclass(frozen=True, slots=True, kw_only=True)
class RepackConfig:
    enabled: bool = doc("Run pg_repack in the configured windows.", False)
    binary: str = doc("pg_repack binary (resolved on PATH when not absolute).", "pg_repack")
    wait_timeout: Duration = doc("pg_repack --wait-timeout (never kills a backend).", Duration(10))
    max_replication_lag_bytes: int = doc(
        "Guard: stop when a physical standby's replay lags more (WAL receivers without a replay "
        "position, such as pg_receivewal or Barman, do not count).", 256 * 1024**2)
    lag_excluded_standbys: list[str] = doc(
        "application_name (Patroni: member name) of standbys the replication-lag guard ignores, "
        "e.g. delayed standbys (recovery_min_apply_delay).", [])
    max_lock_waiters: int = doc("Guard: stop when this many sessions wait behind the table.", 1)
    max_transaction_age: Duration = doc("Guard: stop when a transaction is older.", Duration(3600))
    min_free_disk_ratio: float = doc("Guard: free disk must exceed this multiple of table+indexes.", 2.2)
    max_archive_ready_files: int = doc("Guard: stop when the archive backlog exceeds this.", 200)
    grace: Duration = doc("After SIGINT, pg_repack gets this long before SIGKILL.", Duration(1))
    lock_timeout: Duration = doc(
        "lock_timeout of pg_repack's sessions (PGOPTIONS) and of the leftover cleanup: bounds how long "
        "their ACCESS EXCLUSIVE requests can stall readers. Keep it above 1s: pg_repack 1.4.8 retries its "
        "own lock attempts only on their 1s statement_timeout.", Duration(1.2))
    cleanup_timeout: Duration = doc("Deadline for stopping pg_repack and dropping its leftovers.", Duration(10))
    measure_timeout: Duration = doc(
        "statement_timeout of one pgstattuple_approx bloat measurement (run on the few tables that rank "
        "highest by the statistics estimate); a table that takes longer keeps its statistics estimate.",
        Duration(5))
    trusted_owners: list[str] = doc(
        "Roles whose tables may be repacked, besides superusers and the role the agent connects as. "
        "pg_repack rebuilds a table's indexes as a superuser: whoever can act as the owner could have "
        "that superuser run their code, so list only roles whose every member you trust as a superuser "
        "(docs/troubleshooting.md, untrusted_owner).", [])
    windows: list[RepackWindow] = doc("Repack windows.", [])


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveConfig:
    enabled: bool = doc("Run WAL archive checks.", True)
    interval: Duration = doc("How often the cheap checks run.", Duration(15))
    max_ready_age: Duration = doc("Unhealthy when the oldest .ready file is older.", Duration(300))
    max_ready_files: int = doc("Unhealthy when more .ready files wait.", 100)
    pgbackrest_stanza: str = doc("pgBackRest stanza; empty disables the pgBackRest checks.", "")
    pgbackrest_binary: str = doc("pgbackrest binary.", "pgbackrest")
    pgbackrest_config: str = doc("pgbackrest --config file; empty for its default.", "", path="file")
    pgbackrest_info_interval: Duration = doc("How often `pgbackrest info` runs.", Duration(300))
    pgbackrest_check_interval: Duration = doc("How often `pgbackrest check` runs (leader only).", Duration(3600))
    pgbackrest_timeout: Duration = doc("Timeout of one pgbackrest run.", Duration(120))


@dataclass(frozen=True, slots=True, kw_only=True)
class HookConfig:
    command: list[str] = doc("argv of the command (no shell). Required.")
    on: list[Literal["role_changed", "leader_changed"]] = doc("Events that run it.", ["role_changed"])
    timeout: Duration = doc("The command is killed after this long.", Duration(30))


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig:
    level: LogLevel = doc("Log level.", "info")
    format: Literal["auto", "json", "console"] = doc("auto: console on a TTY, JSON otherwise.", "auto")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    node: NodeConfig = doc("This node.")
    etcd: EtcdConfig = doc("etcd (Patroni's DCS).")
    patroni: PatroniConfig = doc("The local Patroni.", PatroniConfig())
    postgres: PostgresConfig = doc("The local PostgreSQL.", PostgresConfig())
    http: HttpConfig = doc("HTTP endpoints.", HttpConfig())
    watchdog: WatchdogConfig = doc("Watchdog feeding.", WatchdogConfig())
    sampler: SamplerConfig = doc("Query sampler.", SamplerConfig())
    repack: RepackConfig = doc("Guarded pg_repack windows.", RepackConfig())
    archive: ArchiveConfig = doc("WAL archive checks.", ArchiveConfig())
    hooks: list[HookConfig] = doc("Commands run on events.", [])
    logging: LoggingConfig = doc("Logging.", LoggingConfig())
    source: str = field(default="", metadata={"internal": True})

    @property
    def state_dir(self) -> Path:
        return Path(self.node.state_dir or os.environ.get("STATE_DIRECTORY", "").split(":")[0]
                    or "/var/lib/pg-node-agent")


# --------------------------------------------------------------------------- loading


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


# --------------------------------------------------------------------------- semantic checks

_LABELS = {"datname", "username", "cmd_type", "application_name", "client_ip"}


def validate(cfg: Config) -> None:
    if not cfg.node.name:
        raise ConfigError("node.name", "must not be empty")
    if not cfg.etcd.scope:
        raise ConfigError("etcd.scope", "must not be empty")
    if not cfg.etcd.endpoints:
        raise ConfigError("etcd.endpoints", "needs at least one endpoint")
    for i, ep in enumerate(cfg.etcd.endpoints):
        if not re.fullmatch(r"https?://[^/\s]+/?", ep):
            raise ConfigError(f"etcd.endpoints[{i}]", f'invalid URL "{ep}" (want http(s)://host:port)')
    if bool(cfg.etcd.username) != bool(cfg.etcd.password_file):
        raise ConfigError("etcd.password_file", "etcd.username and etcd.password_file go together")
    if not re.fullmatch(r"https?://[^/\s]+/?", cfg.patroni.url):
        raise ConfigError("patroni.url", f'invalid URL "{cfg.patroni.url}"')
    host, sep, port = cfg.http.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError("http.listen", f'expected "host:port", got "{cfg.http.listen}"')
    if not 0 < cfg.postgres.port < 65536:
        raise ConfigError("postgres.port", f"out of range: {cfg.postgres.port}")
    if bool(cfg.http.tls_cert_file) != bool(cfg.http.tls_key_file):
        raise ConfigError("http.tls_key_file", "tls_cert_file and tls_key_file go together")
    for user, hashed in cfg.http.basic_auth_users.items():
        if not (hashed.startswith(("$2a$", "$2b$", "$2y$")) or re.fullmatch(r"sha256:[0-9a-f]{64}", hashed)):
            raise ConfigError(f"http.basic_auth_users.{user}", 'expected a bcrypt hash or "sha256:<hex>"')
    for d in ("interval", "grace"):
        if getattr(cfg.sampler, d) < 0:
            raise ConfigError(f"sampler.{d}", "must not be negative")
    if cfg.sampler.interval <= 0:
        raise ConfigError("sampler.interval", "must be positive")
    if cfg.sampler.top_n < 1:
        raise ConfigError("sampler.top_n", f"must be at least 1, got {cfg.sampler.top_n}")
    for i, label in enumerate(cfg.sampler.labels):
        if label not in _LABELS:
            raise ConfigError(f"sampler.labels[{i}]", f"unknown label {label!r} (one of {sorted(_LABELS)})")
    if cfg.watchdog.heartbeat_timeout <= 0:
        raise ConfigError("watchdog.heartbeat_timeout", "must be positive")
    if cfg.watchdog.device:
        check_watchdog_device(cfg.watchdog.device)
    if cfg.archive.interval <= 0:
        raise ConfigError("archive.interval", "must be positive")
    for i, w in enumerate(cfg.repack.windows):
        key = f"repack.windows[{i}]"
        _check_cron(w.cron, w.timezone, key)
        if w.duration <= 0:
            raise ConfigError(f"{key}.duration", "must be positive")
        if not 0 <= w.bloat_ratio < 1:
            raise ConfigError(f"{key}.bloat_ratio", f"must be in [0, 1), got {w.bloat_ratio}")
        if w.min_table_bytes > w.max_table_bytes:
            raise ConfigError(f"{key}.min_table_bytes", "is larger than max_table_bytes")
    for i, h in enumerate(cfg.hooks):
        if not h.command:
            raise ConfigError(f"hooks[{i}].command", "must not be empty")
        if not os.path.isabs(h.command[0]):
            raise ConfigError(f"hooks[{i}].command[0]", f'must be an absolute path, got "{h.command[0]}"')
    for key, path in _secret_files(cfg):
        check_secret_file(path, key)


# The shipped unit gives the agent a private /dev (PrivateDevices=yes) and a closed device
# policy: no watchdog device is visible or openable unless a drop-in says otherwise.
WATCHDOG_DEVICE_UNIT_HINT = (
    "the shipped unit hides every device (PrivateDevices=yes, DevicePolicy=closed): a drop-in needs "
    "PrivateDevices=no and DeviceAllow={dev} rw, and the device must be writable by the postgres user "
    "(docs/installation.md)"
)


def check_watchdog_device(dev: str) -> None:
    if os.path.realpath(dev) == "/dev/watchdog":
        raise ConfigError("watchdog.device", "/dev/watchdog is Patroni's device; use a second one")
    try:
        st = os.stat(dev)
    except OSError as e:
        raise ConfigError("watchdog.device",
                          f"{dev}: {e.strerror}; " + WATCHDOG_DEVICE_UNIT_HINT.format(dev=dev)) from None
    if not stat.S_ISCHR(st.st_mode):
        raise ConfigError("watchdog.device", f"{dev} is not a character device (a watchdog device node)")


def _check_cron(expr: str, tz: str, key: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from apscheduler.triggers.cron import CronTrigger

    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{key}.timezone", f'unknown time zone "{tz}"') from None
    try:
        CronTrigger.from_crontab(expr, timezone=zone)
    except ValueError:
        raise ConfigError(f"{key}.cron", f'invalid cron expression "{expr}"') from None


def _secret_files(cfg: Config) -> list[tuple[str, str]]:
    out = [("etcd.password_file", cfg.etcd.password_file), ("postgres.password_file", cfg.postgres.password_file)]
    return [(k, v) for k, v in out if v]


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


# --------------------------------------------------------------------------- reference docs


def reference_markdown() -> str:
    """docs/configuration.md, generated from the dataclasses (a test keeps the file equal to it)."""
    lines = ["# Configuration reference", "",
             "Generated from `agent/core/config.py` by `pg-node-agent check-config --reference`; "
             "a test fails when this file and the code disagree.", "",
             "One TOML file (default `/etc/pg-node-agent/agent.toml`). Durations are strings such as "
             '`"500ms"`, `"30s"`, `"5m"`, `"2h"`; a bare number is an error (seconds or milliseconds '
             "would be a guess). Relative file names are taken from the config file's directory. Unknown "
             "keys are errors. A bad file makes every command exit with code 78 and a message naming "
             "the key.", ""]

    for prefix, array, keys in sections():
        title = f"[[{prefix}]]" if array else f"[{prefix}]"
        lines.extend([f"## `{title}`", "", "| key | type | default | meaning |", "|---|---|---|---|"])
        for f, tp in keys:
            lines.append(f"| `{f.name}` | {_type_doc(tp)} | {_default_doc(f)} | {f.metadata.get('doc', '')} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


Section = tuple[str, bool, list[tuple[dataclasses.Field[Any], Any]]]


def sections() -> list[Section]:
    """Every table of the schema, depth first: (key path, is an array of tables, its plain keys)."""
    out: list[Section] = []

    def walk(cls: type, prefix: str, array: bool) -> None:
        hints = typing.get_type_hints(cls)
        keys, nested = [], []
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            sub = _nested(hints[f.name])
            if sub is None:
                keys.append((f, hints[f.name]))
            else:
                nested.append((sub[0], f"{prefix}.{f.name}" if prefix else f.name, sub[1]))
        if prefix:
            out.append((prefix, array, keys))
        elif keys:
            raise TypeError(f"Config has keys outside a section: {[f.name for f, _ in keys]}")
        for c, p, a in nested:
            walk(c, p, a)

    walk(Config, "", False)
    return out


def _nested(tp: Any) -> tuple[type, bool] | None:
    if dataclasses.is_dataclass(tp):
        return typing.cast(type, tp), False
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item):
            return typing.cast(type, item), True
    return None


def _type_doc(tp: Any) -> str:
    if tp is Duration:
        return "duration"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " \\| ".join(f'`"{a}"`' for a in typing.get_args(tp))
    if origin is list:
        return f"array of {_type_doc(typing.get_args(tp)[0])}"
    if origin is dict:
        return "table of string"
    if isinstance(tp, types.UnionType):
        return str(tp)
    return {str: "string", int: "integer", float: "float", bool: "boolean"}.get(tp, str(tp))


def _default_doc(f: dataclasses.Field[Any]) -> str:
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "**required**"
    v = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
    if isinstance(v, Duration):
        return f'`"{_fmt_duration(v)}"`'
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, str):
        return f'`"{v}"`'
    if isinstance(v, list | dict):
        import json

        return f"`{json.dumps(v)}`"
    return f"`{v}`"


def _fmt_duration(v: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if v >= n and v % n == 0:
            return f"{int(v // n)}{unit}"
    return f"{int(v * 1000)}ms"


_EXAMPLE_VALUES: dict[str, str] = {
    "node.name": '"node1"', "etcd.scope": '"demo"', "repack.windows.cron": '"0 2 * * 6"',
    "repack.windows.duration": '"2h"', "hooks.command": '["/usr/local/bin/on-role-change"]',
}


def example_toml() -> str:
    """config/agent.example.toml: every key, its meaning and default (a test keeps them equal)."""
    import json

    out = ["# pg-node-agent example configuration (generated by `pg-node-agent check-config --example`).",
           "# Every key is shown with its default; a commented-out key keeps that default.",
           "# Durations: \"500ms\", \"30s\", \"5m\", \"2h\" (strings; a bare number is an error).",
           "# Relative file names are taken from this file's directory. Unknown keys are errors (exit code 78).", ""]

    def render(v: Any) -> str:
        if isinstance(v, Duration):
            return f'"{_fmt_duration(v)}"'
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {render(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(render(x) for x in v) + "]"
        return str(v)

    for prefix, array, keys in sections():
        out.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        for f, _ in keys:
            out.append(f"# {f.metadata.get('doc', '')}")
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                out.append(f"{f.name} = " + _EXAMPLE_VALUES.get(f"{prefix}.{f.name}", '""'))
            else:
                v = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
                out.append(f"# {f.name} = {render(v)}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
