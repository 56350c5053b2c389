-- Trellis warehouse, version 1: the tables, their row-level security, and
-- the sink's own bookkeeping. Applied by the sink (the owner role) in one
-- transaction; `trellis-warehouse setup` (an administrator) has created the
-- roles it grants to: `trellis_readers` (every tenant's reader role is a
-- member) and `trellis_service` (a trusted multi-tenant service).

CREATE SCHEMA IF NOT EXISTS trellis;

-- ---------------------------------------------------------------------------
-- The sink's bookkeeping: written in the same transaction as the rows.
-- ---------------------------------------------------------------------------

-- Next offset to read per input partition: the rows of every offset below
-- it are in the tables (exactly-once without broker transactions).
CREATE TABLE trellis_sink.offsets (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL CHECK (next_offset >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

-- The first answer to each saga command: a re-sent command gets it again.
CREATE TABLE trellis_sink.receipts (
    command_id text  PRIMARY KEY,
    answer     jsonb NOT NULL
);

-- Learners erased here, by SHA-256(tenant ‖ 0x00 ‖ pseudonym): a replay of
-- the topics cannot bring their rows back, and the pseudonym itself is not
-- kept.
CREATE TABLE trellis_sink.erased_learners (
    learner_hash bytea  PRIMARY KEY,
    tenant_id    text   NOT NULL,
    request_id   text   NOT NULL,
    erased_at    timestamptz NOT NULL
);

-- Which tenant each reader role may see (written by `trellis-warehouse
-- grant`). A reader sees its own row only, through the policy below.
CREATE TABLE trellis_sink.reader_roles (
    role_name  name PRIMARY KEY,
    tenant_id  text NOT NULL CHECK (tenant_id <> ''),
    granted_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE trellis_sink.reader_roles ENABLE ROW LEVEL SECURITY;
ALTER TABLE trellis_sink.reader_roles FORCE ROW LEVEL SECURITY;
CREATE POLICY own_mapping ON trellis_sink.reader_roles FOR SELECT
    USING (role_name = current_user);
CREATE POLICY sink_manages ON trellis_sink.reader_roles TO CURRENT_USER
    USING (true) WITH CHECK (true);

-- The tenant the current role may see, or NULL (no rows). A reader role's
-- tenant comes from its mapping, which it cannot write; the service role's
-- from `SET LOCAL trellis.tenant` in its transaction. Nothing else sees a
-- tenant: an unknown role, a reader that did `SET ROLE trellis_readers`, the
-- service without the setting.
CREATE FUNCTION trellis.visible_tenant() RETURNS text
    LANGUAGE sql STABLE SECURITY INVOKER
AS $$
    SELECT CASE
        WHEN current_user = 'trellis_service'
            THEN nullif(current_setting('trellis.tenant', true), '')
        ELSE (SELECT r.tenant_id FROM trellis_sink.reader_roles r
               WHERE r.role_name = current_user)
    END
$$;

-- ---------------------------------------------------------------------------
-- The tables warehouses read. `tenant_id` on every row; lineage columns say
-- which record a row came from.
-- ---------------------------------------------------------------------------

-- Learner × activity progress (topic `progress`, compacted: the latest
-- record per key; a tombstone deletes the row).
CREATE TABLE trellis.progress (
    tenant_id         text    NOT NULL CHECK (tenant_id <> ''),
    learner           text    NOT NULL,
    activity_id       text    NOT NULL,
    course_id         text,
    attempts          integer NOT NULL,
    best_score_scaled double precision,
    last_score_scaled double precision,
    success           boolean,
    completion        text    NOT NULL,
    first_activity_at timestamptz NOT NULL,
    last_activity_at  timestamptz NOT NULL,
    evidence          jsonb   NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint  NOT NULL,
    PRIMARY KEY (tenant_id, learner, activity_id)
);

-- Completions and passes (topic `completions`; one row per completion id).
CREATE TABLE trellis.completions (
    tenant_id          text   NOT NULL CHECK (tenant_id <> ''),
    completion_id      text   NOT NULL,
    learner            text   NOT NULL,
    activity_id        text   NOT NULL,
    course_id          text,
    kind               text   NOT NULL,
    score_scaled       double precision,
    completed_at       timestamptz NOT NULL,
    evidence_event_ids text[] NOT NULL,
    source_partition   integer NOT NULL,
    source_offset      bigint  NOT NULL,
    PRIMARY KEY (tenant_id, completion_id)
);
CREATE INDEX completions_by_learner ON trellis.completions (tenant_id, learner);

-- Tumbling-window aggregates (topic `analytics.aggregates`; the highest
-- revision of each cell).
CREATE TABLE trellis.aggregates (
    tenant_id         text    NOT NULL CHECK (tenant_id <> ''),
    window_length     text    NOT NULL,
    window_start      timestamptz NOT NULL,
    dimension         text    NOT NULL,
    dimension_value   text    NOT NULL,
    events            bigint  NOT NULL,
    distinct_learners bigint  NOT NULL,
    completions       bigint  NOT NULL,
    passes            bigint  NOT NULL,
    fails             bigint  NOT NULL,
    avg_score_scaled  double precision,
    suppressed        boolean NOT NULL,
    revision          integer NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint  NOT NULL,
    PRIMARY KEY (tenant_id, window_length, window_start, dimension, dimension_value)
);

-- Row-level security on every table, forced (the owner is subject to it
-- too), failing closed: a role no policy names sees and writes nothing.
-- The tenant policy has the same USING and WITH CHECK; the sink writes
-- through its own policy, as the owner role that ran this migration.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['progress', 'completions', 'aggregates'] LOOP
        EXECUTE format('ALTER TABLE trellis.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE trellis.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_rows ON trellis.%I '
            'USING (tenant_id = trellis.visible_tenant()) '
            'WITH CHECK (tenant_id = trellis.visible_tenant())', t);
        EXECUTE format(
            'CREATE POLICY sink_writes ON trellis.%I TO CURRENT_USER '
            'USING (true) WITH CHECK (true)', t);
    END LOOP;
END
$$;

-- Readers read; nobody but the sink writes.
REVOKE ALL ON ALL TABLES IN SCHEMA trellis FROM PUBLIC;
GRANT USAGE ON SCHEMA trellis TO trellis_readers, trellis_service;
GRANT SELECT ON trellis.progress, trellis.completions, trellis.aggregates
    TO trellis_readers, trellis_service;
GRANT EXECUTE ON FUNCTION trellis.visible_tenant() TO trellis_readers, trellis_service;
-- The policy reads the mapping as the querying role (each sees its own row).
GRANT USAGE ON SCHEMA trellis_sink TO trellis_readers, trellis_service;
GRANT SELECT ON trellis_sink.reader_roles TO trellis_readers, trellis_service;
