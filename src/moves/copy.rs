//! Steps 3 and 4 of a move: the copy into a staging database on the target (role, staging
//! database, dump, restore, verification) and its promotion to the tenant's database name.

use std::time::Instant;

use serde_json::json;

use super::error::pg;
use super::{Ends, MoveError, MoveJob, Mover, verify};
use crate::limits::TenantLimits;
use crate::markers::{self, Ownership};
use crate::steps::{Phase, Step};
use crate::{dumps, tenant_sql};

/// Step 3: copies the source into a fresh staging database on the target and verifies it;
/// returns the figures recorded with the step.
pub(super) async fn copy(m: &Mover<'_>, job: &MoveJob, ends: &Ends) -> Result<serde_json::Value, MoveError> {
    let slug = &job.tenant.slug;
    let staging = Instant::now();
    stage(m, job, ends).await?;
    let stage_seconds = staging.elapsed().as_secs_f64();
    m.fault(slug, Step::MoveDump, Phase::Before).await?;
    // Private, and removed however this ends.
    let dir = tempfile::Builder::new()
        .prefix("tenantd-move-")
        .tempdir()
        .map_err(|e| MoveError::Step(Step::MoveDump, format!("cannot create a temporary directory: {e}")))?;
    let path = dir.path().join("dump");
    let jobs = m.core.settings.moves.jobs;
    let (source, src_admin) = (&ends.source, &ends.source_admin);
    let dumped =
        dumps::dump_dir(src_admin, &source.database, &source.role, job.tenant.id, &path, jobs).await?;
    m.fault(slug, Step::MoveRestore, Phase::Before).await?;
    let restore_started = Instant::now();
    let target = &ends.target;
    let (restored, source_summary) = tokio::join!(
        dumps::restore_dir(&ends.target_admin, &ends.staging, &target.role, target.password(), &path, jobs),
        verify::summarize(src_admin, &source.database, &source.role),
    );
    restored?;
    let restore_seconds = restore_started.elapsed().as_secs_f64();
    m.fault(slug, Step::MoveRestore, Phase::After).await?;
    m.fault(slug, Step::MoveVerify, Phase::Before).await?;
    let verifying = Instant::now();
    let source_summary = source_summary?;
    let copy_summary = verify::summarize(&ends.target_admin, &ends.staging, &target.role).await?;
    let checked = verify::compare(&source_summary, &copy_summary, job.tenant.schema_version)?;
    tracing::info!(bytes = dumped.bytes, tables = checked.tables, rows = checked.rows, "copy verified");
    Ok(json!({
        "stage_seconds": stage_seconds,
        "jobs": jobs,
        "dump_bytes": dumped.bytes,
        "dump_seconds": dumped.duration.as_secs_f64(),
        "restore_seconds": restore_seconds,
        "verify_seconds": verifying.elapsed().as_secs_f64(),
        "tables": checked.tables,
        "rows": checked.rows,
        "sequences": checked.sequences,
        "schema_version": checked.version,
    }))
}

/// The role on the target (same name, password and verifier, our marker, the tenant's
/// limits) and an empty staging database locked down like provisioning's. Leftovers of an
/// earlier attempt of this move (by marker) are dropped first: the copy starts over.
async fn stage(m: &Mover<'_>, job: &MoveJob, ends: &Ends) -> Result<(), MoveError> {
    const STEP: Step = Step::MoveStage;
    let (id, t) = (job.tenant.id, &ends.target);
    m.fault(&job.tenant.slug, STEP, Phase::Before).await?;
    let admin = m.admin(&t.server, &ends.target_admin).await?;
    let limits = TenantLimits::resolve(&m.core.settings.limits, &job.tenant.limits)
        .map_err(|e| MoveError::Invalid(format!("tenant {}: {e}", job.tenant.slug)))?;
    let verifier = t.scram_verifier();
    let found = markers::role(&admin, id, &t.role).await.map_err(pg(STEP))?;
    match found.ownership {
        Ownership::Absent => {
            // Recorded first: a rollback drops only a role this move made.
            m.record(job, "closed", json!({ "target_role_created": true })).await?;
            let ddl = format!(
                "{}; {}; {}",
                tenant_sql::create_role(&t.role, &verifier),
                tenant_sql::comment_on_role(&t.role, id),
                tenant_sql::role_limits(&t.role, &limits)
            );
            admin.batch_execute(&ddl).await.map_err(pg(STEP))?;
        }
        Ownership::Ours => {
            let ddl = format!(
                "{}; {}",
                tenant_sql::reset_role(&t.role, &verifier),
                tenant_sql::role_limits(&t.role, &limits)
            );
            admin.batch_execute(&ddl).await.map_err(pg(STEP))?;
        }
        Ownership::Foreign(comment) => {
            return Err(MoveError::Foreign(format!(
                "role {} on server {} is not this tenant's (comment {:?}); tenantd never adopts it",
                t.role,
                t.server.name,
                comment.unwrap_or_default()
            )));
        }
    }
    admin
        .batch_execute(&tenant_sql::grant_membership(&t.role, &ends.target_admin.user))
        .await
        .map_err(pg(STEP))?;
    for (name, ownership) in
        markers::databases(&admin, id, &[&t.database, &ends.staging]).await.map_err(pg(STEP))?
    {
        // The catalog names the source: a database of ours here is an earlier attempt's.
        if super::ours_on_target(&name, &ownership, &ends.staging) {
            tenant_sql::drop_database_now(&admin, &name).await.map_err(pg(STEP))?;
        } else if let Ownership::Foreign(comment) = ownership {
            return Err(MoveError::Foreign(format!(
                "database {name} on server {} is not this tenant's (comment {:?}); tenantd never touches it",
                t.server.name,
                comment.unwrap_or_default()
            )));
        }
    }
    let ddl = format!(
        "{}; {}",
        tenant_sql::create_tenant_database(&ends.staging),
        tenant_sql::comment_on_database(&ends.staging, id)
    );
    // CREATE DATABASE cannot run in a transaction block: one statement at a time.
    for statement in ddl.split("; ") {
        admin.batch_execute(statement).await.map_err(pg(STEP))?;
    }
    admin.batch_execute(&tenant_sql::lock_down_database(&ends.staging, &t.role)).await.map_err(pg(STEP))?;
    drop(admin);
    let inside = ends
        .target_admin
        .connect(Some(ends.staging.as_str()))
        .await
        .map_err(|e| MoveError::Step(STEP, e.to_string()))?;
    inside.batch_execute(&tenant_sql::grant_schema(&t.role)).await.map_err(pg(STEP))?;
    m.fault(&job.tenant.slug, STEP, Phase::After).await
}

/// Step 4: the staging database takes the tenant's database name on the target (done
/// already when only the final name is there).
pub(super) async fn promote(m: &Mover<'_>, job: &MoveJob, ends: &Ends) -> Result<(), MoveError> {
    const STEP: Step = Step::MovePromote;
    let t = &ends.target;
    m.fault(&job.tenant.slug, STEP, Phase::Before).await?;
    let admin = m.admin(&t.server, &ends.target_admin).await?;
    let found =
        markers::databases(&admin, job.tenant.id, &[&ends.staging, &t.database]).await.map_err(pg(STEP))?;
    let (staging, final_name) = (&found[0].1, &found[1].1);
    match (staging, final_name) {
        (Ownership::Ours, Ownership::Absent) => {
            tenant_sql::rename_database_when_free(&admin, &ends.staging, &t.database, "")
                .await
                .map_err(pg(STEP))?;
        }
        (Ownership::Absent, Ownership::Ours) => {}
        (staging, final_name) => {
            return Err(MoveError::Step(
                STEP,
                format!(
                    "unexpected databases on {}: staging {staging:?}, {} {final_name:?}",
                    t.server.name, t.database
                ),
            ));
        }
    }
    m.fault(&job.tenant.slug, STEP, Phase::After).await
}
