-- A catalog of 100,000 tenants costs what an empty one does on the hot paths: placement,
-- claiming, the workers' polls and the tenant listing read indexes and a small tally, never
-- every tenant. `tenantd bench catalog` measures it; tests/it/catalog_scale.rs reads the plans.

-- Tenants per (server, status): placement's loads and the tenants{status} gauge read this
-- instead of counting rows. Kept exact by statement-level triggers in the transaction of
-- every change; '' is "not placed yet".
CREATE TABLE tenantd.tenant_tallies (
    server  text NOT NULL,
    status  text NOT NULL,
    tenants bigint NOT NULL,
    PRIMARY KEY (server, status)
);

-- Once per statement, from its transition tables: one net change per (server, status), so
-- a statement touching 100,000 tenants writes each tally row once (a row trigger would
-- update one tally row 100,000 times in one transaction, each update walking the row's
-- ever longer chain of versions). The rows are written in key order, so two transactions
-- cannot deadlock on them.
--
-- SECURITY DEFINER: a sign-up role allowed only to INSERT tenants (README, "A catalog role
-- for sign-up systems") keeps the tallies right without any right on them; the path is
-- pinned.
CREATE FUNCTION tenantd.tally_tenants() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO tenantd.tenant_tallies AS t (server, status, tenants)
            SELECT coalesce(server, ''), status, count(*) FROM added GROUP BY 1, 2 ORDER BY 1, 2
            ON CONFLICT (server, status) DO UPDATE SET tenants = t.tenants + EXCLUDED.tenants;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO tenantd.tenant_tallies AS t (server, status, tenants)
            SELECT coalesce(server, ''), status, -count(*) FROM removed GROUP BY 1, 2 ORDER BY 1, 2
            ON CONFLICT (server, status) DO UPDATE SET tenants = t.tenants + EXCLUDED.tenants;
    ELSE
        INSERT INTO tenantd.tenant_tallies AS t (server, status, tenants)
            SELECT server, status, sum(n) FROM (
                SELECT coalesce(server, '') AS server, status, -1 AS n FROM removed
                UNION ALL
                SELECT coalesce(server, ''), status, 1 FROM added
            ) changes GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2
            ON CONFLICT (server, status) DO UPDATE SET tenants = t.tenants + EXCLUDED.tenants;
    END IF;
    RETURN NULL;
END $$;

-- The triggers first: creating them locks out writers until this transaction commits, so
-- the initial counts below are exact even with older daemons still running.
CREATE TRIGGER tenants_tally_insert AFTER INSERT ON tenantd.tenants
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION tenantd.tally_tenants();
CREATE TRIGGER tenants_tally_update AFTER UPDATE ON tenantd.tenants
    REFERENCING OLD TABLE AS removed NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION tenantd.tally_tenants();
CREATE TRIGGER tenants_tally_delete AFTER DELETE ON tenantd.tenants
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION tenantd.tally_tenants();

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
