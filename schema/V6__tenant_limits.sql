-- Per-tenant limits: overrides of the [limits] settings ({"connections": 50, ...}) and what was
-- last applied to the tenant's role on its server (NULL: never), so any daemon can find the
-- tenants whose role does not match yet and bring it in line.
ALTER TABLE tenantd.tenants ADD COLUMN limits jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(limits) = 'object');
ALTER TABLE tenantd.tenants ADD COLUMN limits_applied jsonb;

-- Storage quotas: the size last measured, and whether the tenant is read-only for being over
-- its quota (the flag flips in the same statement as its quota.exceeded / quota.ok event).
ALTER TABLE tenantd.tenants ADD COLUMN database_bytes bigint;
ALTER TABLE tenantd.tenants ADD COLUMN over_quota boolean NOT NULL DEFAULT false;

-- A tenant going over or back under its quota is a change daemons cache (lending answers
-- writes differently): notify it like the others.
DROP TRIGGER tenants_notify_update ON tenantd.tenants;
CREATE TRIGGER tenants_notify_update AFTER UPDATE ON tenantd.tenants
    FOR EACH ROW
    WHEN ((OLD.status, OLD.next_attempt_at, OLD.token_hash, OLD.schema_version, OLD.server, OLD.database_name,
           OLD.over_quota, OLD.role_password_sealed)
          IS DISTINCT FROM
          (NEW.status, NEW.next_attempt_at, NEW.token_hash, NEW.schema_version, NEW.server, NEW.database_name,
           NEW.over_quota, NEW.role_password_sealed))
    EXECUTE FUNCTION tenantd.notify('slug');
