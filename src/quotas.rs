//! Storage quotas: each tenant database measured against its `max_database_bytes`.
//!
//! A round measures every READY or SUSPENDED tenant's database (`pg_database_size`, one
//! query per server) and records the sizes. A tenant over its quota becomes read-only: its
//! role and its database default to read-only transactions, its sessions are ended so that
//! they reconnect read-only, and `quota.exceeded` is recorded in the same statement that sets
//! `over_quota`. Back under (data deleted by the operator, or a larger quota), the defaults are
//! removed, sessions ended again, and `quota.ok` recorded. The server-side change comes first
//! and is idempotent, and only the process whose catalog write flips the flag ends sessions,
//! so several daemons measuring at once never do a transition twice.
//!
//! Read-only by default is what PostgreSQL offers a non-superuser admin: a tenant connecting
//! directly could `SET default_transaction_read_only = off` in its own session. Over HTTP,
//! tenantd answers the resulting writes with 507 `over_quota`.

use std::collections::BTreeMap;

use serde_json::json;

use crate::admin::AdminTarget;
use crate::catalog::CatalogError;
use crate::catalog::events::EventKind;
use crate::catalog::servers::ServerRecord;
use crate::catalog::tenants::TenantRecord;
use crate::core::Core;
use crate::limits::TenantLimits;
use crate::names::PgIdent;
use crate::target::TenantTarget;
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

async fn server_round(
    core: &Core,
    server: &str,
    tenants: &[TenantRecord],
    report: &mut Round,
) -> Result<(), String> {
    let record = core.catalog.server(server).await.map_err(|e| e.to_string())?;
    let admin_target = AdminTarget::from_record(&record, &core.keyring).map_err(|e| e.to_string())?;
    let admin = core.admin_pools.get(&record, &admin_target).await.map_err(|e| e.to_string())?;
    let names: Vec<&str> = tenants.iter().filter_map(|t| t.database_name.as_deref()).collect();
    let rows = admin
        .query(
            "SELECT d.datname::pg_catalog.text, pg_catalog.pg_database_size(d.oid) \
             FROM pg_catalog.pg_database d WHERE d.datname::pg_catalog.text = ANY($1::pg_catalog.text[])",
            &[&names],
        )
        .await
        .map_err(|e| crate::pg::describe(&e))?;
    let size_of = |db: &str| rows.iter().find(|r| r.get::<_, &str>(0) == db).map(|r| r.get::<_, i64>(1));
    let measured: Vec<(&TenantRecord, i64)> = tenants
        .iter()
        .filter_map(|t| t.database_name.as_deref().and_then(size_of).map(|bytes| (t, bytes)))
        .collect();
    let sizes: Vec<_> = measured.iter().map(|(t, bytes)| (t.id, *bytes)).collect();
    core.catalog.record_sizes(&sizes).await.map_err(|e| e.to_string())?;
    for (t, bytes) in measured {
        metrics::gauge!("tenantd_tenant_database_bytes", "tenant" => t.slug.clone()).set(bytes as f64);
        report.measured += 1;
        if let Err(e) = check(core, &admin, (&record, &admin_target), t, bytes, report).await {
            report.failures.push(format!("tenant {}: {e}", t.slug));
        }
    }
    Ok(())
}

/// Compares one tenant with its quota and makes the transition if its state is wrong.
async fn check(
    core: &Core,
    admin: &tokio_postgres::Client,
    (server, admin_target): (&ServerRecord, &AdminTarget),
    t: &TenantRecord,
    bytes: i64,
    report: &mut Round,
) -> Result<(), String> {
    let limits = TenantLimits::resolve(&core.settings.limits, &t.limits).map_err(|e| e.to_string())?;
    let quota = limits.max_database_bytes;
    let over = quota > 0 && u64::try_from(bytes).unwrap_or(0) > quota;
    if over == t.over_quota {
        return Ok(());
    }
    let target = TenantTarget::new(t, server, &core.keyring).map_err(|e| e.to_string())?;
    set_read_only(admin, admin_target, &target.role, &target.database, over).await?;
    let (kind, detail) = if over {
        (EventKind::QuotaExceeded, json!({ "bytes": bytes, "quota": quota }))
    } else {
        (EventKind::QuotaOk, json!({ "bytes": bytes, "quota": quota }))
    };
    let flipped = core
        .catalog
        .flip_over_quota(t.id, over, kind, &detail, &core.instance)
        .await
        .map_err(|e| e.to_string())?;
    if flipped {
        // Sessions keep the mode they started with: end them so they reconnect in the new one.
        let ended =
            tenant_sql::end_sessions(admin, &target.role).await.map_err(|e| crate::pg::describe(&e))?;
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

async fn set_read_only(
    admin: &tokio_postgres::Client,
    admin_target: &AdminTarget,
    role: &PgIdent,
    database: &PgIdent,
    on: bool,
) -> Result<(), String> {
    let ddl = format!(
        "{}; {}",
        tenant_sql::grant_membership(role, &admin_target.user),
        tenant_sql::read_only(role, database, on)
    );
    admin.batch_execute(&ddl).await.map_err(|e| crate::pg::describe(&e))
}
