-- Reconcile: the catalog compared with every server. One row per run (the newest ones are
-- kept, GET /v1/reconcile answers the last finished one), and a one-row lease so that one
-- process at a time runs it and the daemons run it once per reconcile.interval between them.
CREATE TABLE tenantd.reconcile_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor       text NOT NULL,
    repair      boolean NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz NOT NULL DEFAULT now(),
    -- The report: {findings: [...], errors: [...], counts: {kind: n}, ...}.
    report      jsonb NOT NULL CHECK (jsonb_typeof(report) = 'object')
);

CREATE TABLE tenantd.reconcile_lease (
    id              boolean PRIMARY KEY DEFAULT true CHECK (id),
    lease_owner     text,
    lease_until     timestamptz,
    -- When the last run (of any process) started: the daemons' interval counts from here.
    last_started_at timestamptz
);
INSERT INTO tenantd.reconcile_lease DEFAULT VALUES;
