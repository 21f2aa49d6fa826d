//! Storage quotas: each tenant database measured against its `max_database_bytes`.
//!
//! A round measures every READY or SUSPENDED tenant's database (`pg_database_size`, one
//! query per server) and records the sizes. A tenant over its quota becomes read-only: its
//! role and its database default to read-only transactions, its sessions are ended so that
//! they reconnect read-only, and `quota.exceeded` is recorded in the same statement that sets
//! `over_quota`. Back under (data deleted by the operator, or a larger quota), the defaults are
//! removed, sessions ended again, and `quota.ok` recorded. A transition is made under the
//! tenant's lease (the server change, then the flag and its event in one statement), so
//! several daemons measuring at once never interleave or repeat one.
//!
//! Read-only by default is what PostgreSQL offers a non-superuser admin: a tenant connecting
//! directly could `SET default_transaction_read_only = off` in its own session. Over HTTP,
//! tenantd answers the resulting writes with 507 `over_quota`.

use std::collections::BTreeMap;

use serde_json::json;

use crate::admin::AdminTarget;
use crate::catalog::CatalogError;
use crate::catalog::events::EventKind;
use crate::catalog::tenants::{TenantRecord, TenantStatus};
use crate::core::Core;
use crate::limits::TenantLimits;
use crate::names::PgIdent;
use crate::tenant_sql;

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    /// Tenants measured.
    pub measured: usize,
    /// Tenants that went over their quota in this round (read-only now).
    pub exceeded: Vec<String>,
    /// Tenants that came back under (writable again).
    pub back_under: Vec<String>,
    /// Servers or tenants that could not be measured or changed, with the reason.
    pub failures: Vec<String>,
}

/// Measures every tenant and carries out the transitions.
pub async fn round(core: &Core) -> Result<Round, CatalogError> {
    let tenants = core.catalog.tenants_with_databases().await?;
    let mut by_server: BTreeMap<String, Vec<TenantRecord>> = BTreeMap::new();
    for t in tenants {
        // Only placed tenants are listed.
        if let Some(server) = t.server.clone() {
            by_server.entry(server).or_default().push(t);
        }
    }
    let mut report = Round::default();
    for (server, tenants) in by_server {
        if let Err(e) = server_round(core, &server, &tenants, &mut report).await {
            report.failures.push(format!("server {server}: {e}"));
        }
    }
    Ok(report)
}

/// Why a server or a tenant could not be measured or changed.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The server could not be reached as admin.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// A query or DDL on the server failed.
    #[error("{}", crate::pg::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The tenant's limits or names in the catalog do not read.
    #[error("{0}")]
    Row(String),
}

async fn server_round(
    core: &Core,
    server: &str,
    tenants: &[TenantRecord],
    report: &mut Round,
) -> Result<(), QuotaError> {
    let record = core.catalog.server(server).await?;
    let admin_target = AdminTarget::from_record(&record, &core.keyring)?;
    let admin = core.admin_pools.get(&record, &admin_target).await?;
    let names: Vec<&str> = tenants.iter().filter_map(|t| t.database_name.as_deref()).collect();
    let rows = admin
        .query(
            "SELECT d.datname::pg_catalog.text, pg_catalog.pg_database_size(d.oid) \
             FROM pg_catalog.pg_database d WHERE d.datname::pg_catalog.text = ANY($1::pg_catalog.text[])",
            &[&names],
        )
        .await?;
    let size_of = |db: &str| rows.iter().find(|r| r.get::<_, &str>(0) == db).map(|r| r.get::<_, i64>(1));
    let measured: Vec<(&TenantRecord, i64)> = tenants
        .iter()
        .filter_map(|t| t.database_name.as_deref().and_then(size_of).map(|bytes| (t, bytes)))
        .collect();
    let sizes: Vec<_> = measured.iter().map(|(t, bytes)| (t.id, *bytes)).collect();
    core.catalog.record_sizes(&sizes).await?;
    for (t, bytes) in measured {
        metrics::gauge!("tenantd_tenant_database_bytes", "tenant" => t.slug.clone()).set(bytes as f64);
        report.measured += 1;
        if let Err(e) = check(core, &admin, &admin_target, t, bytes, report).await {
            report.failures.push(format!("tenant {}: {e}", t.slug));
        }
    }
    Ok(())
}

/// Whether a tenant should be read-only for its size.
fn is_over(core: &Core, t: &TenantRecord, bytes: i64) -> Result<(bool, u64), QuotaError> {
    let limits = TenantLimits::resolve(&core.settings.limits, &t.limits)
        .map_err(|e| QuotaError::Row(e.to_string()))?;
    let quota = limits.max_database_bytes;
    Ok((quota > 0 && u64::try_from(bytes).unwrap_or(0) > quota, quota))
}

/// Compares one tenant with its quota and, when its state is wrong, makes the transition under
/// its lease: two daemons measuring at once never interleave the server change and the flag.
async fn check(
    core: &Core,
    admin: &tokio_postgres::Client,
    admin_target: &AdminTarget,
    t: &TenantRecord,
    bytes: i64,
    report: &mut Round,
) -> Result<(), QuotaError> {
    if is_over(core, t, bytes)?.0 == t.over_quota {
        return Ok(());
    }
    let owner = crate::leases::claim_owner(&core.instance);
    let lease = core.settings.workers.lease;
    let statuses = [TenantStatus::Ready, TenantStatus::Suspended];
    // Held by another process (an upgrade, a suspension): the next round looks again.
    let Some(held) = core.catalog.claim_in_status(&t.slug, &owner, lease, &statuses).await? else {
        return Ok(());
    };
    let result = transition(core, admin, admin_target, &held, bytes, &owner, report).await;
    match core.catalog.release_lease(held.id, &owner).await {
        Ok(()) | Err(CatalogError::LeaseLost) => {}
        Err(e) => tracing::warn!(tenant = %held.slug, error = %e, "cannot release a lease; it will expire"),
    }
    result
}

async fn transition(
    core: &Core,
    admin: &tokio_postgres::Client,
    admin_target: &AdminTarget,
    t: &TenantRecord,
    bytes: i64,
    owner: &str,
    report: &mut Round,
) -> Result<(), QuotaError> {
    let (over, quota) = is_over(core, t, bytes)?;
    if over == t.over_quota {
        return Ok(());
    }
    let name = |text: Option<&str>, what: &str| {
        PgIdent::from_catalog(text.unwrap_or("")).map_err(|e| QuotaError::Row(format!("{what}: {e}")))
    };
    let role = name(t.role_name.as_deref(), "role_name")?;
    let database = name(t.database_name.as_deref(), "database_name")?;
    let ddl = format!(
        "{}; {}",
        tenant_sql::grant_membership(&role, &admin_target.user),
        tenant_sql::read_only(&role, &database, over)
    );
    admin.batch_execute(&ddl).await?;
    let kind = if over { EventKind::QuotaExceeded } else { EventKind::QuotaOk };
    let detail = json!({ "bytes": bytes, "quota": quota });
    if core.catalog.flip_over_quota(t.id, over, kind, &detail, owner).await? {
        // Sessions keep the mode they started with: end them so they reconnect in the new one.
        let ended = tenant_sql::end_sessions(admin, &role).await?;
        if over {
            tracing::warn!(tenant = %t.slug, bytes, quota, sessions_ended = ended, "tenant over its storage quota: read-only");
            report.exceeded.push(t.slug.clone());
        } else {
            tracing::info!(tenant = %t.slug, bytes, quota, sessions_ended = ended, "tenant under its storage quota again");
            report.back_under.push(t.slug.clone());
        }
    }
    Ok(())
}
