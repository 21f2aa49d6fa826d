-- A run that stops beating (its process crashed) is shown as interrupted, not "running" forever.
ALTER TABLE tenantd.migration_runs ADD COLUMN heartbeat_at timestamptz NOT NULL DEFAULT now();

-- Any change of a server that daemons cache (address, admin role, password) is notified too.
DROP TRIGGER servers_notify_update ON tenantd.servers;
CREATE TRIGGER servers_notify_update AFTER UPDATE ON tenantd.servers
    FOR EACH ROW
    WHEN ((OLD.status, OLD.health, OLD.weight, OLD.max_tenants, OLD.region, OLD.host, OLD.port,
           OLD.admin_user, OLD.admin_password_sealed, OLD.maintenance_db)
          IS DISTINCT FROM
          (NEW.status, NEW.health, NEW.weight, NEW.max_tenants, NEW.region, NEW.host, NEW.port,
           NEW.admin_user, NEW.admin_password_sealed, NEW.maintenance_db))
    EXECUTE FUNCTION tenantd.notify('name');
