-- Warm spares: databases fully provisioned ahead of need (role, database, lockdown, tenant
-- migrations, marker 'tenantd:spare:<id>' on both), handed to a new tenant by renaming them.
-- Spares are not tenants: they live here, never in tenantd.tenants.

CREATE TABLE tenantd.spares (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- No cascade: a server is removed only once its spares are dropped.
    server         text NOT NULL REFERENCES tenantd.servers (name) ON UPDATE CASCADE,
    -- Derived from the id (tenantd_spare_<id>), used by nobody else; role and database alike.
    database_name  text NOT NULL UNIQUE CHECK (octet_length(database_name) <= 63),
    role_name      text NOT NULL UNIQUE CHECK (octet_length(role_name) <= 63),
    -- creating: being made by the holder of the server's refill lease (abandoned ones are
    -- dropped by the next holder); ready: may be taken; taken: a tenant's take is under way
    -- (the tenant's provisioning finishes it and deletes the row).
    state          text NOT NULL DEFAULT 'creating' CHECK (state IN ('creating', 'ready', 'taken')),
    -- The tenant migrations version the spare is at: only this build's version is handed out.
    schema_version integer NOT NULL DEFAULT 0,
    tenant_id      uuid UNIQUE REFERENCES tenantd.tenants (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    ready_at       timestamptz,
    taken_at       timestamptz,
    CHECK ((state = 'taken') = (tenant_id IS NOT NULL))
);
CREATE INDEX spares_take_idx ON tenantd.spares (server, schema_version, created_at) WHERE state = 'ready';

-- One refiller per server at a time (any daemon): a lease per server.
CREATE TABLE tenantd.spare_refills (
    server      text PRIMARY KEY REFERENCES tenantd.servers (name) ON UPDATE CASCADE ON DELETE CASCADE,
    lease_owner text NOT NULL,
    lease_until timestamptz NOT NULL
);
