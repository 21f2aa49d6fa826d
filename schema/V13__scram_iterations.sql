-- The PBKDF2 iteration count of each tenant role's SCRAM verifier. Tenant passwords are 24
-- random bytes made by tenantd, which no iteration count makes harder to guess; PostgreSQL's
-- default of 4096 only costs time: on the server at every CREATE ROLE / ALTER ROLE ...
-- PASSWORD (it checks the new verifier against the empty password), and in the client at
-- every login. Builds from this schema on write the count they used with the password;
-- NULL is a role made before, with 4096. Verifiers are computed again from the sealed
-- password (PgBouncer's auth file), so the count must be known per tenant.
ALTER TABLE tenantd.tenants ADD COLUMN scram_iterations integer CHECK (scram_iterations > 0);
