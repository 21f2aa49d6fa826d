-- tenantd catalog, version 1. Everything lives in schema tenantd (created before this runs),
-- so the catalog may share a database with the product's own tables.

CREATE TABLE tenantd.servers (
    name                  text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_-]{0,62}$'),
    host                  text NOT NULL CHECK (host <> ''),
    port                  integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    admin_user            text NOT NULL CHECK (admin_user <> ''),
    -- AES-GCM-SIV envelope v1.<key id>.<base64>, associated data = 'server:' || name.
    admin_password_sealed text NOT NULL CHECK (admin_password_sealed LIKE 'v1.%'),
    maintenance_db        text NOT NULL DEFAULT 'postgres',
    weight                integer NOT NULL DEFAULT 100 CHECK (weight > 0),
    max_tenants           integer CHECK (max_tenants >= 0),      -- NULL: no limit
    region                text,
    status                text NOT NULL DEFAULT 'active'
                          CHECK (status IN ('active', 'draining', 'maintenance')),
    -- 'unknown' until the first check: such a server is not eligible for placement.
    health                text NOT NULL DEFAULT 'unknown'
                          CHECK (health IN ('unknown', 'healthy', 'unhealthy')),
    health_latency_ms     double precision,
    health_checked_at     timestamptz,
    health_error          text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenantd.tenants (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug                  text NOT NULL UNIQUE CHECK (slug ~ '^[a-z][a-z0-9_-]{2,47}$'),
    -- Placement asked for (narrowing) and placement made.
    requested_server      text,
    requested_region      text,
    server                text REFERENCES tenantd.servers (name) ON UPDATE CASCADE,
    database_name         text UNIQUE CHECK (octet_length(database_name) <= 63),
    role_name             text UNIQUE CHECK (octet_length(role_name) <= 63),
    -- Envelope sealed with associated data = 'tenant:' || id.
    role_password_sealed  text CHECK (role_password_sealed LIKE 'v1.%'),
    -- Hex SHA-256 of the tenant's bearer token; the token itself is never stored.
    token_hash            text,
    status                text NOT NULL DEFAULT 'PENDING' CHECK (status IN (
                              'PENDING', 'CREATING', 'MIGRATING', 'READY', 'ERROR',
                              'SUSPENDED', 'DELETING', 'DELETED')),
    schema_version        integer NOT NULL DEFAULT 0,
    attempts              integer NOT NULL DEFAULT 0,
    next_attempt_at       timestamptz NOT NULL DEFAULT now(),
    last_error            text,
    lease_owner           text,
    lease_until           timestamptz,
    labels                jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(labels) = 'object'),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    ready_at              timestamptz
);

-- Work queue: tenants a worker may claim.
CREATE INDEX tenants_work_idx ON tenantd.tenants (next_attempt_at)
    WHERE status IN ('PENDING', 'CREATING', 'MIGRATING', 'DELETING');
CREATE INDEX tenants_server_idx ON tenantd.tenants (server);

CREATE TABLE tenantd.tenant_events (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenantd.tenants (id) ON DELETE CASCADE,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind      text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}',
    actor     text NOT NULL
);
CREATE INDEX tenant_events_tenant_idx ON tenantd.tenant_events (tenant_id, id);

-- updated_at maintenance.
CREATE FUNCTION tenantd.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER servers_touch BEFORE UPDATE ON tenantd.servers
    FOR EACH ROW EXECUTE FUNCTION tenantd.touch();
CREATE TRIGGER tenants_touch BEFORE UPDATE ON tenantd.tenants
    FOR EACH ROW EXECUTE FUNCTION tenantd.touch();

-- NOTIFY tenantd on every change that can create work: a new tenant, a status or schedule
-- change, a server change that matters to placement. Lease renewals and health latency
-- updates alone do not notify.
CREATE FUNCTION tenantd.notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tenantd', json_build_object(
        'table', TG_TABLE_NAME,
        'op', TG_OP,
        'key', to_jsonb(NEW) ->> TG_ARGV[0]
    )::text);
    RETURN NEW;
END $$;
CREATE TRIGGER tenants_notify_insert AFTER INSERT ON tenantd.tenants
    FOR EACH ROW EXECUTE FUNCTION tenantd.notify('slug');
CREATE TRIGGER tenants_notify_update AFTER UPDATE ON tenantd.tenants
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.next_attempt_at IS DISTINCT FROM NEW.next_attempt_at)
    EXECUTE FUNCTION tenantd.notify('slug');
CREATE TRIGGER servers_notify_insert AFTER INSERT ON tenantd.servers
    FOR EACH ROW EXECUTE FUNCTION tenantd.notify('name');
CREATE TRIGGER servers_notify_update AFTER UPDATE ON tenantd.servers
    FOR EACH ROW
    WHEN ((OLD.status, OLD.health, OLD.weight, OLD.max_tenants, OLD.region)
          IS DISTINCT FROM (NEW.status, NEW.health, NEW.weight, NEW.max_tenants, NEW.region))
    EXECUTE FUNCTION tenantd.notify('name');
