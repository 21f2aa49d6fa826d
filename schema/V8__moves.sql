-- Fleet operations: a tenant being moved to another server is MOVING (lending answers 503),
-- and each move or drain is an operation row, resumable from its recorded step.

ALTER TABLE tenantd.tenants DROP CONSTRAINT tenants_status_check;
ALTER TABLE tenantd.tenants ADD CONSTRAINT tenants_status_check CHECK (status IN (
    'PENDING', 'CREATING', 'MIGRATING', 'READY', 'ERROR', 'SUSPENDED', 'DELETING', 'DELETED', 'MOVING'));

CREATE TABLE tenantd.operations (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    kind          text NOT NULL CHECK (kind IN ('move', 'drain')),
    -- move: the tenant; drain: NULL.
    tenant_id     uuid REFERENCES tenantd.tenants (id),
    -- move: the source server; drain: the server drained.
    server        text NOT NULL,
    -- move: the target server.
    target        text,
    -- The last step done (move: started, closed, copied, promoted, switched, done).
    step          text NOT NULL DEFAULT 'started',
    state         text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'succeeded', 'failed')),
    error         text,
    detail        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(detail) = 'object'),
    drop_source   boolean NOT NULL DEFAULT false,
    -- A moved-away source database kept on `server` (with our marker) until drop_after.
    kept_database text,
    drop_after    timestamptz,
    dropped_at    timestamptz,
    actor         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
-- At most one running move per tenant.
CREATE UNIQUE INDEX operations_one_move ON tenantd.operations (tenant_id)
    WHERE kind = 'move' AND state = 'running';
-- Kept source databases waiting for their drop.
CREATE INDEX operations_kept_idx ON tenantd.operations (drop_after)
    WHERE kept_database IS NOT NULL AND dropped_at IS NULL;
CREATE TRIGGER operations_touch BEFORE UPDATE ON tenantd.operations
    FOR EACH ROW EXECUTE FUNCTION tenantd.touch();
