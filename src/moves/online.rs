//! `--online` moves (logical replication per database) and their prerequisites.
//!
//! An online move needs, on the **target**: PostgreSQL 16 or later with the
//! `pg_create_subscription` role, the admin role a member of it, logical replication workers
//! and slots for the subscription; the tenant's role there must *not* be able to create
//! subscriptions. On the **source**: `wal_level = logical`, a free replication slot and WAL
//! sender, an admin role with `REPLICATION` (the subscription connects as it), the tenant's
//! role without `REPLICATION`; in the tenant's database a replica identity on every table (a
//! primary key, or `REPLICA IDENTITY FULL` / `USING INDEX`), no unlogged table and no large
//! object (neither is replicated).
//!
//! [`check`] reads all of them and refuses with the list of what is missing. This build has
//! no replication-based copy: when nothing is missing it still refuses, saying so, rather than
//! fall back to the offline copy unasked.

use tokio_postgres::Client;

use super::MoveError;
use crate::admin::AdminTarget;
use crate::catalog::CatalogError;
use crate::catalog::tenants::TenantStatus;
use crate::core::Core;
use crate::target::TenantTarget;

/// Checks every prerequisite of an online move of `slug` to `to`; always an error on this
/// build: [`MoveError::OnlineRefused`] listing what is missing, or
/// [`MoveError::OnlineNotImplemented`].
pub async fn check(core: &Core, slug: &str, to: &str) -> Result<(), MoveError> {
    let target = match core.catalog.server(to).await {
        Ok(s) => s,
        Err(CatalogError::NotFound(_)) => return Err(MoveError::UnknownServer(to.to_owned())),
        Err(e) => return Err(e.into()),
    };
    super::check_target(&target)?;
    let tenant = core.catalog.tenant(slug).await?;
    if tenant.status != TenantStatus::Ready {
        return Err(MoveError::WrongState(format!(
            "tenant {slug:?} is {}; only READY tenants can be moved",
            tenant.status
        )));
    }
    let on_source = TenantTarget::resolve(&core.catalog, &core.keyring, &tenant).await?;
    if on_source.server.name == to {
        return Err(MoveError::Invalid(format!("tenant {slug:?} is on server {to} already")));
    }
    let admin = |s| AdminTarget::from_record(s, &core.keyring).map_err(|e| MoveError::Server(e.to_string()));
    let (source_admin, target_admin) = (admin(&on_source.server)?, admin(&target)?);
    let (t, s, inside) = tokio::try_join!(
        connect(&target_admin, None),
        connect(&source_admin, None),
        connect(&source_admin, Some(on_source.database.as_str())),
    )?;
    let role = on_source.role.as_str();
    let mut missing = Vec::new();
    missing.extend(target_gaps(&t, &target.name, role).await.map_err(describe)?);
    missing.extend(source_gaps(&s, &on_source.server.name, role).await.map_err(describe)?);
    missing.extend(database_gaps(&inside).await.map_err(describe)?);
    if missing.is_empty() {
        Err(MoveError::OnlineNotImplemented)
    } else {
        tracing::info!(tenant = slug, to, missing = ?missing, "online move refused");
        metrics::counter!("tenantd_online_moves_refused_total").increment(1);
        Err(MoveError::OnlineRefused(missing))
    }
}

async fn connect(a: &AdminTarget, db: Option<&str>) -> Result<Client, MoveError> {
    a.connect(db).await.map_err(|e| MoveError::Server(e.to_string()))
}

fn describe(e: tokio_postgres::Error) -> MoveError {
    MoveError::Server(crate::pg::describe(&e))
}

async fn setting(c: &Client, name: &str) -> Result<String, tokio_postgres::Error> {
    Ok(c.query_one("SELECT pg_catalog.current_setting($1)", &[&name]).await?.get(0))
}

async fn int_setting(c: &Client, name: &str) -> Result<i64, tokio_postgres::Error> {
    Ok(setting(c, name).await?.parse().unwrap_or(0))
}

/// The subscriber's side.
async fn target_gaps(c: &Client, server: &str, role: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut missing = Vec::new();
    let version = int_setting(c, "server_version_num").await?;
    if version < 160_000 {
        missing.push(format!(
            "target {server}: PostgreSQL {} (online moves need 16 or later)",
            setting(c, "server_version").await?
        ));
    }
    let row = c
        .query_one(
            "SELECT r.oid IS NOT NULL, \
               COALESCE(pg_catalog.pg_has_role(CURRENT_USER, r.oid, 'MEMBER'), false), \
               COALESCE((SELECT pg_catalog.pg_has_role(t.oid, r.oid, 'MEMBER') \
                 FROM pg_catalog.pg_roles t WHERE t.rolname OPERATOR(pg_catalog.=) $1), false) \
             FROM (SELECT NULL) AS one \
             LEFT JOIN pg_catalog.pg_roles r ON r.rolname OPERATOR(pg_catalog.=) 'pg_create_subscription'",
            &[&role],
        )
        .await?;
    let (exists, admin_member, tenant_member): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !exists {
        missing.push(format!("target {server}: no pg_create_subscription role (PostgreSQL 16 or later)"));
    } else if !admin_member {
        missing.push(format!("target {server}: the admin role is not a member of pg_create_subscription"));
    }
    if tenant_member {
        missing.push(format!(
            "target {server}: tenant role {role} can create subscriptions (member of pg_create_subscription); it must not"
        ));
    }
    for name in ["max_logical_replication_workers", "max_replication_slots"] {
        if int_setting(c, name).await? < 1 {
            missing.push(format!("target {server}: {name} = 0 (the subscription needs at least 1)"));
        }
    }
    Ok(missing)
}

/// The publisher's side.
async fn source_gaps(c: &Client, server: &str, role: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut missing = Vec::new();
    let wal_level = setting(c, "wal_level").await?;
    if wal_level != "logical" {
        missing.push(format!("source {server}: wal_level = {wal_level} (needs logical; a restart)"));
    }
    let slots = int_setting(c, "max_replication_slots").await?;
    let used: i64 =
        c.query_one("SELECT pg_catalog.count(*) FROM pg_catalog.pg_replication_slots", &[]).await?.get(0);
    if used >= slots {
        missing.push(format!(
            "source {server}: no free replication slot (max_replication_slots = {slots}, {used} in use)"
        ));
    }
    let senders = int_setting(c, "max_wal_senders").await?;
    let sending: i64 =
        c.query_one("SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_replication", &[]).await?.get(0);
    if sending >= senders {
        missing.push(format!(
            "source {server}: no free WAL sender (max_wal_senders = {senders}, {sending} in use)"
        ));
    }
    let row = c
        .query_one(
            "SELECT a.rolreplication OR a.rolsuper, \
               COALESCE((SELECT t.rolreplication OR t.rolsuper FROM pg_catalog.pg_roles t \
                 WHERE t.rolname OPERATOR(pg_catalog.=) $1), false) \
             FROM pg_catalog.pg_roles a WHERE a.rolname OPERATOR(pg_catalog.=) CURRENT_USER",
            &[&role],
        )
        .await?;
    let (admin_replicates, tenant_replicates): (bool, bool) = (row.get(0), row.get(1));
    if !admin_replicates {
        missing.push(format!(
            "source {server}: the admin role lacks REPLICATION (the subscription connects as it)"
        ));
    }
    if tenant_replicates {
        missing.push(format!("source {server}: tenant role {role} has REPLICATION; it must not"));
    }
    Ok(missing)
}

/// Inside the tenant's database on the source: what logical replication cannot carry.
async fn database_gaps(c: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.relpersistence::pg_catalog.text, \
               CASE c.relreplident \
                 WHEN 'f' THEN true \
                 WHEN 'n' THEN false \
                 WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                   WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisreplident) \
                 ELSE EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                   WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisprimary) END \
             FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
             WHERE c.relkind OPERATOR(pg_catalog.=) 'r' \
               AND n.nspname OPERATOR(pg_catalog.<>) ALL ('{pg_catalog,information_schema}'::pg_catalog.name[]) \
               AND n.nspname::pg_catalog.text NOT LIKE 'pg\\_%' \
             ORDER BY 1",
            &[],
        )
        .await?;
    let mut missing = Vec::new();
    for r in &rows {
        let (table, persistence, identity): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
        if !identity {
            missing.push(format!(
                "table {table} has no replica identity (add a primary key, or REPLICA IDENTITY FULL / USING INDEX)"
            ));
        }
        if persistence == "u" {
            missing.push(format!("table {table} is UNLOGGED (logical replication does not carry it)"));
        }
    }
    let objects: i64 =
        c.query_one("SELECT pg_catalog.count(*) FROM pg_catalog.pg_largeobject_metadata", &[]).await?.get(0);
    if objects > 0 {
        missing.push(format!("{objects} large object(s) (logical replication does not carry them)"));
    }
    Ok(missing)
}
