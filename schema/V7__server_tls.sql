-- TLS to each server, with libpq's settings: sslmode and the files (on the daemons' machines)
-- of the CA certificates and an optional client certificate. Used on every connection tenantd
-- opens to the server and given to tenants with their connection details. Existing servers
-- keep libpq's default, prefer.
ALTER TABLE tenantd.servers
    ADD COLUMN sslmode text NOT NULL DEFAULT 'prefer'
        CHECK (sslmode IN ('disable', 'prefer', 'require', 'verify-ca', 'verify-full')),
    ADD COLUMN sslrootcert text,
    ADD COLUMN sslcert text,
    ADD COLUMN sslkey text,
    ADD CONSTRAINT servers_tls_client_pair CHECK ((sslcert IS NULL) = (sslkey IS NULL)),
    ADD CONSTRAINT servers_tls_verify_root
        CHECK (sslmode NOT IN ('verify-ca', 'verify-full') OR sslrootcert IS NOT NULL);
