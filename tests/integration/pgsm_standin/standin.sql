-- Schema-faithful stand-in for pg_stat_monitor 2.3 on PostgreSQL 15 (65 columns, same names,
-- types and order as the real view: tests/data/pg_stat_monitor/pgsm_view_columns.csv).
--
-- The sampler runs the SQL it runs against the real extension. What makes that possible:
-- * the view, pg_stat_monitor_version() and get_histogram_timings() live in schema pgsm_standin,
--   put on the database's search_path (the real extension lives in its install schema);
-- * pg_stat_monitor.* settings are placeholder GUCs set with ALTER DATABASE ... SET, so
--   current_setting('pg_stat_monitor.pgsm_bucket_time', true) reads them as on a real server;
-- * clock_timestamp(), pg_postmaster_start_time() and pg_control_system() are shadowed in
--   pgsm_standin (search_path "pgsm_standin, pg_catalog, public" puts it before pg_catalog) by
--   versions that return pgsm_standin.fake values when set and the real ones otherwise: a
--   replay runs the capture on its own clock, a synthetic test on the real one.
-- * the view hides buckets older than bucket_time x max_buckets at read time, as 2.3.2 does.

CREATE SCHEMA pgsm_standin;

CREATE TABLE pgsm_standin.entries (
    bucket bigint,
    bucket_start_time timestamp with time zone,
    userid oid,
    username text,
    dbid oid,
    datname text,
    client_ip inet,
    pgsm_query_id bigint,
    queryid bigint,
    toplevel boolean,
    top_queryid bigint,
    query text,
    comments text,
    planid bigint,
    query_plan text,
    top_query text,
    application_name text,
    relations text[],
    cmd_type integer,
    cmd_type_text text,
    elevel integer,
    sqlcode text,
    message text,
    calls bigint,
    total_exec_time double precision,
    min_exec_time double precision,
    max_exec_time double precision,
    mean_exec_time double precision,
    stddev_exec_time double precision,
    rows bigint,
    shared_blks_hit bigint,
    shared_blks_read bigint,
    shared_blks_dirtied bigint,
    shared_blks_written bigint,
    local_blks_hit bigint,
    local_blks_read bigint,
    local_blks_dirtied bigint,
    local_blks_written bigint,
    temp_blks_read bigint,
    temp_blks_written bigint,
    blk_read_time double precision,
    blk_write_time double precision,
    temp_blk_read_time double precision,
    temp_blk_write_time double precision,
    resp_calls text[],
    cpu_user_time double precision,
    cpu_sys_time double precision,
    wal_records bigint,
    wal_fpi bigint,
    wal_bytes numeric,
    bucket_done boolean,
    plans bigint,
    total_plan_time double precision,
    min_plan_time double precision,
    max_plan_time double precision,
    mean_plan_time double precision,
    stddev_plan_time double precision,
    jit_functions bigint,
    jit_generation_time double precision,
    jit_inlining_count bigint,
    jit_inlining_time double precision,
    jit_optimization_count bigint,
    jit_optimization_time double precision,
    jit_emission_count bigint,
    jit_emission_time double precision
);

CREATE TABLE pgsm_standin.fake (
    one int PRIMARY KEY CHECK (one = 1),
    now timestamptz,
    postmaster_start timestamptz,
    system_identifier bigint
);
INSERT INTO pgsm_standin.fake VALUES (1, NULL, NULL, NULL);

CREATE FUNCTION pgsm_standin.clock_timestamp() RETURNS timestamptz LANGUAGE sql VOLATILE AS
$$ SELECT coalesce((SELECT now FROM pgsm_standin.fake), pg_catalog.clock_timestamp()) $$;

CREATE FUNCTION pgsm_standin.pg_postmaster_start_time() RETURNS timestamptz LANGUAGE sql STABLE AS
$$ SELECT coalesce((SELECT postmaster_start FROM pgsm_standin.fake), pg_catalog.pg_postmaster_start_time()) $$;

CREATE FUNCTION pgsm_standin.pg_control_system(
    OUT pg_control_version integer, OUT catalog_version_no integer,
    OUT system_identifier bigint, OUT pg_control_last_modified timestamptz)
LANGUAGE sql STABLE AS
$$ SELECT c.pg_control_version, c.catalog_version_no,
          coalesce((SELECT f.system_identifier FROM pgsm_standin.fake f), c.system_identifier),
          c.pg_control_last_modified
   FROM pg_catalog.pg_control_system() c $$;

CREATE FUNCTION pgsm_standin.pg_stat_monitor_version() RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT '2.3.2'::text $$;

-- set_histogram_bucket_timings() of 2.3.2 for histogram_min > 0 and histogram_max < 5e7:
-- [0, min], then buckets ranges with upper = min + e^(ln(max - min) / buckets * k), then (max, ...).
CREATE FUNCTION pgsm_standin.get_histogram_timings() RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    hmin float8 := coalesce(current_setting('pg_stat_monitor.pgsm_histogram_min', true), '1')::float8;
    hmax float8 := coalesce(current_setting('pg_stat_monitor.pgsm_histogram_max', true), '100000')::float8;
    n int := coalesce(current_setting('pg_stat_monitor.pgsm_histogram_buckets', true), '20')::int;
    size float8 := ln(hmax - hmin) / n;
    lo float8 := hmin;
    hi float8;
    parts text[] := ARRAY[format('{%s - %s}', to_char(0, 'FM0.000'), to_char(hmin, 'FM999999990.000'))];
BEGIN
    FOR k IN 1..n LOOP
        hi := hmin + exp(size * k);
        parts := parts || format('(%s - %s}', to_char(lo, 'FM999999990.000'), to_char(hi, 'FM999999990.000'));
        lo := hi;
    END LOOP;
    parts := parts || format('(%s - ...}', to_char(hmax, 'FM999999990.000'));
    RETURN '{' || array_to_string(parts, ', ') || '}';
END $$;

CREATE FUNCTION pgsm_standin.pg_stat_monitor_reset() RETURNS void LANGUAGE sql AS
$$ DELETE FROM pgsm_standin.entries $$;

CREATE VIEW pgsm_standin.pg_stat_monitor AS
SELECT e.*
FROM pgsm_standin.entries e
WHERE floor(extract(epoch FROM pgsm_standin.clock_timestamp() - e.bucket_start_time))
      <= current_setting('pg_stat_monitor.pgsm_bucket_time')::int
         * current_setting('pg_stat_monitor.pgsm_max_buckets')::int
ORDER BY e.bucket_start_time;
