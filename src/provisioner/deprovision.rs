//! Deleting a tenant (status DELETING), step by step and resumable like provisioning:
//!
//! 1. **close**: the role (when ours) loses LOGIN and its sessions are ended, so nothing
//!    writes behind the archive's back.
//! 2. **archive** (when the deletion asked for one): a final `pg_dump` into the
//!    directory the deletion named, before anything is dropped; skipped on resume once
//!    recorded. If it fails, nothing is dropped and it is tried again.
//! 3. **drop**: `DROP DATABASE ... WITH (FORCE)` (live sessions are ended) for the final and
//!    the staging name, then `DROP ROLE` — each only when it carries this tenant's marker. A
//!    database or role under the tenant's names that is not ours (the usual reason such a
//!    tenant went to ERROR) is left alone and named in a `delete.skipped_foreign` event.
//! 4. DELETED: the token stops working and the slug is free again.
//!
//! A failure keeps the tenant in DELETING with the reason in `last_error` and tries again
//! later; a deletion never falls back into ERROR (whose retry would provision it again).

use serde_json::json;

use super::{Phase, Provisioner, Step, StepError, Target, pg_retry};
use crate::catalog::events::EventKind;
use crate::catalog::tenants::TenantRecord;
use crate::markers::{self, Ownership};
use crate::names::PgIdent;
use crate::tenant_sql;

/// What is on the server under a tenant's names: ours to drop, or someone else's.
struct Inventory {
    /// Our databases, the final name first.
    databases: Vec<PgIdent>,
    /// The role carries our marker.
    role_is_ours: bool,
    /// Objects under the tenant's names without our marker (left alone, reported).
    foreign: Vec<serde_json::Value>,
}

impl Provisioner<'_> {
    /// Carries out a requested deletion: close, archive (if asked), drop, DELETED.
    pub async fn deprovision(&self, t: &TenantRecord) -> Result<(), StepError> {
        if t.server.is_none() {
            // Never placed: nothing exists on any server.
            self.core.catalog.mark_deleted(t.id, self.actor, &json!({ "placed": false })).await?;
            tracing::info!(tenant = %t.slug, "unplaced tenant deleted");
            return Ok(());
        }
        let target = self.target(t, None).await?;
        let admin = self.admin(&target, Step::Drop).await?;
        let found = self.inventory(&admin, &target).await?;
        if found.role_is_ours {
            self.close(&admin, &target).await?;
        }
        self.final_archive(t, &target, &found).await?;
        self.drop_objects(&admin, &target, &found).await?;
        let detail = json!({ "database": target.database.as_str(), "role": target.role.as_str() });
        self.core.catalog.mark_deleted(t.id, self.actor, &detail).await?;
        metrics::counter!("tenantd_tenants_deleted_total").increment(1);
        tracing::info!(tenant = %t.slug, server = %target.server.name, "tenant deleted");
        Ok(())
    }

    /// Which of the tenant's databases and role are ours.
    async fn inventory(
        &self,
        admin: &tokio_postgres::Client,
        target: &Target,
    ) -> Result<Inventory, StepError> {
        let role = markers::role(admin, target.id, &target.role).await.map_err(pg_retry(Step::Drop))?;
        let databases = markers::databases(admin, target.id, &[&target.database, &target.staging])
            .await
            .map_err(pg_retry(Step::Drop))?;
        let mut found =
            Inventory { databases: Vec::new(), role_is_ours: role.ownership.is_ours(), foreign: Vec::new() };
        for (name, ownership) in databases {
            match ownership {
                Ownership::Ours => found.databases.push(name),
                Ownership::Foreign(comment) => {
                    found.foreign.push(json!({ "database": name.as_str(), "comment": comment }));
                }
                Ownership::Absent => {}
            }
        }
        if let Ownership::Foreign(comment) = role.ownership {
            found.foreign.push(json!({ "role": target.role.as_str(), "comment": comment }));
        }
        Ok(found)
    }

    /// No new sessions from here on, and none left writing behind the archive's back; the
    /// membership lets `DROP DATABASE ... WITH (FORCE)` end any that remain.
    async fn close(&self, admin: &tokio_postgres::Client, target: &Target) -> Result<(), StepError> {
        tenant_sql::close_role(admin, &target.role, &target.admin).await.map_err(pg_retry(Step::Drop))?;
        Ok(())
    }

    /// The final archive the deletion asked for, once (skipped on resume once recorded).
    async fn final_archive(
        &self,
        t: &TenantRecord,
        target: &Target,
        found: &Inventory,
    ) -> Result<(), StepError> {
        let (Some(dir), Some(db)) = (&t.delete_archive_dir, found.databases.first()) else { return Ok(()) };
        if self
            .core
            .catalog
            .has_event_since(t.id, EventKind::ArchiveCreated, EventKind::DeleteRequested)
            .await?
        {
            return Ok(());
        }
        self.fault(&t.slug, Step::Archive, Phase::Before).await?;
        if !found.role_is_ours {
            return Err(StepError::Retry(
                Step::Archive,
                format!("cannot archive: role {:?} is not this tenant's", target.role.as_str()),
            ));
        }
        let dir = std::path::Path::new(dir);
        let (file, dumped) = crate::dumps::archive(&target.admin, db, &target.role, dir, &t.slug, t.id)
            .await
            .map_err(|e| StepError::Retry(Step::Archive, e.to_string()))?;
        self.fault(&t.slug, Step::Archive, Phase::After).await?;
        let detail = json!({ "file": file.display().to_string(), "bytes": dumped.bytes });
        self.event(t.id, EventKind::ArchiveCreated, detail).await
    }

    /// Drops what is ours; reports what is not.
    async fn drop_objects(
        &self,
        admin: &tokio_postgres::Client,
        target: &Target,
        found: &Inventory,
    ) -> Result<(), StepError> {
        self.fault(&target.slug, Step::Drop, Phase::Before).await?;
        for db in &found.databases {
            tenant_sql::drop_database_now(admin, db).await.map_err(pg_retry(Step::Drop))?;
        }
        if found.role_is_ours {
            admin.batch_execute(&tenant_sql::drop_role(&target.role)).await.map_err(pg_retry(Step::Drop))?;
        }
        self.fault(&target.slug, Step::Drop, Phase::After).await?;
        if !found.foreign.is_empty() {
            tracing::warn!(tenant = %target.slug, foreign = ?found.foreign, "objects with this tenant's names are not tenantd's; left alone");
            self.event(target.id, EventKind::SkippedForeign, json!({ "objects": found.foreign })).await?;
        }
        Ok(())
    }
}
