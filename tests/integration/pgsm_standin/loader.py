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


def install(
    admin: psycopg.Connection[Any],
    dbname: str,
    *,
    bucket_time: int = 5,
    max_buckets: int = 4,
    extra: dict[str, str] | None = None,
) -> None:
    """Creates database `dbname` with the stand-in and the pg_stat_monitor.* settings."""
    db = sql.Identifier(dbname)
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db))
    admin.execute(sql.SQL("CREATE DATABASE {}").format(db))
    # search_path is a list: one quoted literal would name a single schema "a, b, c"
    admin.execute(sql.SQL("ALTER DATABASE {} SET search_path = {}").format(
        db, sql.SQL(", ").join(sql.Identifier(p.strip()) for p in SEARCH_PATH.split(","))))
    settings = {
        "pg_stat_monitor.pgsm_bucket_time": str(bucket_time),
        "pg_stat_monitor.pgsm_max_buckets": str(max_buckets),
        "pg_stat_monitor.pgsm_histogram_min": "1",
        "pg_stat_monitor.pgsm_histogram_max": "100000",
        "pg_stat_monitor.pgsm_histogram_buckets": "20",
        "pg_stat_monitor.pgsm_normalized_query": "on",
        **(extra or {}),
    }
    for name, value in settings.items():
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                db, sql.Identifier(*name.split(".")), sql.Literal(value)
            )
        )
    host = admin.info.host
    with psycopg.connect(
        host=host, port=admin.info.port, user=admin.info.user, dbname=dbname, autocommit=True
    ) as c:
        c.execute((HERE / "standin.sql").read_text().encode())


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
        """The view shows exactly this tick's rows, and the clock reads the tick's time."""
        conn.execute("DELETE FROM pgsm_standin.entries")
        cols = sql.SQL(", ").join(sql.Identifier(c) for c in self.view_columns)
        with conn.cursor().copy(
            sql.SQL("COPY pgsm_standin.entries ({}) FROM STDIN (FORMAT csv)").format(cols)
        ) as cp:
            for rec in tick.records:
                cp.write(rec)
        set_fake(conn, now=tick.sampled_at)


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
) -> None:
    """A synthetic row, all resp_calls in the first bin (< 1 ms) unless exec_ms says otherwise."""
    bins = [0] * 22
    bins[0 if exec_ms / max(calls, 1) <= 1 else 21] = calls
    slot = int(bucket_start.timestamp()) // bucket_time % max_buckets
    conn.execute(
        "INSERT INTO pgsm_standin.entries (bucket, bucket_start_time, userid, username, dbid, datname, "
        "client_ip, pgsm_query_id, queryid, toplevel, query, application_name, cmd_type, cmd_type_text, "
        "elevel, sqlcode, calls, total_exec_time, rows, resp_calls, wal_bytes, bucket_done, plans) "
        "VALUES (%s, %s, 10, %s, 5, %s, '127.0.0.1', %s, %s, true, 'SELECT $1', 'app', 1, 'SELECT', "
        "%s, %s, %s, %s, %s, %s, 0, false, %s)",
        (
            slot,
            bucket_start,
            username,
            datname,
            queryid,
            queryid,
            elevel,
            sqlcode,
            calls,
            exec_ms,
            calls,
            [str(b) for b in bins],
            calls,
        ),
    )
