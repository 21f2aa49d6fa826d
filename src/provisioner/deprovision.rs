//! Deleting a tenant (status DELETING), step by step and resumable like provisioning:
//!
//! 1. **archive** (when the deletion asked for one): the role loses LOGIN and its sessions are
//!    ended (nothing writes behind the archive's back), then a final `pg_dump` into the
//!    directory the deletion named, before anything is dropped; skipped on resume once
//!    recorded. If it fails, nothing is dropped and it is tried again.
//! 2. **drop**: `DROP DATABASE ... WITH (FORCE)` (live sessions are ended) for the final and
//!    the staging name, then `DROP ROLE` — each only when it carries this tenant's marker. A
//!    database or role under the tenant's names that is not ours (the usual reason such a
//!    tenant went to ERROR) is left alone and named in a `delete.skipped_foreign` event.
//! 3. DELETED: the token stops working and the slug is free again.
//!
//! A failure keeps the tenant in DELETING with the reason in `last_error` and tries again
//! later; a deletion never falls back into ERROR (whose retry would provision it again).

use serde_json::json;

use super::{Phase, Provisioner, Step, StepError, pg_retry};
use crate::catalog::tenants::TenantRecord;
use crate::names::PgIdent;
use crate::tenant_sql;

impl Provisioner<'_> {
    /// Carries out a requested deletion.
    pub async fn deprovision(&self, t: &TenantRecord) -> Result<(), StepError> {
        if t.server.is_none() {
            // Never placed: nothing exists on any server.
            self.catalog.mark_deleted(t.id, self.actor, &json!({ "placed": false })).await?;
            tracing::info!(tenant = %t.slug, "unplaced tenant deleted");
            return Ok(());
        }
        let target = self.target(t, None).await?;
        let admin = self
            .admin_pools
            .get(&target.record, &target.admin)
            .await
            .map_err(|e| StepError::Retry(Step::Drop, e.to_string()))?;
        let marker = tenant_sql::marker(t.id);
        let role_comment = admin
            .query_opt(
                "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
                &[&target.role.as_str()],
            )
            .await
            .map_err(pg_retry(Step::Drop))?
            .map(|r| r.get::<_, Option<String>>(0));
        let role_is_ours = role_comment.as_ref().is_some_and(|c| c.as_deref() == Some(marker.as_str()));
        if role_is_ours {
            // No new sessions from here on, and none left writing behind the archive's back;
            // the membership lets DROP DATABASE ... WITH (FORCE) end any that remain.
            let ddl = format!(
                "{}; {}",
                tenant_sql::grant_membership(&target.role, &target.admin.user),
                tenant_sql::set_login(&target.role, false)
            );
            admin.batch_execute(&ddl).await.map_err(pg_retry(Step::Drop))?;
            admin
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                    &[&target.role.as_str()],
                )
                .await
                .map_err(pg_retry(Step::Drop))?;
        }
        // Our databases (final name, staging name) carry our marker; anything else under
        // those names is someone else's and is left alone.
        let mut ours = Vec::new();
        let mut foreign = Vec::new();
        let rows = admin
            .query(
                "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname IN ($1, $2) \
                 ORDER BY datname = $2 DESC",
                &[&target.staging.as_str(), &target.database.as_str()],
            )
            .await
            .map_err(pg_retry(Step::Drop))?;
        for row in rows {
            let (name, comment): (String, Option<String>) = (row.get(0), row.get(1));
            if comment.as_deref() == Some(marker.as_str()) {
                ours.push(PgIdent::from_catalog(name));
            } else {
                foreign.push(json!({ "database": name, "comment": comment }));
            }
        }
        if let Some(comment) = role_comment.as_ref().filter(|_| !role_is_ours) {
            foreign.push(json!({ "role": target.role.as_str(), "comment": comment }));
        }

        if let Some(dir) = &t.delete_archive_dir
            && let Some(db) = ours.first()
            && !self.catalog.has_event_since(t.id, "archive.created", "delete.requested").await?
        {
            self.fault(&t.slug, Step::Archive, Phase::Before).await?;
            if !role_is_ours {
                return Err(StepError::Retry(
                    Step::Archive,
                    format!("cannot archive: role {:?} is not this tenant's", target.role.as_str()),
                ));
            }
            let dir = std::path::Path::new(dir);
            let (file, dumped) =
                crate::lifecycle::archive(&target.admin, db, &target.role, dir, &t.slug, t.id)
                    .await
                    .map_err(|e| StepError::Retry(Step::Archive, e.to_string()))?;
            self.fault(&t.slug, Step::Archive, Phase::After).await?;
            let detail = json!({ "file": file.display().to_string(), "bytes": dumped.bytes });
            self.event(t.id, "archive.created", detail).await?;
        }

        self.fault(&t.slug, Step::Drop, Phase::Before).await?;
        for db in &ours {
            admin.batch_execute(&tenant_sql::drop_database(db)).await.map_err(pg_retry(Step::Drop))?;
        }
        if role_is_ours {
            admin.batch_execute(&tenant_sql::drop_role(&target.role)).await.map_err(pg_retry(Step::Drop))?;
        }
        self.fault(&t.slug, Step::Drop, Phase::After).await?;
        if !foreign.is_empty() {
            tracing::warn!(tenant = %t.slug, ?foreign, "objects with this tenant's names are not tenantd's; left alone");
            self.event(t.id, "delete.skipped_foreign", json!({ "objects": foreign })).await?;
        }
        let detail = json!({ "database": target.database.as_str(), "role": target.role.as_str() });
        self.catalog.mark_deleted(t.id, self.actor, &detail).await?;
        metrics::counter!("tenantd_tenants_deleted_total").increment(1);
        tracing::info!(tenant = %t.slug, server = %target.server, "tenant deleted");
        Ok(())
    }
}

/// The archive file name of a tenant: `<slug>-<id prefix>-<UTC timestamp>.dump`.
pub fn archive_name(slug: &str, id: uuid::Uuid) -> String {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    format!("{slug}-{}-{stamp}.dump", &id.simple().to_string()[..8])
}
