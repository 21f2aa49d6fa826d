-- Lending: tenant tokens are looked up by hash, and every change that a daemon caches
-- (token, schema version, placement) is notified so all daemons drop stale entries.

CREATE UNIQUE INDEX tenants_token_hash_idx ON tenantd.tenants (token_hash) WHERE token_hash IS NOT NULL;

DROP TRIGGER tenants_notify_update ON tenantd.tenants;
CREATE TRIGGER tenants_notify_update AFTER UPDATE ON tenantd.tenants
    FOR EACH ROW
    WHEN ((OLD.status, OLD.next_attempt_at, OLD.token_hash, OLD.schema_version, OLD.server, OLD.database_name)
          IS DISTINCT FROM
          (NEW.status, NEW.next_attempt_at, NEW.token_hash, NEW.schema_version, NEW.server, NEW.database_name))
    EXECUTE FUNCTION tenantd.notify('slug');

-- Notifications carry the new status, so daemons can close pools of tenants leaving READY.
CREATE OR REPLACE FUNCTION tenantd.notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tenantd', json_build_object(
        'table', TG_TABLE_NAME,
        'op', TG_OP,
        'key', to_jsonb(NEW) ->> TG_ARGV[0],
        'status', to_jsonb(NEW) ->> 'status'
    )::text);
    RETURN NEW;
END $$;
