"""Installs the pg_stat_monitor stand-in in its own database and feeds it.

Two feeds: `Capture` replays the real 2.3.2 captures tick by tick (the view then shows exactly
what the extension showed at that instant, on the capture's clock), and `insert_row` writes
synthetic rows into a live bucket ring on the real clock.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

HERE = Path(__file__).parent
DATA = Path(__file__).resolve().parents[2] / "data" / "pg_stat_monitor"
SEARCH_PATH = "pgsm_standin, pg_catalog, public"


_TIME_MS = (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000), ("ms", 1))
_MEM_KB = (("TB", 1024**3), ("GB", 1024**2), ("MB", 1024), ("kB", 1))
_TO_BASE = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000,
            "kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}


def pg_form(setting: str, unit: str | None) -> str:
    """What current_setting()/SHOW says for `setting` in `unit`: the largest unit that divides
    the value evenly, as PostgreSQL prints it ('5' s -> '5s', '60' s -> '1min', '100000' ms
    -> '100s', '10' MB -> '10MB')."""
    if not unit:
        return setting
    base = float(setting) * _TO_BASE[unit]
    table = _TIME_MS if unit in ("ms", "s", "min", "h", "d") else _MEM_KB
    for name, f in table:
        if base != 0 and base % f == 0:
            return f"{int(base // f)}{name}"
    return f"{setting}{unit}"


def real_settings() -> dict[str, tuple[str, str | None]]:
    """name -> (setting, unit) as the real 2.3.2 reported them in pg_settings (the capture)."""
    with (DATA / "pgsm_settings.csv").open() as f:
        return {r["name"]: (r["setting"], r["unit"] or None) for r in csv.DictReader(f)}


def install(
    admin: psycopg.Connection[Any],
    dbname: str,
    *,
    bucket_time: int = 5,
    max_buckets: int = 4,
    extra: dict[str, str] | None = None,
    loaded: bool = True,
) -> None:
    """Creates database `dbname` with the stand-in and the pg_stat_monitor.* settings (the real
    capture's, with bucket_time and max_buckets and `extra` settings as given). `loaded=False`:
    as when the library is not in shared_preload_libraries, no pgsm setting exists."""
    db = sql.Identifier(dbname)
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db))
    admin.execute(sql.SQL("CREATE DATABASE {}").format(db))
    # search_path is a list: one quoted literal would name a single schema "a, b, c"
    admin.execute(sql.SQL("ALTER DATABASE {} SET search_path = {}").format(
        db, sql.SQL(", ").join(sql.Identifier(p.strip()) for p in SEARCH_PATH.split(","))))
    settings = real_settings()
    settings["pg_stat_monitor.pgsm_bucket_time"] = (str(bucket_time), "s")
    settings["pg_stat_monitor.pgsm_max_buckets"] = (str(max_buckets), None)
    for name, value in (extra or {}).items():
        settings[name] = (value, settings.get(name, ("", None))[1])
    if not loaded:
        settings = {}
    for name, (value, unit) in settings.items():
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                db, sql.Identifier(*name.split(".")), sql.Literal(pg_form(value, unit))
            )
        )
    host = admin.info.host
    with psycopg.connect(
        host=host, port=admin.info.port, user=admin.info.user, dbname=dbname, autocommit=True
    ) as c:
        c.execute((HERE / "standin.sql").read_text().encode())
        for name, (value, unit) in settings.items():
            c.execute("INSERT INTO pgsm_standin.settings VALUES (%s, %s, %s)", (name, value, unit))


def set_fake(conn: psycopg.Connection[Any], **values: Any) -> None:
    """now / postmaster_start / system_identifier; None returns to the real value."""
    for k, v in values.items():
        conn.execute(sql.SQL("UPDATE pgsm_standin.fake SET {} = %s").format(sql.Identifier(k)), (v,))


def _records(path: Path) -> Iterator[str]:
    """CSV records as raw text (a quoted field may span lines), so COPY sees NULL vs "" as written."""
    buf = ""
    with path.open() as f:
        next(f)
        for line in f:
            buf += line
            if buf.count('"') % 2 == 0:
                yield buf
                buf = ""


@dataclass
class Tick:
    sampled_at: str
    records: list[str]


class Capture:
    """The shared capture's pgsm_samples.csv grouped per tick, in sampling order."""

    def __init__(self) -> None:
        ticks: dict[str, list[str]] = {}
        for rec in _records(DATA / "pgsm_samples.csv"):
            at, rest = rec.split(",", 1)
            ticks.setdefault(at, []).append(rest)
        log = list(csv.DictReader((DATA / "sampler_log.csv").open()))
        self.ticks: list[Tick] = []
        for row in log:
            if row["status"] == "ok":
                self.ticks.append(Tick(row["pgsm_sampled_at"], ticks.get(row["pgsm_sampled_at"], [])))
        self.columns = next(csv.reader((DATA / "pgsm_view_columns.csv").open()))  # header only
        self.view_columns = [r[1] for r in list(csv.reader((DATA / "pgsm_view_columns.csv").open()))[1:]]

    def rows(self) -> list[dict[str, str]]:
        """Every sampled row as text fields, with sampled_at (for computing expectations)."""
        out = []
        for t in self.ticks:
            for rec in t.records:
                fields = next(csv.reader(io.StringIO(rec)))
                d = dict(zip(self.view_columns, fields, strict=True))
                d["sampled_at"] = t.sampled_at
                out.append(d)
        return out

    def load(self, conn: psycopg.Connection[Any], tick: Tick) -> None:
        """The view shows exactly this tick's rows, and the clock reads the tick's time.

        The capture holds view rows; they go into the function's shape through the inverse of
        the view's expressions (inet - '0.0.0.0', array_to_string). The PostgreSQL 15 view does not
        show stats_since, so replayed rows have none."""
        conn.execute("DELETE FROM pgsm_standin.entries")
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS cap AS SELECT * FROM pgsm_standin.pg_stat_monitor WHERE false")
        conn.execute("TRUNCATE cap")
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in self.view_columns)
        with conn.cursor().copy(sql.SQL("COPY cap ({}) FROM STDIN (FORMAT csv)").format(cols)) as cp:
            for rec in tick.records:
                cp.write(rec)
        same = [c for c in self.view_columns if c not in _CONVERTED]
        conn.execute(sql.SQL(
            "INSERT INTO pgsm_standin.entries ({}, client_ip, relations, shared_blk_read_time, "
            "shared_blk_write_time, resp_calls) SELECT {}, client_ip - '0.0.0.0'::inet, "
            "array_to_string(relations, ','), blk_read_time, blk_write_time, "
            "array_to_string(resp_calls, ',') FROM cap").format(
                sql.SQL(", ").join(map(sql.Identifier, same)), sql.SQL(", ").join(map(sql.Identifier, same))))
        set_fake(conn, now=tick.sampled_at)


_CONVERTED = {"client_ip", "relations", "blk_read_time", "blk_write_time", "resp_calls", "cmd_type_text"}


def insert_row(
    conn: psycopg.Connection[Any],
    *,
    bucket_start: datetime,
    queryid: int,
    calls: int,
    exec_ms: float,
    username: str = "app",
    datname: str = "appdb",
    elevel: int = 0,
    sqlcode: str | None = None,
    bucket_time: int = 1,
    max_buckets: int = 3,
    stats_since: datetime | None = None,
) -> None:
    """A synthetic row shaped as 2.3.2 stores it: all resp_calls in the first bin (< 1 ms) unless
    exec_ms says otherwise. An error or warning row (elevel > 0) is as the real one: its
    queryid is also its pgsm_query_id, cmd_type 0, 0 ms, resp_calls all in bin 0, a message."""
    bins = [0] * 22
    bins[0 if elevel or exec_ms / max(calls, 1) <= 1 else 21] = calls
    slot = int(bucket_start.timestamp()) // bucket_time % max_buckets
    conn.execute(
        "INSERT INTO pgsm_standin.entries (bucket, bucket_start_time, userid, username, dbid, datname, "
        "client_ip, pgsm_query_id, queryid, toplevel, query, application_name, cmd_type, "
        "elevel, sqlcode, message, calls, total_exec_time, rows, resp_calls, plans, stats_since, "
        "minmax_stats_since) "
        "VALUES (%(slot)s, %(b)s, 10, %(u)s, 5, %(d)s, 2130706433, %(q)s, %(q)s, %(top)s, 'SELECT $1', "
        "'app', %(cmd)s, %(elevel)s, %(sqlcode)s, %(msg)s, %(calls)s, %(ms)s, %(rows)s, %(resp)s, "
        "%(calls)s, %(since)s, %(since)s)",
        {"slot": slot, "b": bucket_start, "u": username, "d": datname, "q": queryid,
         "top": not elevel, "cmd": 0 if elevel else 1, "elevel": elevel, "sqlcode": sqlcode,
         "msg": f"synthetic {sqlcode}" if elevel else None, "calls": calls,
         "ms": 0.0 if elevel else exec_ms, "rows": 0 if elevel else calls,
         "resp": ",".join(map(str, bins)), "since": stats_since or bucket_start},
    )
