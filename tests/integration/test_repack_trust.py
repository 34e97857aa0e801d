"""pg_repack runs as a superuser and builds a table's indexes on a copy that superuser owns, so
index code runs with superuser rights. On a real PostgreSQL 15 + pg_repack 1.4.8: a plain table
owner who plants code in an index must not become a superuser through a window, and the refusal
is named (`repack plan`, `repack_table_refused`)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
from test_repack import confirm_primary, logged, q, started
from test_repack import make_ctx as repack_ctx
from testlab.postgres import PgInstance

from agent.core import pg as agent_pg
from agent.core.config import parse
from agent.core.context import Context
from agent.lab.etcd import Etcd
from agent.repack import candidates, plan

_n = itertools.count(1)

# The escalation as reported: an IMMUTABLE index function calling a VOLATILE one that makes its
# owner a superuser when it finds itself running as postgres.
ESCALATE = """
CREATE FUNCTION public.g() RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  IF current_user = 'postgres' THEN EXECUTE 'ALTER ROLE {role} SUPERUSER'; END IF;
END $$
"""
F = ("CREATE FUNCTION public.f(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS "
     "$$ BEGIN PERFORM public.g(); RETURN $1; END $$")


def superuser(pg: PgInstance, role: str) -> bool:
    return bool(q(pg, "postgres", "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,))[0][0])


@pytest.fixture
def owned(pg15: PgInstance) -> Iterator[tuple[str, str]]:
    """(database, role): a bloated table `public.t` owned by a plain role with CREATE on public,
    whose index runs that role's function."""
    n = next(_n)
    db, role = f"trust_{n}", f"app_owner_{n}"
    pg15.psql(f"CREATE DATABASE {db}")
    pg15.psql(f"CREATE ROLE {role} LOGIN")
    q(pg15, db, "CREATE EXTENSION pg_repack")
    q(pg15, db, "CREATE EXTENSION pgstattuple")
    q(pg15, db, f"GRANT CREATE ON SCHEMA public TO {role}")
    with psycopg.connect(pg15.conninfo.replace("dbname=postgres", f"dbname={db}"), autocommit=True) as c:
        c.execute(f"SET ROLE {role}".encode())
        c.execute(ESCALATE.replace("{role}", role).encode())
        c.execute(F.encode())
        c.execute(b"CREATE TABLE t (id int PRIMARY KEY, v int, pad text)")
        c.execute(b"INSERT INTO t SELECT i, i, repeat('x', 100) FROM generate_series(1, 20000) i")
        c.execute(b"CREATE INDEX ON t (public.f(v))")
        c.execute(b"DELETE FROM t WHERE id % 10 < 7")
    q(pg15, db, "VACUUM ANALYZE t")
    assert not superuser(pg15, role)
    yield db, role
    with pg15.connect() as conn:
        conn.execute(f"DROP DATABASE {db} WITH (FORCE)".encode())
        conn.execute(f"DROP ROLE {role}".encode())


def make_ctx(pg: PgInstance, etcd: Etcd, db: str, state_dir: Path, **repack: Any) -> Context:
    return repack_ctx(pg, etcd, db, state_dir, window={"include": ["public.t"]}, **repack)


def test_plan_names_both_refusals_of_an_untrusted_owners_table_with_index_code(
        pg15: PgInstance, etcd: Etcd, owned: tuple[str, str], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    db, role = owned
    plan.main(make_ctx(pg15, etcd, db, tmp_path).config)
    out = capsys.readouterr().out
    assert re.search(r"public\.t .*REFUSED \(untrusted_owner, index_user_code, public_user_code, "
                     r"public_writable\)", out), out
    assert f"owner: {role}" in out
    assert "index_code: function public.f(integer)" in out
    assert "public_code: function public.f(integer), function public.g()" in out
    assert not superuser(pg15, role)


async def test_a_trusted_owners_table_whose_index_runs_user_code_is_refused_and_its_owner_stays_plain(
        pg15: PgInstance, etcd: Etcd, owned: tuple[str, str], tmp_path: Path,
        logs: list[dict[str, Any]]) -> None:
    """Forced in as far as config goes (owner trusted, the table named by the window): still
    refused, by name; pg_repack never starts and the owner is not a superuser afterwards."""
    db, role = owned
    (node_before,) = q(pg15, db, "SELECT pg_relation_filenode('t')")[0]
    ctx = make_ctx(pg15, etcd, db, tmp_path, trusted_owners=[role])
    async with started(ctx):
        confirm_primary(ctx)
        with anyio.fail_after(60):
            await logged(logs, "repack_window_done", "repack_finished")
    assert not superuser(pg15, role)
    refused = [e for e in logs if e["event"] == "repack_table_refused"]
    assert [(e["table"], e["reasons"], e["index_code"]) for e in refused] == [
        ("public.t", ["index_user_code"], ["function public.f(integer)"])], refused
    assert ctx.status_sections["repack"]()["recent"] == []
    assert q(pg15, db, "SELECT pg_relation_filenode('t')")[0][0] == node_before


# Each carrier below made its owner a superuser through `pg_repack -t` on PostgreSQL 15 +
# pg_repack 1.4.8 (the range one through the GiST build calling subtype_diff on a plain column).
CARRIERS = {
    "expression": ([F], "CREATE INDEX ON t (public.f(v))", "function public.f(integer)"),
    "predicate": ([F], "CREATE INDEX ON t (v) WHERE public.f(v) > 0", "function public.f(integer)"),
    "operator": (["CREATE FUNCTION public.eq(int, int) RETURNS boolean LANGUAGE sql IMMUTABLE "
                  "AS 'SELECT $1 = $2'",
                  "CREATE OPERATOR public.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = public.eq)"],
                 "CREATE INDEX ON t (v) WHERE v OPERATOR(public.===) 1", "operator public.===(integer,integer)"),
    "domain": (["CREATE FUNCTION public.ok(int) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true'",
                "CREATE DOMAIN public.d AS int CHECK (public.ok(VALUE))"],
               "CREATE INDEX ON t ((v::public.d))", "type public.d"),
    "range": (["CREATE FUNCTION public.diff(int, int) RETURNS float8 LANGUAGE sql IMMUTABLE "
               "AS 'SELECT ($1 - $2)::float8'",
               "CREATE TYPE public.r AS RANGE (subtype = int, subtype_diff = public.diff)",
               "ALTER TABLE t ADD COLUMN rr public.r"],
              "CREATE INDEX ON t USING gist (rr)", "type public.r"),
}


@pytest.mark.parametrize("carrier", sorted(CARRIERS))
async def test_every_way_an_index_runs_user_code_is_named(pg15: PgInstance, carrier: str) -> None:
    setup, index, named = CARRIERS[carrier]
    db = f"carrier_{next(_n)}"
    pg15.psql(f"CREATE DATABASE {db}")
    try:
        q(pg15, db, "CREATE TABLE t (id int PRIMARY KEY, v int, s text)")
        q(pg15, db, "CREATE INDEX ON t (lower(s)) WHERE v > 0 AND s <> ''")  # pg_catalog only: fine
        q(pg15, db, "CREATE TABLE plain (id int PRIMARY KEY, v int, s text)")
        for stmt in [*setup, index]:
            q(pg15, db, stmt)
        async with await agent_pg.connect(_pg_config(pg15, db), "test", db) as conn:
            tables = {t.name: t for t in await candidates.read_tables(conn, db)}
        assert tables["public.t"].index_code == (named,)
        assert tables["public.plain"].index_code == ()
        assert tables["public.t"].owner == "postgres" and tables["public.t"].owner_trusted
    finally:
        with pg15.connect() as conn:
            conn.execute(f"DROP DATABASE {db} WITH (FORCE)".encode())


def _pg_config(pg: PgInstance, db: str) -> Any:
    return parse({"node": {"name": "n1"}, "etcd": {"scope": "x"},
                  "postgres": {"host": str(pg.socket_dir), "port": pg.port, "dbname": db}}).postgres


# pg_repack's own SQL under its search_path `pg_catalog, pg_temp, public`: both ran as postgres
# with pg_repack 1.4.8 (the function at the start of every table, the operator in the replay of a
# varchar key's changes, where it fits better than pg_catalog's =(text,text)).
SHADOWS = {
    "function": [
        "CREATE FUNCTION public.pg_try_advisory_lock(text, integer) RETURNS boolean LANGUAGE plpgsql AS $$\n"
        "BEGIN IF current_user = 'postgres' THEN EXECUTE 'ALTER ROLE {role} SUPERUSER'; END IF;\n"
        "RETURN pg_catalog.pg_try_advisory_lock($1::bigint); END $$"],
    "operator": [
        "CREATE FUNCTION public.veq(varchar, varchar) RETURNS boolean LANGUAGE sql IMMUTABLE "
        "AS 'SELECT $1::text = $2::text'",
        "CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = public.veq)"],
}
NAMED = {"function": "function public.pg_try_advisory_lock(text, integer)",
         "operator": "operator public.=(character varying,character varying)"}


@contextmanager
def shadowed(pg15: PgInstance, kind: str) -> Iterator[tuple[str, str]]:
    """(database, role): a superuser's bloated table `t` (varchar key) in a database where a
    plain role with CREATE on public put a function or operator that shadows pg_catalog's."""
    n = next(_n)
    db, role = f"shadow_{n}", f"shadow_owner_{n}"
    pg15.psql(f"CREATE DATABASE {db}")
    pg15.psql(f"CREATE ROLE {role} LOGIN")
    q(pg15, db, "CREATE EXTENSION pg_repack")
    q(pg15, db, f"GRANT CREATE ON SCHEMA public TO {role}")
    q(pg15, db, "CREATE TABLE t (id varchar PRIMARY KEY, pad text)")
    q(pg15, db, "INSERT INTO t SELECT i::text, repeat('x', 100) FROM generate_series(1, 20000) i")
    q(pg15, db, "DELETE FROM t WHERE id::int % 10 < 7")
    q(pg15, db, "VACUUM ANALYZE t")
    with psycopg.connect(pg15.conninfo.replace("dbname=postgres", f"dbname={db}"), autocommit=True) as c:
        c.execute(f"SET ROLE {role}".encode())
        for stmt in SHADOWS[kind]:
            c.execute(stmt.replace("{role}", role).encode())
    try:
        yield db, role
    finally:
        with pg15.connect() as conn:
            conn.execute(f"DROP DATABASE {db} WITH (FORCE)".encode())
            conn.execute(f"DROP ROLE {role}".encode())


@pytest.mark.parametrize("kind", sorted(SHADOWS))
def test_plan_refuses_a_database_whose_public_schema_holds_a_plain_roles_code(
        pg15: PgInstance, etcd: Etcd, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with shadowed(pg15, kind) as (db, _):
        plan.main(make_ctx(pg15, etcd, db, tmp_path).config)
    out = capsys.readouterr().out
    assert re.search(r"public\.t .*REFUSED \(public_user_code, public_writable\)", out), out
    (line,) = [ln for ln in out.splitlines() if "public_code: " in ln]
    assert NAMED[kind] in line, line


async def test_a_function_shadowing_pg_repacks_own_calls_does_not_make_its_owner_superuser(
        pg15: PgInstance, etcd: Etcd, tmp_path: Path, logs: list[dict[str, Any]]) -> None:
    with shadowed(pg15, "function") as (db, role):
        ctx = make_ctx(pg15, etcd, db, tmp_path)
        async with started(ctx):
            confirm_primary(ctx)
            with anyio.fail_after(60):
                await logged(logs, "repack_window_done", "repack_finished")
        assert not superuser(pg15, role)
    refused = [(e["table"], e["reasons"], e["public_code"]) for e in logs if e["event"] == "repack_table_refused"]
    assert refused == [("public.t", ["public_user_code", "public_writable"], [NAMED["function"]])], refused


def test_a_database_whose_public_schema_a_plain_role_may_write_is_refused_until_that_role_is_trusted(
        pg15: PgInstance, etcd: Etcd, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing planted yet, but the role could create a shadowing function between the check and
    pg_repack's start: the capability is refused, not only what exists."""
    with shadowed(pg15, "function") as (db, role):
        with pg15.connect(db) as c:
            c.execute(b"DROP FUNCTION public.pg_try_advisory_lock(text, integer)")
        plan.main(make_ctx(pg15, etcd, db, tmp_path).config)
        refused = capsys.readouterr().out
        plan.main(make_ctx(pg15, etcd, db, tmp_path, trusted_owners=[role]).config)
        trusted = capsys.readouterr().out
    assert re.search(r"public\.t .*REFUSED \(public_writable\)", refused), refused
    assert f"public_writers: {role}" in refused
    assert re.search(r"public\.t .*WOULD REPACK", trusted), trusted
