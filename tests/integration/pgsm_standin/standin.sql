-- Stand-in for pg_stat_monitor 2.3 on PostgreSQL 15, checked against the real 2.3.2
-- (tests/integration/test_sampler_pgsm_real.py compares the two where the extension is built).
--
-- The sampler runs the SQL it runs against the real extension. What makes that possible:
-- * pg_stat_monitor_internal(boolean) has the real function's 73 OUT columns, names, types and
--   order (client_ip int8, relations and resp_calls comma-separated text); the view
--   pg_stat_monitor is built over it with the 65 columns of the PostgreSQL 15 view
--   (tests/data/pg_stat_monitor/pgsm_view_columns.csv). Like 2.3.2, showtext is ignored and
--   buckets older than bucket_time x max_buckets (whole seconds) are hidden at read time.
-- * settings: pgsm_standin.settings holds them as pg_settings gives them on the real server
--   (setting + unit, from tests/data/pg_stat_monitor/pgsm_settings.csv); pgsm_standin.pg_settings
--   shows them in place of the placeholders, and the placeholder GUCs themselves are set (by the
--   loader) to current_setting()'s form with the unit, '5s', '1min', as the real server says it.
-- * these objects live in schema pgsm_standin, first on the database's search_path; so are
--   clock_timestamp(), pg_postmaster_start_time() and pg_control_system(), shadowed by versions
--   returning pgsm_standin.fake values when set: a replay runs on the capture's clock.

CREATE SCHEMA pgsm_standin;

CREATE TABLE pgsm_standin.settings (
    name text PRIMARY KEY,
    setting text NOT NULL,
    unit text
);

CREATE TABLE pgsm_standin.entries (
    bucket bigint,
    userid oid,
    username text,
    dbid oid,
    datname text,
    client_ip bigint,
    queryid bigint,
    planid bigint,
    query text,
    query_plan text,
    pgsm_query_id bigint,
    top_queryid bigint,
    top_query text,
    application_name text,
    relations text,
    cmd_type integer,
    elevel integer NOT NULL DEFAULT 0,
    sqlcode text,
    message text,
    bucket_start_time timestamp with time zone,
    calls bigint,
    total_exec_time double precision DEFAULT 0,
    min_exec_time double precision DEFAULT 0,
    max_exec_time double precision DEFAULT 0,
    mean_exec_time double precision DEFAULT 0,
    stddev_exec_time double precision DEFAULT 0,
    rows bigint DEFAULT 0,
    plans bigint DEFAULT 0,
    total_plan_time double precision DEFAULT 0,
    min_plan_time double precision DEFAULT 0,
    max_plan_time double precision DEFAULT 0,
    mean_plan_time double precision DEFAULT 0,
    stddev_plan_time double precision DEFAULT 0,
    shared_blks_hit bigint DEFAULT 0,
    shared_blks_read bigint DEFAULT 0,
    shared_blks_dirtied bigint DEFAULT 0,
    shared_blks_written bigint DEFAULT 0,
    local_blks_hit bigint DEFAULT 0,
    local_blks_read bigint DEFAULT 0,
    local_blks_dirtied bigint DEFAULT 0,
    local_blks_written bigint DEFAULT 0,
    temp_blks_read bigint DEFAULT 0,
    temp_blks_written bigint DEFAULT 0,
    shared_blk_read_time double precision DEFAULT 0,
    shared_blk_write_time double precision DEFAULT 0,
    local_blk_read_time double precision DEFAULT 0,
    local_blk_write_time double precision DEFAULT 0,
    temp_blk_read_time double precision DEFAULT 0,
    temp_blk_write_time double precision DEFAULT 0,
    resp_calls text,
    cpu_user_time double precision DEFAULT 0,
    cpu_sys_time double precision DEFAULT 0,
    wal_records bigint DEFAULT 0,
    wal_fpi bigint DEFAULT 0,
    wal_bytes numeric DEFAULT 0,
    wal_buffers_full bigint DEFAULT 0,
    comments text,
    jit_functions bigint DEFAULT 0,
    jit_generation_time double precision DEFAULT 0,
    jit_inlining_count bigint DEFAULT 0,
    jit_inlining_time double precision DEFAULT 0,
    jit_optimization_count bigint DEFAULT 0,
    jit_optimization_time double precision DEFAULT 0,
    jit_emission_count bigint DEFAULT 0,
    jit_emission_time double precision DEFAULT 0,
    jit_deform_count bigint DEFAULT 0,
    jit_deform_time double precision DEFAULT 0,
    parallel_workers_to_launch integer DEFAULT 0,
    parallel_workers_launched integer DEFAULT 0,
    stats_since timestamp with time zone,
    minmax_stats_since timestamp with time zone,
    toplevel boolean DEFAULT true,
    bucket_done boolean DEFAULT false
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

-- The real server's pg_settings, with the placeholders' rows replaced by the extension's own.
-- Columns the capture has no value for are NULL (the sampler reads name, setting, unit).
CREATE VIEW pgsm_standin.pg_settings AS
SELECT p.* FROM pg_catalog.pg_settings p WHERE p.name NOT IN (SELECT name FROM pgsm_standin.settings)
UNION ALL
SELECT s.name, s.setting, s.unit, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, false
FROM pgsm_standin.settings s;

CREATE FUNCTION pgsm_standin.setting(name text) RETURNS float8 LANGUAGE sql STABLE AS
$$ SELECT setting::float8 FROM pgsm_standin.settings WHERE settings.name = 'pg_stat_monitor.' || setting.name $$;

CREATE FUNCTION pgsm_standin.pg_stat_monitor_version() RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT '2.3.2'::text $$;

CREATE FUNCTION pgsm_standin.get_cmd_type(cmd_type integer) RETURNS text LANGUAGE sql AS
$$ SELECT (ARRAY['', 'SELECT', 'UPDATE', 'INSERT', 'DELETE', 'MERGE', 'UTILITY', 'NOTHING'])[cmd_type + 1] $$;

-- set_histogram_bucket_timings() of 2.3.2 for histogram_min > 0 and histogram_max < 5e7:
-- [0, min], then buckets ranges with upper = min + e^(ln(max - min) / buckets * k), then (max, ...).
CREATE FUNCTION pgsm_standin.get_histogram_timings() RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    hmin float8 := pgsm_standin.setting('pgsm_histogram_min');
    hmax float8 := pgsm_standin.setting('pgsm_histogram_max');
    n int := pgsm_standin.setting('pgsm_histogram_buckets')::int;
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

-- Declared with OUT parameters, as the real one (the sampler reads its columns from proargnames);
-- they are the columns of pgsm_standin.entries, which follow the real signature.
DO $do$
BEGIN
    EXECUTE format(
        'CREATE FUNCTION pgsm_standin.pg_stat_monitor_internal(IN showtext boolean, %s) '
        'RETURNS SETOF record LANGUAGE sql VOLATILE AS $f$ SELECT e.* FROM pgsm_standin.entries e '
        'WHERE floor(extract(epoch FROM pgsm_standin.clock_timestamp() - e.bucket_start_time)) '
        '<= pgsm_standin.setting(''pgsm_bucket_time'') * pgsm_standin.setting(''pgsm_max_buckets'') $f$',
        (SELECT string_agg(format('OUT %I %s', attname, format_type(atttypid, atttypmod)), ', ' ORDER BY attnum)
         FROM pg_attribute WHERE attrelid = 'pgsm_standin.entries'::regclass AND attnum > 0));
END $do$;

CREATE VIEW pgsm_standin.pg_stat_monitor AS
SELECT bucket, bucket_start_time, userid, username, dbid, datname,
       '0.0.0.0'::inet + client_ip AS client_ip, pgsm_query_id, queryid, toplevel, top_queryid,
       query, comments, planid, query_plan, top_query, application_name,
       string_to_array(relations, ',') AS relations, cmd_type,
       pgsm_standin.get_cmd_type(cmd_type) AS cmd_type_text, elevel, sqlcode, message, calls,
       total_exec_time, min_exec_time, max_exec_time, mean_exec_time, stddev_exec_time, rows,
       shared_blks_hit, shared_blks_read, shared_blks_dirtied, shared_blks_written,
       local_blks_hit, local_blks_read, local_blks_dirtied, local_blks_written,
       temp_blks_read, temp_blks_written,
       shared_blk_read_time AS blk_read_time, shared_blk_write_time AS blk_write_time,
       temp_blk_read_time, temp_blk_write_time,
       string_to_array(resp_calls, ',') AS resp_calls, cpu_user_time, cpu_sys_time,
       wal_records, wal_fpi, wal_bytes, bucket_done, plans, total_plan_time, min_plan_time,
       max_plan_time, mean_plan_time, stddev_plan_time, jit_functions, jit_generation_time,
       jit_inlining_count, jit_inlining_time, jit_optimization_count, jit_optimization_time,
       jit_emission_count, jit_emission_time
FROM pgsm_standin.pg_stat_monitor_internal(true)
ORDER BY bucket_start_time;
