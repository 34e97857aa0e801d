"""The file's schema: one frozen dataclass per table, every key declared once with its default and
its meaning (`doc`), and each table's `check` beside the fields it checks. The loader, the example
file and docs/configuration.md all read these fields, so they cannot drift apart."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.core.config.fields import URL, ConfigError, Duration, Section, doc, positive

LABELS = {"datname", "username", "cmd_type", "application_name", "client_ip"}


LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig(Section):
    name: str = doc("This node's Patroni member name (Patroni `name`). Required.")
    state_dir: str = doc(
        "Directory for persistent state (sampler watermark and counters). "
        "Default: $STATE_DIRECTORY (systemd StateDirectory=) or /var/lib/pg-node-agent.",
        "",
        path="file",
    )

    def check(self, key: str) -> None:
        if not self.name:
            raise ConfigError(f"{key}.name", "must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class PatroniConfig(Section):
    url: str = doc("Base URL of the local Patroni REST API.", "http://127.0.0.1:8008")
    poll_interval: Duration = doc("How often GET /patroni is polled between leader events.", Duration(5))
    timeout: Duration = doc("Timeout of one REST request.", Duration(2))
    verify_identity: bool = doc(
        "Refuse to start (exit 78) when /patroni names another scope or member than this config.", True
    )
    ca_file: str = doc("CA bundle that signed Patroni's certificate (https url); empty: the system's CAs. "
                       "The certificate is always verified.", "", path="file")
    cert_file: str = doc("Client certificate for Patroni's REST API (restapi.verify_client).", "", path="file")
    key_file: str = doc("Key of cert_file (mode 0600/0640).", "", path="secret")

    def check(self, key: str) -> None:
        if not URL.fullmatch(self.url):
            raise ConfigError(f"{key}.url", f'invalid URL "{self.url}"')


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdConfig(Section):
    endpoints: list[str] = doc("etcd v3 gRPC-gateway URLs, tried in order.", ["http://127.0.0.1:2379"])
    namespace: str = doc("Patroni `namespace` (key prefix).", "/service")
    scope: str = doc("Patroni `scope` (the cluster name). Required.")
    timeout: Duration = doc("Timeout of unary etcd calls (range, lease, txn).", Duration(2))
    watch_deadline: Duration = doc(
        "A watch stream silent this long is checked: a linearizable read of the scope says whether it "
        "missed a change (then it is resumed) or the scope is idle (then it is kept).", Duration(5)
    )
    username: str = doc("etcd user (RBAC); empty for none.", "")
    password_file: str = doc("File holding the etcd password (mode 0600/0640).", "", path="secret")
    ca_file: str = doc("CA bundle for https endpoints.", "", path="file")
    cert_file: str = doc("Client certificate for https endpoints.", "", path="file")
    key_file: str = doc("Client key for https endpoints.", "", path="file")

    def check(self, key: str) -> None:
        if not self.scope:
            raise ConfigError(f"{key}.scope", "must not be empty")
        if not self.endpoints:
            raise ConfigError(f"{key}.endpoints", "needs at least one endpoint")
        for i, ep in enumerate(self.endpoints):
            if not URL.fullmatch(ep):
                raise ConfigError(f"{key}.endpoints[{i}]", f'invalid URL "{ep}" (want http(s)://host:port)')
        if bool(self.username) != bool(self.password_file):
            raise ConfigError(f"{key}.password_file", "etcd.username and etcd.password_file go together")


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresConfig(Section):
    host: str = doc("Socket directory (peer auth) or host name of the local PostgreSQL.", "/var/run/postgresql")
    port: int = doc("PostgreSQL port.", 5432)
    user: str = doc("Database role the agent connects as.", "postgres")
    dbname: str = doc("Database the agent connects to.", "postgres")
    password_file: str = doc("File holding the password (or use peer auth / a pgpass file).", "", path="secret")
    connect_timeout: Duration = doc("Connection timeout.", Duration(3))
    statement_timeout: Duration = doc("statement_timeout of the agent's sessions.", Duration(5))
    lock_timeout: Duration = doc("lock_timeout of the agent's sessions.", Duration(1))
    poll_interval: Duration = doc("How often pg_is_in_recovery() is checked between events.", Duration(2))

    def check(self, key: str) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"{key}.port", f"out of range: {self.port}")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig(Section):
    listen: str = doc("host:port of the /metrics, /health, /status server.", "127.0.0.1:9188")
    tls_cert_file: str = doc("PEM certificate; with tls_key_file enables HTTPS.", "", path="file")
    tls_key_file: str = doc("PEM private key.", "", path="file")
    basic_auth_users: dict[str, str] = doc(
        'Basic auth: user -> bcrypt hash ("$2b$...") or "sha256:<hex>". Empty disables auth.', {}
    )

    def check(self, key: str) -> None:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{key}.listen", f'expected "host:port", got "{self.listen}"')
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError(f"{key}.tls_key_file", "tls_cert_file and tls_key_file go together")
        for user, hashed in self.basic_auth_users.items():
            if not (hashed.startswith(("$2a$", "$2b$", "$2y$")) or re.fullmatch(r"sha256:[0-9a-f]{64}", hashed)):
                raise ConfigError(f"{key}.basic_auth_users.{user}", 'expected a bcrypt hash or "sha256:<hex>"')


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


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchdogConfig(Section):
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

    def check(self, key: str) -> None:
        positive(f"{key}.heartbeat_timeout", self.heartbeat_timeout)
        if self.device:
            check_watchdog_device(self.device)


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplerConfig(Section):
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

    def check(self, key: str) -> None:
        for d in ("interval", "grace"):
            if getattr(self, d) < 0:
                raise ConfigError(f"{key}.{d}", "must not be negative")
        positive(f"{key}.interval", self.interval)
        if self.top_n < 1:
            raise ConfigError(f"{key}.top_n", f"must be at least 1, got {self.top_n}")
        for i, label in enumerate(self.labels):
            if label not in LABELS:
                raise ConfigError(f"{key}.labels[{i}]", f"unknown label {label!r} (one of {sorted(LABELS)})")


def check_cron(expr: str, tz: str, key: str) -> None:
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


@dataclass(frozen=True, slots=True, kw_only=True)
class RepackWindow(Section):
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

    def check(self, key: str) -> None:
        check_cron(self.cron, self.timezone, key)
        positive(f"{key}.duration", self.duration)
        if not 0 <= self.bloat_ratio < 1:
            raise ConfigError(f"{key}.bloat_ratio", f"must be in [0, 1), got {self.bloat_ratio}")
        if self.min_table_bytes > self.max_table_bytes:
            raise ConfigError(f"{key}.min_table_bytes", "is larger than max_table_bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class RepackConfig(Section):
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
        "lock_timeout of pg_repack's sessions (PGOPTIONS): bounds how long their ACCESS EXCLUSIVE requests "
        "can stall readers. Keep it above 1s: pg_repack 1.4.8 retries its own lock attempts only on their 1s "
        "statement_timeout. The agent's own drop of an interrupted run's leftovers does not use it: each "
        "attempt queues for at most 80 ms, attempts at least 0.8 s apart, so that drop never stalls readers "
        "for long.", Duration(1.2))
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
class ArchiveConfig(Section):
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

    def check(self, key: str) -> None:
        positive(f"{key}.interval", self.interval)


@dataclass(frozen=True, slots=True, kw_only=True)
class HookConfig(Section):
    command: list[str] = doc("argv of the command (no shell). Required.")
    on: list[Literal["role_changed", "leader_changed"]] = doc("Events that run it.", ["role_changed"])
    timeout: Duration = doc("The command is killed after this long.", Duration(30))

    def check(self, key: str) -> None:
        if not self.command:
            raise ConfigError(f"{key}.command", "must not be empty")
        if not os.path.isabs(self.command[0]):
            raise ConfigError(f"{key}.command[0]", f'must be an absolute path, got "{self.command[0]}"')


@dataclass(frozen=True, slots=True, kw_only=True)
class LoggingConfig(Section):
    level: LogLevel = doc("Log level.", "info")
    format: Literal["auto", "json", "console"] = doc("auto: console on a TTY, JSON otherwise.", "auto")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config(Section):
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
