"""Whose code a repack would run as a superuser, and which tables that refuses.

pg_repack (a superuser session) copies the heap into `repack.table_<oid>`, a table that session
owns, builds the original's indexes on it, and replays the logged changes into it. Index builds
and inserts evaluate index expressions and predicates, the functions behind their operators, the
CHECKs of domains they cast to, and (GiST) a range type's `subtype_diff`, all as the copy's owner:
the superuser. Each of these made a plain table owner a superuser on PostgreSQL 15 + pg_repack
1.4.8. Not run as the superuser (tried): the table's CHECK constraints, defaults, generated columns
and triggers are not carried to the copy (`CREATE TABLE … AS SELECT`), row security is bypassed by
a superuser, and the closing ANALYZE runs as the table's owner. So a table is refused when its
indexes use a function or operator outside pg_catalog, or a domain, range or multirange type
outside pg_catalog (`index_user_code`), and when its owner is not trusted (`untrusted_owner`): an
owner can add such an index between this check and pg_repack's own reading of the indexes.

pg_repack's own SQL calls functions and operators unqualified under its search_path `pg_catalog,
pg_temp, public`, and a `public` one that fits the arguments better than pg_catalog's wins. Both ran
as the superuser in tests: `public.pg_try_advisory_lock(text, integer)` (pg_repack passes that call
an untyped parameter) before anything else, whoever owns the table, and `public.=(varchar, varchar)`
in the replay's `WHERE (key) = ($1.key)`. So a database is refused whole when its `public` holds a
function or operator of a role that is not trusted, or a function behind such an operator
(`public_user_code`), and when a role that is not trusted may create in `public`
(`public_writable`): what is there now says nothing of what is created between this check and
pg_repack's start. (PostgreSQL 15 lets only the database's owner create in `public` by default.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg


@dataclass(frozen=True, slots=True)
class PublicSchema:
    """What pg_repack's unqualified names could resolve to in `public`, beside pg_catalog."""

    code: tuple[tuple[str, str], ...] = ()  # (function or operator, its owner), owners not superusers
    writers: tuple[str, ...] = ()           # roles, not superusers, that may create in `public`


def refusals(owner: str, owner_trusted: bool, index_code: tuple[str, ...], public: PublicSchema,
             trusted_owners: list[str]) -> dict[str, dict[str, object]]:
    """Refusal name -> what an operator needs beside it to act. `owner_trusted`: a superuser or the
    agent's own role; `trusted_owners` adds roles."""
    out: dict[str, dict[str, object]] = {}
    if not (owner_trusted or owner in trusted_owners):
        out["untrusted_owner"] = {"owner": owner}
    if index_code:  # also for a trusted owner: it is known to run, so never by mistake
        out["index_user_code"] = {"index_code": list(index_code)}
    code = [what for what, role in public.code if role not in trusted_owners]
    if code:
        out["public_user_code"] = {"public_code": code}
    writers = [role for role in public.writers if role not in trusted_owners]
    if writers:
        out["public_writable"] = {"public_writers": writers}
    return out


# What building a table's indexes would run outside pg_catalog (see the module's docstring), in
# one pass over all indexes: functions and operators their expressions and predicates use, and
# domain/range/multirange types they use or index.
INDEX_CODE_SQL = """
SELECT indrelid::bigint AS oid, array_agg(DISTINCT x ORDER BY x) AS code FROM (
  SELECT i.indrelid, format('function %s.%s(%s)', p.pronamespace::regnamespace, quote_ident(p.proname),
                            pg_get_function_identity_arguments(p.oid)) AS x
    FROM pg_index i
    JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                    AND d.refclassid = 'pg_proc'::regclass
    JOIN pg_proc p ON p.oid = d.refobjid
   WHERE p.pronamespace <> 'pg_catalog'::regnamespace
  UNION ALL
  SELECT i.indrelid, format('operator %s.%s(%s,%s)', op.oprnamespace::regnamespace, op.oprname,
                            format_type(op.oprleft, NULL), format_type(op.oprright, NULL))
    FROM pg_index i
    JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                    AND d.refclassid = 'pg_operator'::regclass
    JOIN pg_operator op ON op.oid = d.refobjid
    JOIN pg_proc p ON p.oid = op.oprcode
   WHERE 'pg_catalog'::regnamespace <> ANY (ARRAY[op.oprnamespace, p.pronamespace])
  UNION ALL
  SELECT u.indrelid, format('type %s.%s', ty.typnamespace::regnamespace, quote_ident(ty.typname))
    FROM (SELECT i.indrelid, a.atttypid AS typ
            FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indexrelid
          UNION
          SELECT i.indrelid, d.refobjid
            FROM pg_index i
            JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                            AND d.refclassid = 'pg_type'::regclass) u
    JOIN pg_type ty ON ty.oid = u.typ
   WHERE ty.typnamespace <> 'pg_catalog'::regnamespace AND ty.typtype IN ('d', 'r', 'm')
) code GROUP BY indrelid
"""

# Functions and operators in `public` (and operators whose function is elsewhere) of roles that
# are not superusers nor the agent's, and the roles that may create there (the database's owner
# may, through pg_database_owner).
PUBLIC_SQL = """
SELECT (SELECT coalesce(json_agg(json_build_array(x, owner) ORDER BY x, owner), '[]') FROM (
          SELECT format('function public.%s(%s)', quote_ident(p.proname),
                        pg_get_function_identity_arguments(p.oid)) AS x, r.rolname AS owner
            FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace AND n.nspname = 'public'
            JOIN pg_roles r ON r.oid = p.proowner
           WHERE NOT r.rolsuper AND r.rolname <> current_user
          UNION
          SELECT format('operator public.%s(%s,%s)', op.oprname, format_type(op.oprleft, NULL),
                        format_type(op.oprright, NULL)), r.rolname
            FROM pg_operator op
            JOIN pg_namespace n ON n.oid = op.oprnamespace AND n.nspname = 'public'
            JOIN pg_proc p ON p.oid = op.oprcode
            JOIN pg_roles r ON r.oid IN (op.oprowner, p.proowner)
           WHERE NOT r.rolsuper AND r.rolname <> current_user) c) AS public_code,
       ARRAY(SELECT r.rolname FROM pg_roles r, pg_namespace n
              WHERE n.nspname = 'public' AND r.oid >= 16384  -- not the predefined pg_* roles
                AND NOT r.rolsuper AND r.rolname <> current_user
                AND has_schema_privilege(r.oid, n.oid, 'CREATE') ORDER BY 1) AS public_writers
"""


async def read_index_code(conn: psycopg.AsyncConnection[dict[str, Any]]) -> dict[int, tuple[str, ...]]:
    """Table oid -> what building its indexes would run outside pg_catalog."""
    return {r["oid"]: tuple(r["code"]) for r in await (await conn.execute(INDEX_CODE_SQL)).fetchall()}


async def read_public(conn: psycopg.AsyncConnection[dict[str, Any]]) -> PublicSchema:
    row = await (await conn.execute(PUBLIC_SQL)).fetchone()
    if row is None:
        raise RuntimeError("query returned no row")
    return PublicSchema(code=tuple((str(w), str(o)) for w, o in row["public_code"]),
                        writers=tuple(row["public_writers"]))
