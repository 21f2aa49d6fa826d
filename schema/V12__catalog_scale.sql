-- A catalog of 100,000 tenants costs what an empty one does on the hot paths: placement,
-- claiming, the workers' polls and the tenant listing read indexes and a small tally, never
-- every tenant. `tenantd bench catalog` measures it; tests/it/catalog_scale.rs reads the plans.

-- Tenants per (server, status): placement's loads and the tenants{status} gauge read this
-- instead of counting rows. Kept exact by a trigger in the transaction of every change;
-- '' is "not placed yet".
CREATE TABLE tenantd.tenant_tallies (
    server  text NOT NULL,
    status  text NOT NULL,
    tenants bigint NOT NULL CHECK (tenants >= 0),
    PRIMARY KEY (server, status)
);

-- SECURITY DEFINER: a sign-up role allowed only to INSERT tenants (README, "A catalog role for
-- sign-up systems")
-- keeps the tallies right without any right on them; the path is pinned.
CREATE FUNCTION tenantd.tally_tenants() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    gone text[];
    came text[];
BEGIN
    IF TG_OP <> 'INSERT' THEN gone := ARRAY[coalesce(OLD.server, ''), OLD.status]; END IF;
    IF TG_OP <> 'DELETE' THEN came := ARRAY[coalesce(NEW.server, ''), NEW.status]; END IF;
    IF gone IS NOT DISTINCT FROM came THEN
        RETURN NULL;
    END IF;
    -- The two tally rows are always locked in key order, so two transactions moving tenants
    -- in opposite directions cannot deadlock on them.
    IF gone IS NOT NULL AND (came IS NULL OR gone < came) THEN
        UPDATE tenantd.tenant_tallies SET tenants = tenants - 1 WHERE server = gone[1] AND status = gone[2];
        gone := NULL;
    END IF;
    IF came IS NOT NULL THEN
        INSERT INTO tenantd.tenant_tallies AS t (server, status, tenants) VALUES (came[1], came[2], 1)
            ON CONFLICT (server, status) DO UPDATE SET tenants = t.tenants + 1;
    END IF;
    IF gone IS NOT NULL THEN
        UPDATE tenantd.tenant_tallies SET tenants = tenants - 1 WHERE server = gone[1] AND status = gone[2];
    END IF;
    RETURN NULL;
END $$;

-- The trigger first: creating it locks out writers until this transaction commits, so the
-- initial counts below are exact even with older daemons still running.
CREATE TRIGGER tenants_tally AFTER INSERT OR DELETE OR UPDATE OF server, status ON tenantd.tenants
    FOR EACH ROW EXECUTE FUNCTION tenantd.tally_tenants();

INSERT INTO tenantd.tenant_tallies (server, status, tenants)
    SELECT coalesce(server, ''), status, count(*) FROM tenantd.tenants GROUP BY 1, 2;

-- Lookups by slug that may find a DELETED row (`tenant show` of a dropped tenant): the
-- unique index covers live tenants only.
CREATE INDEX tenants_slug_idx ON tenantd.tenants (slug);
-- Listing by status (and the polls for MOVING, PENDING-unplaced, ...), in slug order.
CREATE INDEX tenants_status_slug_idx ON tenantd.tenants (status, slug);
-- Listing by server, in slug order (replaces the index on server alone).
CREATE INDEX tenants_server_slug_idx ON tenantd.tenants (server, slug);
DROP INDEX tenantd.tenants_server_idx;
