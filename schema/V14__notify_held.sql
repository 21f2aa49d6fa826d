-- Notifications about a tenant also say whether its lease is in force: a step's status change
-- made by the worker holding the tenant is no work for any other worker, and waking every idle
-- worker of every daemon for it (each runs a claim) only loaded the catalog while a
-- provisioning ran. Daemons that do not know the field ignore it.
CREATE OR REPLACE FUNCTION tenantd.notify() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('tenantd', json_build_object(
        'table', TG_TABLE_NAME,
        'op', TG_OP,
        'key', to_jsonb(NEW) ->> TG_ARGV[0],
        'status', to_jsonb(NEW) ->> 'status',
        'held', coalesce((to_jsonb(NEW) ->> 'lease_until')::timestamptz > now(), false)
    )::text);
    RETURN NEW;
END $$;
