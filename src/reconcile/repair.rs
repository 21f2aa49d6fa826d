//! Repairs of findings. Each one is made under the tenant's lease (READY or SUSPENDED, nobody
//! else holding it: provisioning, moves, lifecycle and upgrades all take that lease), after
//! checking again, under the lease, that the drift is still there; a tenant held by another
//! process or changed since the scan is skipped and the finding says so. Objects of no live
//! tenant are checked against the catalog and their marker once more just before the drop.

use uuid::Uuid;

use super::scan;
use super::world::{Owner, World};
use super::{Action, DriftKind, Finding, Options};
use crate::admin::{AdminError, AdminTarget};
use crate::catalog::CatalogError;
use crate::catalog::servers::ServerRecord;
use crate::catalog::tenants::{TenantRecord, TenantStatus};
use crate::core::Core;
use crate::markers::{self, Ownership};
use crate::names::PgIdent;
use crate::tenant_sql;

/// The outcome of a finding that was repaired.
pub(crate) const REPAIRED: &str = "repaired";

/// Why a repair failed.
#[derive(Debug, thiserror::Error)]
enum RepairError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("{}", crate::pg::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Scan(#[from] scan::ScanError),
    #[error("{0}")]
    Invalid(String),
}

/// True when this run's options ask for this finding's repair.
pub(crate) fn wanted(f: &Finding, options: Options) -> bool {
    match f.action {
        Action::None => false,
        Action::DropOrphanDatabase | Action::DropOrphanRole => options.drop_orphans,
        _ => options.repair,
    }
}

/// The outcome of a finding before any repair.
pub(crate) fn default_outcome(f: &Finding, options: Options) -> String {
    match f.action {
        Action::None => "not repaired: reconcile does not repair this".into(),
        Action::DropOrphanDatabase | Action::DropOrphanRole => {
            "left alone: needs --drop-orphans --yes".into()
        }
        _ if options.repair => "pending".into(),
        _ => "not repaired: run with --repair".into(),
    }
}

/// Repairs one finding; returns its outcome.
pub(crate) async fn repair(core: &Core, world: &World, f: &Finding) -> String {
    let result = match (&f.action, f.tenant_id) {
        (Action::DropStaging | Action::DropOrphanDatabase | Action::DropOrphanRole, Some(id)) => {
            match World::fresh_owner(core, id).await {
                Ok(Owner::Live(_)) => tenant_repair(core, world, f, id).await,
                Ok(Owner::Pending(what)) => Ok(Err(format!("owned by {what} now"))),
                Ok(Owner::Deleted(_) | Owner::Unknown) => ownerless_drop(core, f, id).await,
                Err(e) => Err(e.into()),
            }
        }
        (Action::DropStaging | Action::DropOrphanDatabase | Action::DropOrphanRole, None) => {
            match marked_id(core, f).await {
                Ok(Some(id)) => match World::fresh_owner(core, id).await {
                    Ok(Owner::Deleted(_) | Owner::Unknown) => ownerless_drop(core, f, id).await,
                    Ok(_) => Ok(Err("a tenant owns it now".to_owned())),
                    Err(e) => Err(e.into()),
                },
                Ok(None) => Ok(Err("it no longer carries a marker".to_owned())),
                Err(e) => Err(e),
            }
        }
        (_, Some(id)) => tenant_repair(core, world, f, id).await,
        (_, None) => Ok(Err("no tenant to repair".to_owned())),
    };
    match result {
        Ok(Ok(())) => {
            metrics::counter!("tenantd_reconcile_repairs_total", "kind" => f.kind.as_str()).increment(1);
            tracing::info!(kind = %f.kind, server = %f.server, object = %f.object, tenant = ?f.tenant, "drift repaired");
            REPAIRED.to_owned()
        }
        Ok(Err(why)) => format!("skipped: {why}"),
        Err(e) => {
            tracing::warn!(kind = %f.kind, server = %f.server, object = %f.object, error = %e, "drift repair failed");
            format!("failed: {e}")
        }
    }
}

type Outcome = Result<Result<(), String>, RepairError>;

async fn admin(
    core: &Core,
    server: &str,
) -> Result<(ServerRecord, AdminTarget, deadpool_postgres::Client), RepairError> {
    let record = core.catalog.server(server).await?;
    let target = AdminTarget::from_record(&record, &core.keyring)?;
    let client = core.admin_pools.get(&record, &target).await?;
    Ok((record, target, client))
}

fn ident(name: &str) -> Result<PgIdent, RepairError> {
    PgIdent::from_catalog(name).map_err(|e| RepairError::Invalid(e.to_string()))
}

/// The tenant id in the marker of the finding's object now.
async fn marked_id(core: &Core, f: &Finding) -> Result<Option<Uuid>, RepairError> {
    let (_, _, client) = admin(core, &f.server).await?;
    let found = if f.action == Action::DropOrphanRole {
        markers::marked_roles(&client, &[]).await?
    } else {
        markers::marked_databases(&client, &[]).await?
    };
    Ok(found.into_iter().find(|m| m.name == f.object).and_then(|m| m.owner))
}

/// Drops a database or role whose marker names a tenant that is deleted or unknown, after
/// checking the marker once more.
async fn ownerless_drop(core: &Core, f: &Finding, id: Uuid) -> Outcome {
    let (_, _, client) = admin(core, &f.server).await?;
    let name = ident(&f.object)?;
    if f.action == Action::DropOrphanRole {
        if !markers::role(&client, id, &name).await?.ownership.is_ours() {
            return Ok(Err("it no longer carries the marker".into()));
        }
        client.batch_execute(&tenant_sql::drop_role(&name)).await?;
    } else {
        if !markers::databases(&client, id, &[&name]).await?[0].1.is_ours() {
            return Ok(Err("it no longer carries the marker".into()));
        }
        tenant_sql::drop_database_now(&client, &name).await?;
    }
    Ok(Ok(()))
}

/// A repair under the tenant's lease.
async fn tenant_repair(core: &Core, world: &World, f: &Finding, id: Uuid) -> Outcome {
    let slug = f.tenant.as_deref().unwrap_or_default();
    let statuses: &[TenantStatus] = match f.action {
        Action::DropOrphanDatabase | Action::DropOrphanRole => {
            &[TenantStatus::Ready, TenantStatus::Suspended, TenantStatus::Error]
        }
        _ => &[TenantStatus::Ready, TenantStatus::Suspended],
    };
    let owner = crate::leases::claim_owner(&core.instance);
    let Some(t) = core.catalog.claim_in_status(slug, &owner, core.settings.workers.lease, statuses).await?
    else {
        let t = core.catalog.tenant(slug).await?;
        return Ok(Err(match (&t.lease_owner, t.lease_until) {
            (Some(holder), Some(until)) if until > chrono::Utc::now() => format!("tenant held by {holder}"),
            _ => format!("tenant is {} now", t.status),
        }));
    };
    let result = if t.id != id {
        Ok(Err("the slug names another tenant now".to_owned()))
    } else {
        held(core, world, f, &t, &owner).await
    };
    // A MarkError that went through released the lease with the ERROR.
    if !matches!(result, Ok(Ok(()))) || f.action != Action::MarkError {
        match core.catalog.release_lease(t.id, &owner).await {
            Ok(()) | Err(CatalogError::LeaseLost) => {}
            Err(e) => tracing::warn!(tenant = %t.slug, error = %e, "cannot release a lease; it will expire"),
        }
    }
    result
}

/// The repair itself, the lease held; the drift is checked again first.
async fn held(core: &Core, world: &World, f: &Finding, t: &TenantRecord, owner: &str) -> Outcome {
    let home = t.server.as_deref() == Some(f.server.as_str());
    let (db, role) = match (t.database_name.as_deref(), t.role_name.as_deref()) {
        (Some(db), Some(role)) => (ident(db)?, ident(role)?),
        _ => return Ok(Err("the tenant has no database or role name".into())),
    };
    let (record, target, client) = admin(core, &f.server).await?;
    match &f.action {
        Action::None => Ok(Err("nothing to do".into())),
        Action::MarkError => {
            if !home {
                return Ok(Err("the tenant moved meanwhile".into()));
            }
            let gone = match f.kind {
                DriftKind::DatabaseMissing => {
                    markers::databases(&client, t.id, &[&db]).await?[0].1 == Ownership::Absent
                }
                _ => markers::role(&client, t.id, &role).await?.ownership == Ownership::Absent,
            };
            if !gone {
                return Ok(Err("it is there again".into()));
            }
            core.catalog.reconcile_error(t.id, owner, &format!("reconcile: {}", f.problem)).await?;
            Ok(Ok(()))
        }
        Action::Relock(others) => {
            if !home || !markers::databases(&client, t.id, &[&db]).await?[0].1.is_ours() {
                return Ok(Err("the database is not the tenant's own here any more".into()));
            }
            client.batch_execute(&tenant_sql::relock_database(&db, &role, others)).await?;
            Ok(Ok(()))
        }
        Action::SyncLogin => {
            if !home || !markers::role(&client, t.id, &role).await?.ownership.is_ours() {
                return Ok(Err("the role is not the tenant's own here any more".into()));
            }
            match t.status {
                TenantStatus::Ready => client.batch_execute(&tenant_sql::set_login(&role, true)).await?,
                _ => {
                    tenant_sql::close_role(&client, &role, &target).await?;
                }
            }
            Ok(Ok(()))
        }
        Action::SchemaVersion(expected) => {
            if !home {
                return Ok(Err("the tenant moved meanwhile".into()));
            }
            drop(client);
            let version = scan::history_version(core, &record, &target, &db, &role).await?;
            if version != *expected || !world.knows_version(version) {
                return Ok(Err(format!("the history says {version} now")));
            }
            core.catalog.reconcile_schema_version(t.id, owner, version).await?;
            Ok(Ok(()))
        }
        Action::DropStaging | Action::DropOrphanDatabase => {
            let name = ident(&f.object)?;
            if home && name == db {
                return Ok(Err("it is the tenant's own database now".into()));
            }
            if world_moving(core, t.id, &f.server).await? {
                return Ok(Err("a move to this server uses it".into()));
            }
            if !markers::databases(&client, t.id, &[&name]).await?[0].1.is_ours() {
                return Ok(Err("it no longer carries the tenant's marker".into()));
            }
            tenant_sql::drop_database_now(&client, &name).await?;
            Ok(Ok(()))
        }
        Action::DropOrphanRole => {
            let name = ident(&f.object)?;
            if home && name == role {
                return Ok(Err("it is the tenant's own role now".into()));
            }
            if !markers::role(&client, t.id, &name).await?.ownership.is_ours() {
                return Ok(Err("it no longer carries the tenant's marker".into()));
            }
            client.batch_execute(&tenant_sql::drop_role(&name)).await?;
            Ok(Ok(()))
        }
    }
}

/// True when a running move of the tenant targets `server`, or one kept a database there.
async fn world_moving(core: &Core, tenant: Uuid, server: &str) -> Result<bool, CatalogError> {
    let moving = core.catalog.move_targets().await?.into_iter().any(|(id, to)| id == tenant && to == server);
    let kept =
        core.catalog.kept_databases().await?.into_iter().any(|k| k.tenant_id == tenant && k.server == server);
    Ok(moving || kept)
}
