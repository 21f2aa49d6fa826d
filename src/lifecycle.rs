//! Tenant lifecycle operations for operators: suspend, resume, dump, archive.
//!
//! Suspension keeps the data but stops all use: the status turns SUSPENDED first (every daemon
//! closes the tenant's pools and handles, and lending answers 423), then the role loses LOGIN
//! and its sessions are ended. Resuming gives LOGIN back and then READY. Both claim the tenant
//! with a lease like every other writer, so they never interleave with provisioning,
//! upgrades or deletion, and both can simply be run again if interrupted.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::catalog::servers::ServerRecord;
use crate::catalog::tenants::{TenantRecord, TenantStatus};
use crate::catalog::{Catalog, CatalogError};
use crate::config::Settings;
use crate::crypto::Keyring;
use crate::dumps::{self, DumpError, Dumped};
use crate::names::PgIdent;
use crate::servers::{AdminPools, AdminTarget};
use crate::tenant_sql;

/// A lifecycle problem.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The tenant is not in a state this operation applies to, or another process holds it.
    #[error("{0}")]
    WrongState(String),
    /// Catalog failure (not found included).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The tenant's server could not be used.
    #[error("{0}")]
    Server(String),
    /// pg_dump / pg_restore.
    #[error(transparent)]
    Dump(#[from] DumpError),
    /// The slug is taken (a restore without `--replace`).
    #[error("{0}")]
    Exists(String),
    /// Creating or retrying the tenant failed.
    #[error(transparent)]
    Tenant(#[from] crate::tenants::TenantError),
}

/// What lifecycle operations need.
pub struct Lifecycle<'a> {
    /// Catalog.
    pub catalog: &'a Catalog,
    /// Keys.
    pub keyring: &'a Keyring,
    /// Settings (lease).
    pub settings: &'a Settings,
    /// Actor of events and leases.
    pub actor: &'a str,
    /// Admin connections.
    pub admin_pools: &'a AdminPools,
}

/// The admin of a tenant's server and the tenant's database and role names.
pub async fn tenant_target(
    catalog: &Catalog,
    keyring: &Keyring,
    t: &TenantRecord,
) -> Result<(AdminTarget, PgIdent, PgIdent), LifecycleError> {
    let (_, admin, db, role) = tenant_server(catalog, keyring, t).await?;
    Ok((admin, db, role))
}

/// [`tenant_target`] with the server's catalog row.
async fn tenant_server(
    catalog: &Catalog,
    keyring: &Keyring,
    t: &TenantRecord,
) -> Result<(ServerRecord, AdminTarget, PgIdent, PgIdent), LifecycleError> {
    let server = t
        .server
        .as_deref()
        .ok_or_else(|| LifecycleError::WrongState(format!("tenant {} has no server", t.slug)))?;
    let record = catalog.server(server).await?;
    let admin =
        AdminTarget::from_record(&record, keyring).map_err(|e| LifecycleError::Server(e.to_string()))?;
    let db = PgIdent::from_catalog(t.database_name.clone().unwrap_or_default());
    let role = PgIdent::from_catalog(t.role_name.clone().unwrap_or_default());
    Ok((record, admin, db, role))
}

/// Dumps a tenant's database into `dir/<archive name>`; returns the file and figures.
pub async fn archive(
    admin: &AdminTarget,
    db: &PgIdent,
    role: &PgIdent,
    dir: &Path,
    slug: &str,
    id: uuid::Uuid,
) -> Result<(PathBuf, Dumped), DumpError> {
    dumps::create_dir(dir)?;
    let file = dir.join(crate::provisioner::archive_name(slug, id));
    let dumped = dumps::dump(admin, db, role, id, &file).await?;
    Ok((file, dumped))
}

impl Lifecycle<'_> {
    /// Takes the tenant's lease when it is in one of `statuses` and nobody holds it.
    pub(crate) async fn claim(
        &self,
        slug: &str,
        statuses: &[&str],
    ) -> Result<(TenantRecord, String), LifecycleError> {
        let owner = crate::workers::claim_owner(self.actor);
        match self.catalog.claim_in_status(slug, &owner, self.settings.workers.lease, statuses).await? {
            Some(t) => Ok((t, owner)),
            None => {
                let t = self.catalog.tenant(slug).await?;
                Err(LifecycleError::WrongState(match (&t.lease_owner, t.lease_until) {
                    (Some(holder), Some(until)) if until > chrono::Utc::now() => {
                        format!("tenant {slug:?} is being worked on by {holder}; try again shortly")
                    }
                    _ => format!("tenant {slug:?} is {}; this needs {}", t.status, statuses.join(" or ")),
                }))
            }
        }
    }

    async fn admin_for(
        &self,
        t: &TenantRecord,
    ) -> Result<(deadpool_postgres::Client, AdminTarget, PgIdent), LifecycleError> {
        let (record, admin, _, role) = tenant_server(self.catalog, self.keyring, t).await?;
        let client =
            self.admin_pools.get(&record, &admin).await.map_err(|e| LifecycleError::Server(e.to_string()))?;
        Ok((client, admin, role))
    }

    /// Suspends a READY tenant (running it again on a SUSPENDED one finishes an interrupted
    /// suspension).
    pub async fn suspend(&self, slug: &str) -> Result<TenantRecord, LifecycleError> {
        let (t, owner) = self.claim(slug, &["READY", "SUSPENDED"]).await?;
        let result = self.suspend_held(&t, &owner).await;
        self.release(&t, &owner).await;
        result?;
        Ok(self.catalog.tenant(slug).await?)
    }

    /// Suspends a tenant whose lease `owner` holds: SUSPENDED, then no LOGIN, sessions ended.
    pub(crate) async fn suspend_held(&self, t: &TenantRecord, owner: &str) -> Result<(), LifecycleError> {
        if t.status == TenantStatus::Ready {
            self.catalog.set_status(t.id, owner, TenantStatus::Suspended, "suspended", &json!({})).await?;
        }
        let (admin, target, role) = self.admin_for(t).await?;
        let ddl = format!(
            "{}; {}",
            tenant_sql::grant_membership(&role, &target.user),
            tenant_sql::set_login(&role, false)
        );
        admin.batch_execute(&ddl).await.map_err(|e| LifecycleError::Server(crate::pg::describe(&e)))?;
        let ended: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = $1",
                &[&role.as_str()],
            )
            .await
            .map_err(|e| LifecycleError::Server(crate::pg::describe(&e)))?
            .get(0);
        tracing::info!(tenant = %t.slug, sessions_ended = ended, "tenant suspended");
        Ok(())
    }

    /// Resumes a SUSPENDED tenant.
    pub async fn resume(&self, slug: &str) -> Result<TenantRecord, LifecycleError> {
        let (t, owner) = self.claim(slug, &["SUSPENDED"]).await?;
        let result = self.resume_held(&t, &owner).await;
        self.release(&t, &owner).await;
        result?;
        Ok(self.catalog.tenant(slug).await?)
    }

    /// Resumes a tenant whose lease `owner` holds: LOGIN again, then READY.
    pub(crate) async fn resume_held(&self, t: &TenantRecord, owner: &str) -> Result<(), LifecycleError> {
        let (admin, _, role) = self.admin_for(t).await?;
        admin
            .batch_execute(&tenant_sql::set_login(&role, true))
            .await
            .map_err(|e| LifecycleError::Server(crate::pg::describe(&e)))?;
        self.catalog.set_status(t.id, owner, TenantStatus::Ready, "resumed", &json!({})).await?;
        tracing::info!(tenant = %t.slug, "tenant resumed");
        Ok(())
    }

    pub(crate) async fn release(&self, t: &TenantRecord, owner: &str) {
        match self.catalog.release_lease(t.id, owner).await {
            Ok(()) | Err(CatalogError::LeaseLost) => {}
            Err(e) => tracing::warn!(tenant = %t.slug, error = %e, "cannot release a lease; it will expire"),
        }
    }

    /// Dumps a READY or SUSPENDED tenant to `target` (`pg_dump` custom format).
    pub async fn dump(&self, slug: &str, target: &Path) -> Result<Dumped, LifecycleError> {
        let t = self.catalog.tenant(slug).await?;
        if !matches!(t.status, TenantStatus::Ready | TenantStatus::Suspended) {
            return Err(LifecycleError::WrongState(format!(
                "tenant {slug:?} is {}; only READY or SUSPENDED tenants can be dumped",
                t.status
            )));
        }
        let (admin, db, role) = tenant_target(self.catalog, self.keyring, &t).await?;
        let dumped = dumps::dump(&admin, &db, &role, t.id, target).await?;
        let detail = json!({ "bytes": dumped.bytes, "seconds": dumped.duration.as_secs_f64() });
        self.catalog.record_event(t.id, "dumped", detail, self.actor).await?;
        Ok(dumped)
    }
}
