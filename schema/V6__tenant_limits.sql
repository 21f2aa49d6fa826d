-- Per-tenant limits: overrides of the [limits] settings ({"connections": 50, ...}) and what was
-- last applied to the tenant's role on its server (NULL: never), so any daemon can find the
-- tenants whose role does not match yet and bring it in line.
ALTER TABLE tenantd.tenants ADD COLUMN limits jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(limits) = 'object');
ALTER TABLE tenantd.tenants ADD COLUMN limits_applied jsonb;
