-- Lifecycle: restores (driven only by the restore command that has the file), drops with a
-- final archive, and daily backups run by one daemon per day.

ALTER TABLE tenantd.tenants ADD COLUMN restore_source text;
-- Where a deletion writes its final archive (NULL: none asked for).
ALTER TABLE tenantd.tenants ADD COLUMN delete_archive_dir text;
ALTER TABLE tenantd.tenants ADD COLUMN deleted_at timestamptz;

-- Deleted tenants keep their row (audit) but free their slug and names for reuse.
ALTER TABLE tenantd.tenants DROP CONSTRAINT tenants_slug_key;
ALTER TABLE tenantd.tenants DROP CONSTRAINT tenants_database_name_key;
ALTER TABLE tenantd.tenants DROP CONSTRAINT tenants_role_name_key;
CREATE UNIQUE INDEX tenants_slug_key ON tenantd.tenants (slug) WHERE status <> 'DELETED';
CREATE UNIQUE INDEX tenants_database_name_key ON tenantd.tenants (database_name) WHERE status <> 'DELETED';
CREATE UNIQUE INDEX tenants_role_name_key ON tenantd.tenants (role_name) WHERE status <> 'DELETED';

-- One row per day: the daemon holding its lease runs that day's backups; another daemon
-- takes over (skipping tenants already backed up) when the lease lapses unfinished.
CREATE TABLE tenantd.backup_runs (
    day          date PRIMARY KEY,
    owner        text NOT NULL,
    lease_until  timestamptz NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    succeeded    integer NOT NULL DEFAULT 0,
    failed       integer NOT NULL DEFAULT 0
);
