//! The ends of a move: after the switch, the source database kept (renamed) or dropped and
//! the tenant READY ([`finish`]); before it, the rollback ([`undo`]); and later, the drop of a
//! kept source database whose time is up ([`drop_kept_source`]).

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_postgres::error::SqlState;

use super::error::pg;
use super::{Ends, MoveError, MoveJob, Mover};
use crate::admin::AdminTarget;
use crate::catalog::operations::Operation;
use crate::core::Core;
use crate::markers::{self, Ownership};
use crate::names::PgIdent;
use crate::steps::{Phase, Step};
use crate::tenant_sql;

/// Steps 6: LOGIN on the target, the source database renamed to its kept name (or dropped
/// with `drop_source`), READY. A source that cannot be tidied now does not hold the tenant
/// back: its database is recorded as kept under whatever name it has, and the daemon's drop
/// of kept databases deals with it.
pub(super) async fn finish(
    m: &Mover<'_>,
    job: &MoveJob,
    ends: &Ends,
    started: Instant,
) -> Result<(), MoveError> {
    const STEP: Step = Step::MoveSource;
    let target = m.admin(&ends.target.server, &ends.target_admin).await?;
    target.batch_execute(&tenant_sql::set_login(&ends.target.role, true)).await.map_err(pg(STEP))?;
    drop(target);
    m.fault(&job.tenant.slug, STEP, Phase::Before).await?;
    let keep =
        chrono::Duration::from_std(m.core.settings.moves.keep_source).unwrap_or(chrono::Duration::days(1));
    let now = chrono::Utc::now();
    let (kept, drop_after, note) = match tidy_source(m, job, ends).await {
        Ok(Some(name)) => (Some(name.to_string()), Some(now + keep), None),
        Ok(None) => (None, None, None),
        Err(error) => {
            tracing::warn!(%error, server = %ends.source.server.name, "cannot tidy the source database; a daemon drops it later");
            metrics::counter!("tenantd_move_source_failures_total").increment(1);
            let when = if job.op.drop_source { now } else { now + keep };
            (Some(ends.source.database.to_string()), Some(when), Some(error.to_string()))
        }
    };
    m.fault(&job.tenant.slug, STEP, Phase::After).await?;
    let seconds = started.elapsed().as_secs_f64();
    let detail = json!({ "kept_source": kept, "source_error": note, "seconds": seconds });
    m.core
        .catalog
        .finish_move(job.tenant.id, &job.owner, job.op.id, kept.as_deref(), drop_after, &detail)
        .await?;
    tracing::info!(to = %ends.target.server.name, kept = ?kept, "move finished: READY on the target");
    Ok(())
}

/// Renames the source database to its kept name, or drops it (and the role there) with
/// `drop_source`. Returns the kept name, if one is kept.
async fn tidy_source(m: &Mover<'_>, job: &MoveJob, ends: &Ends) -> Result<Option<PgIdent>, MoveError> {
    const STEP: Step = Step::MoveSource;
    let s = &ends.source;
    let kept = PgIdent::moved(job.tenant.id, job.op.id);
    let admin = m.admin(&s.server, &ends.source_admin).await?;
    let found = markers::databases(&admin, job.tenant.id, &[&s.database, &kept]).await.map_err(pg(STEP))?;
    let current = match (&found[0].1, &found[1].1) {
        (Ownership::Ours, _) => s.database.clone(),
        (_, Ownership::Ours) => kept.clone(),
        _ => return Ok(None),
    };
    if job.op.drop_source {
        tenant_sql::drop_database_now(&admin, &current).await.map_err(pg(STEP))?;
        drop_role_unless_used(&admin, job.tenant.id, &s.role).await?;
        return Ok(None);
    }
    if current != kept {
        rename(&admin, &current, &kept).await?;
    }
    Ok(Some(kept))
}

async fn rename(admin: &tokio_postgres::Client, from: &PgIdent, to: &PgIdent) -> Result<(), MoveError> {
    let ddl = tenant_sql::rename_database(from, to);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match admin.batch_execute(&ddl).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(pg(Step::MoveSource)(e)),
        }
    }
}

/// Drops a tenant role (ours only) on a server the tenant left; one that still owns objects
/// elsewhere (another kept database) stays, for that database's drop.
async fn drop_role_unless_used(
    admin: &tokio_postgres::Client,
    tenant: uuid::Uuid,
    role: &PgIdent,
) -> Result<(), MoveError> {
    if !markers::role(admin, tenant, role).await.map_err(pg(Step::MoveSource))?.ownership.is_ours() {
        return Ok(());
    }
    match admin.batch_execute(&tenant_sql::drop_role(role)).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST) => {
            tracing::info!(%role, "role still owns objects of another kept database; dropped with it");
            Ok(())
        }
        Err(e) => Err(pg(Step::MoveSource)(e)),
    }
}

/// The rollback before the switch: LOGIN again on the source first (what the tenant needs),
/// then what this move made on the target, by marker. Returns what could not be dropped on
/// the target (recorded; never a reason to keep the tenant from its source).
pub(super) async fn undo(m: &Mover<'_>, job: &MoveJob, ends: &Ends) -> Result<Vec<String>, MoveError> {
    let source = m.admin(&ends.source.server, &ends.source_admin).await?;
    source
        .batch_execute(&tenant_sql::set_login(&ends.source.role, true))
        .await
        .map_err(pg(Step::MoveClose))?;
    drop(source);
    let mut leftovers = Vec::new();
    if let Err(e) = undo_target(m, job, ends).await {
        tracing::error!(error = %e, server = %ends.target.server.name, "cannot clear the target after a failed move");
        metrics::counter!("tenantd_move_rollback_leftovers_total").increment(1);
        leftovers.push(e.to_string());
    }
    Ok(leftovers)
}

async fn undo_target(m: &Mover<'_>, job: &MoveJob, ends: &Ends) -> Result<(), MoveError> {
    const STEP: Step = Step::MoveStage;
    let t = &ends.target;
    let admin = m.admin(&t.server, &ends.target_admin).await?;
    // The catalog names the source: databases of ours on the target are this move's.
    for (name, ownership) in
        markers::databases(&admin, job.tenant.id, &[&ends.staging, &t.database]).await.map_err(pg(STEP))?
    {
        if super::ours_on_target(&name, &ownership, &ends.staging) {
            tenant_sql::drop_database_now(&admin, &name).await.map_err(pg(STEP))?;
        }
    }
    let op = m.core.catalog.operation(job.op.id).await?;
    if op.detail["target_role_created"] == json!(true) {
        drop_role_unless_used(&admin, job.tenant.id, &t.role).await?;
    }
    Ok(())
}

/// Drops a kept source database whose time is up (ours only), and the tenant's role on that
/// server unless the tenant lives there again; records the drop.
pub async fn drop_kept_source(core: &Core, op: &Operation) -> Result<(), MoveError> {
    let (Some(kept), Some(tenant_id)) = (op.kept_database.as_deref(), op.tenant_id) else {
        return Ok(());
    };
    let tenant = core.catalog.tenant_by_id(tenant_id).await?;
    let lives_there = tenant.server.as_deref() == Some(op.server.as_str())
        && tenant.status != crate::catalog::tenants::TenantStatus::Deleted;
    let kept = PgIdent::from_catalog(kept).map_err(|e| MoveError::Invalid(e.to_string()))?;
    if lives_there && tenant.database_name.as_deref() == Some(kept.as_str()) {
        return Err(MoveError::Invalid(format!(
            "kept database {kept} on {} is the tenant's live database again; not dropped",
            op.server
        )));
    }
    let server = core.catalog.server(&op.server).await?;
    let admin_target =
        AdminTarget::from_record(&server, &core.keyring).map_err(|e| MoveError::Server(e.to_string()))?;
    let admin =
        core.admin_pools.get(&server, &admin_target).await.map_err(|e| MoveError::Server(e.to_string()))?;
    match markers::databases(&admin, tenant_id, &[&kept]).await.map_err(pg(Step::MoveSource))?.remove(0).1 {
        Ownership::Ours => {
            tenant_sql::drop_database_now(&admin, &kept).await.map_err(pg(Step::MoveSource))?
        }
        Ownership::Absent => {}
        Ownership::Foreign(comment) => {
            return Err(MoveError::Foreign(format!(
                "database {kept} on {} no longer carries the tenant's marker (comment {comment:?}); left alone",
                op.server
            )));
        }
    }
    if !lives_there && let Some(role) = tenant.role_name.as_deref() {
        let role = PgIdent::from_catalog(role).map_err(|e| MoveError::Invalid(e.to_string()))?;
        drop_role_unless_used(&admin, tenant_id, &role).await?;
    }
    core.catalog.kept_source_dropped(op, &core.instance).await?;
    tracing::info!(server = %op.server, database = %kept, tenant = %tenant.slug, "kept source database of a move dropped");
    Ok(())
}
