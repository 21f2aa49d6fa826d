-- Upgrade runs (tenantd migrate / POST /v1/migrations): one row per run, one per tenant result,
-- so progress and outcomes are visible from any daemon or CLI, and kept as history.

CREATE TABLE tenantd.migration_runs (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    actor        text NOT NULL,
    params       jsonb NOT NULL DEFAULT '{}',
    target_version integer NOT NULL,
    status       text NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'finished', 'stopped', 'interrupted')),
    stop_reason  text,
    total        integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE TABLE tenantd.migration_results (
    run_id       uuid NOT NULL REFERENCES tenantd.migration_runs (id) ON DELETE CASCADE,
    slug         text NOT NULL,
    outcome      text NOT NULL CHECK (outcome IN
                 ('upgraded', 'current', 'ahead', 'failed', 'skipped', 'not_found', 'not_started')),
    from_version integer,
    to_version   integer,
    detail       text,
    at           timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, slug)
);
