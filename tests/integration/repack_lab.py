"""What the lab tests of the repack component share: the agent's [repack] section, the bloated
table they repack, and the query that counts pg_repack's leftovers on a node."""

from __future__ import annotations

DB = "app"
REPACK = f"""
[repack]
enabled = true
wait_timeout = "2s"
[[repack.windows]]
cron = "0 * * * *"
duration = "2h"
databases = ["{DB}"]
min_table_bytes = 0
bloat_ratio = 0.3
"""
LEFTOVERS = """
SELECT (SELECT count(*) FROM pg_trigger WHERE tgname = 'repack_trigger')
     + (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'repack' AND c.relname ~ '^(log|table)_[0-9]+$') AS n
"""


def bloated_table(table: str, rows: int) -> list[str]:
    """`table` with `rows` rows, 70 % deleted and vacuumed: bloated past every window's 0.3."""
    return [f"CREATE TABLE {table} (id int PRIMARY KEY, payload text)",
            f"INSERT INTO {table} SELECT i, md5(i::text) FROM generate_series(1, {rows}) i",
            f"DELETE FROM {table} WHERE id % 10 < 7", f"VACUUM ANALYZE {table}"]


EXTENSIONS = ["CREATE EXTENSION pg_repack", "CREATE EXTENSION pgstattuple"]
