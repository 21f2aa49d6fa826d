//! Tenant lifecycle operations for operators: suspend, resume, dump, archive.
//!
//! Suspension keeps the data but stops all use: the status turns SUSPENDED first (every daemon
//! closes the tenant's pools and handles, and lending answers 423), then the role loses LOGIN
//! and its sessions are ended. Resuming gives LOGIN back and then READY. Both claim the tenant
//! with a lease like every other writer, so they never interleave with provisioning,
//! upgrades or deletion, and both can simply be run again if interrupted.

use std::path::Path;

use serde_json::json;

use crate::admin::AdminTarget;
use crate::catalog::CatalogError;
use crate::catalog::events::EventKind;
use crate::catalog::tenants::{TenantRecord, TenantStatus};
use crate::core::Core;
use crate::dumps::{self, DumpError, Dumped};
use crate::limits::{LimitOverrides, TenantLimits};
use crate::target::{ConnectionDetails, TargetError, TenantTarget};
use crate::tenant_sql;
use secrecy::ExposeSecret;

/// A lifecycle problem.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The tenant is not in a state this operation applies to, or another process holds it.
    #[error("{0}")]
    WrongState(String),
    /// Catalog failure (not found included).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A value in the request (or a hand-edited catalog row) is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The tenant's catalog row cannot lead to its database.
    #[error(transparent)]
    Target(#[from] TargetError),
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

/// Lifecycle operations of one process, acting as `actor`.
pub struct Lifecycle<'a> {
    core: &'a Core,
    actor: &'a str,
}

/// A tenant's target and its server's admin.
pub(crate) async fn resolve(
    core: &Core,
    t: &TenantRecord,
) -> Result<(TenantTarget, AdminTarget), LifecycleError> {
    let target = TenantTarget::resolve(&core.catalog, &core.keyring, t).await?;
    let admin = AdminTarget::from_record(&target.server, &core.keyring)
        .map_err(|e| LifecycleError::Server(e.to_string()))?;
    Ok((target, admin))
}

/// Ends a tenant connection's backend on its server (one that ignored a cancel request), if
/// it is still that tenant role's; returns whether one was ended.
pub async fn terminate_backend(core: &Core, backend: &crate::pools::Backend) -> Result<bool, LifecycleError> {
    let record = core.catalog.server(&backend.server).await?;
    let admin = AdminTarget::from_record(&record, &core.keyring)
        .map_err(|e| LifecycleError::Server(e.to_string()))?;
    let client =
        core.admin_pools.get(&record, &admin).await.map_err(|e| LifecycleError::Server(e.to_string()))?;
    let role = crate::names::PgIdent::from_catalog(&backend.role)
        .map_err(|e| LifecycleError::Invalid(e.to_string()))?;
    let server_error = |e: tokio_postgres::Error| LifecycleError::Server(crate::pg::describe(&e));
    client.batch_execute(&tenant_sql::grant_membership(&role, &admin.user)).await.map_err(server_error)?;
    let ended: i64 = client
        .query_one(
            "SELECT pg_catalog.count(pg_catalog.pg_terminate_backend(a.pid)) FROM pg_catalog.pg_stat_activity a \
             WHERE a.pid OPERATOR(pg_catalog.=) $1 AND a.usename OPERATOR(pg_catalog.=) $2::pg_catalog.name",
            &[&backend.pid, &role.as_str()],
        )
        .await
        .map_err(server_error)?
        .get(0);
    if ended > 0 {
        metrics::counter!("tenantd_backends_terminated_total").increment(1);
        tracing::warn!(server = %backend.server, role = %backend.role, pid = backend.pid, "ended a backend that ignored its cancel request");
    }
    Ok(ended > 0)
}

impl<'a> Lifecycle<'a> {
    /// Lifecycle operations acting as `actor` (events, lease owners).
    pub fn new(core: &'a Core, actor: &'a str) -> Self {
        Self { core, actor }
    }
}

impl Lifecycle<'_> {
    /// Takes the tenant's lease when it is in one of `statuses` and nobody holds it.
    pub(crate) async fn claim(
        &self,
        slug: &str,
        statuses: &[TenantStatus],
    ) -> Result<(TenantRecord, String), LifecycleError> {
        let owner = crate::leases::claim_owner(self.actor);
        match self
            .core
            .catalog
            .claim_in_status(slug, &owner, self.core.settings.workers.lease, statuses)
            .await?
        {
            Some(t) => Ok((t, owner)),
            None => {
                let t = self.core.catalog.tenant(slug).await?;
                Err(LifecycleError::WrongState(match (&t.lease_owner, t.lease_until) {
                    (Some(holder), Some(until)) if until > chrono::Utc::now() => {
                        format!("tenant {slug:?} is being worked on by {holder}; try again shortly")
                    }
                    _ => format!(
                        "tenant {slug:?} is {}; this needs {}",
                        t.status,
                        statuses.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" or ")
                    ),
                }))
            }
        }
    }

    async fn admin_for(
        &self,
        t: &TenantRecord,
    ) -> Result<(deadpool_postgres::Client, TenantTarget, AdminTarget), LifecycleError> {
        let (target, admin) = resolve(self.core, t).await?;
        let client = self
            .core
            .admin_pools
            .get(&target.server, &admin)
            .await
            .map_err(|e| LifecycleError::Server(e.to_string()))?;
        Ok((client, target, admin))
    }

    /// Suspends a READY tenant (running it again on a SUSPENDED one finishes an interrupted
    /// suspension).
    pub async fn suspend(&self, slug: &str) -> Result<TenantRecord, LifecycleError> {
        let (t, owner) = self.claim(slug, &[TenantStatus::Ready, TenantStatus::Suspended]).await?;
        let result = self.suspend_held(&t, &owner).await;
        self.release(&t, &owner).await;
        result?;
        Ok(self.core.catalog.tenant(slug).await?)
    }

    /// Suspends a tenant whose lease `owner` holds: SUSPENDED, then no LOGIN, sessions ended.
    pub(crate) async fn suspend_held(&self, t: &TenantRecord, owner: &str) -> Result<(), LifecycleError> {
        if t.status == TenantStatus::Ready {
            self.core
                .catalog
                .set_status(t.id, owner, TenantStatus::Suspended, EventKind::Suspended, &json!({}))
                .await?;
        }
        let (admin, target, server_admin) = self.admin_for(t).await?;
        let ended = tenant_sql::close_role(&admin, &target.role, &server_admin)
            .await
            .map_err(|e| LifecycleError::Server(crate::pg::describe(&e)))?;
        tracing::info!(tenant = %t.slug, sessions_ended = ended, "tenant suspended");
        Ok(())
    }

    /// Resumes a SUSPENDED tenant.
    pub async fn resume(&self, slug: &str) -> Result<TenantRecord, LifecycleError> {
        let (t, owner) = self.claim(slug, &[TenantStatus::Suspended]).await?;
        let result = self.resume_held(&t, &owner).await;
        self.release(&t, &owner).await;
        result?;
        Ok(self.core.catalog.tenant(slug).await?)
    }

    /// Resumes a tenant whose lease `owner` holds: LOGIN again, then READY.
    pub(crate) async fn resume_held(&self, t: &TenantRecord, owner: &str) -> Result<(), LifecycleError> {
        let (admin, target, _) = self.admin_for(t).await?;
        admin
            .batch_execute(&tenant_sql::set_login(&target.role, true))
            .await
            .map_err(|e| LifecycleError::Server(crate::pg::describe(&e)))?;
        self.core
            .catalog
            .set_status(t.id, owner, TenantStatus::Ready, EventKind::Resumed, &json!({}))
            .await?;
        tracing::info!(tenant = %t.slug, "tenant resumed");
        Ok(())
    }

    /// Replaces a tenant's limit overrides (`{}`: back to the defaults) and applies the
    /// result to its role at once when it is READY or SUSPENDED and free (otherwise the
    /// daemon's limits task applies it when it can).
    pub async fn set_limits(
        &self,
        slug: &str,
        overrides: &LimitOverrides,
    ) -> Result<TenantRecord, LifecycleError> {
        overrides.check().map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        let Some(t) = self.core.catalog.set_tenant_limits(slug, &overrides.to_json()).await? else {
            return Err(LifecycleError::Catalog(CatalogError::NotFound(format!("no tenant {slug:?}"))));
        };
        if matches!(t.status, TenantStatus::Ready | TenantStatus::Suspended) {
            self.apply_limits(slug).await?;
        }
        Ok(self.core.catalog.tenant(slug).await?)
    }

    /// Brings a READY or SUSPENDED tenant's role in line with its limits, under its lease.
    pub async fn apply_limits(&self, slug: &str) -> Result<TenantLimits, LifecycleError> {
        let (t, owner) = self.claim(slug, &[TenantStatus::Ready, TenantStatus::Suspended]).await?;
        let result = self.apply_limits_held(&t, &owner).await;
        self.release(&t, &owner).await;
        result
    }

    async fn apply_limits_held(&self, t: &TenantRecord, owner: &str) -> Result<TenantLimits, LifecycleError> {
        let limits = TenantLimits::resolve(&self.core.settings.limits, &t.limits)
            .map_err(|e| LifecycleError::Invalid(format!("tenant {}: {e}", t.slug)))?;
        let (admin, target, _) = self.admin_for(t).await?;
        admin
            .batch_execute(&tenant_sql::role_limits(&target.role, &limits))
            .await
            .map_err(|e| LifecycleError::Server(crate::pg::describe(&e)))?;
        self.core.catalog.record_limits_applied(t.id, owner, &limits.to_json()).await?;
        tracing::info!(tenant = %t.slug, connections = limits.connections, "tenant limits applied");
        Ok(limits)
    }

    /// Gives a READY or SUSPENDED tenant's role a new random password: on the server first,
    /// then sealed in the catalog (every daemon's pools reconnect with it). Returns the new
    /// connection details, to be shown once. Run again after an interruption: it makes another
    /// password and both places agree again.
    pub async fn rotate_password(&self, slug: &str) -> Result<ConnectionDetails, LifecycleError> {
        let (t, owner) = self.claim(slug, &[TenantStatus::Ready, TenantStatus::Suspended]).await?;
        let result = async {
            let (admin, target, _) = self.admin_for(&t).await?;
            let password = crate::crypto::random_secret(24);
            // Recorded with the password: the count of this build.
            let verifier =
                crate::crypto::tenant_scram_verifier(&password, t.id, crate::crypto::TENANT_SCRAM_ITERATIONS);
            admin
                .batch_execute(&tenant_sql::set_password(&target.role, &verifier))
                .await
                .map_err(|e| LifecycleError::Server(crate::pg::describe(&e)))?;
            let sealed = self.core.keyring.seal(password.expose_secret(), &crate::crypto::tenant_aad(t.id));
            self.core.catalog.record_new_password(t.id, &owner, &sealed).await?;
            let updated = self.core.catalog.tenant(slug).await?;
            Ok(TenantTarget::new(&updated, &target.server, &self.core.keyring)?
                .details(&self.core.settings.pgbouncer))
        }
        .await;
        self.release(&t, &owner).await;
        if result.is_ok() {
            tracing::info!(tenant = %slug, "tenant role password rotated");
        }
        result
    }

    /// Stores a READY tenant role's password again as [`TenantTarget::scram_verifier`] (same
    /// password, tenantd's salt), once: roles created before tenantd derived its salts have a
    /// random one, and PgBouncer's SCRAM pass-through needs the server's exact verifier. Under
    /// the tenant's lease, so it cannot undo a password rotation running meanwhile; a tenant
    /// held by another process is `WrongState` (try again later). Returns false when the
    /// tenant was aligned before.
    pub async fn align_password(&self, slug: &str) -> Result<bool, LifecycleError> {
        let t = self.core.catalog.tenant(slug).await?;
        if self.core.catalog.latest_event(t.id, &[EventKind::PasswordAligned]).await?.is_some() {
            return Ok(false);
        }
        let (t, owner) = self.claim(slug, &[TenantStatus::Ready]).await?;
        let result = async {
            let (admin, target, _) = self.admin_for(&t).await?;
            let server_error = |e: tokio_postgres::Error| LifecycleError::Server(crate::pg::describe(&e));
            let found = crate::markers::role(&admin, t.id, &target.role).await.map_err(server_error)?;
            if !found.ownership.is_ours() {
                return Err(LifecycleError::Invalid(format!(
                    "role {} of tenant {slug:?} does not carry its marker; left alone",
                    target.role
                )));
            }
            admin
                .batch_execute(&tenant_sql::set_password(&target.role, &target.scram_verifier()))
                .await
                .map_err(server_error)?;
            self.core.catalog.leased_event(t.id, &owner, EventKind::PasswordAligned, &json!({})).await?;
            Ok(true)
        }
        .await;
        self.release(&t, &owner).await;
        result
    }

    pub(crate) async fn release(&self, t: &TenantRecord, owner: &str) {
        match self.core.catalog.release_lease(t.id, owner).await {
            Ok(()) | Err(CatalogError::LeaseLost) => {}
            Err(e) => tracing::warn!(tenant = %t.slug, error = %e, "cannot release a lease; it will expire"),
        }
    }

    /// Dumps a READY or SUSPENDED tenant to `target` (`pg_dump` custom format).
    pub async fn dump(&self, slug: &str, target: &Path) -> Result<Dumped, LifecycleError> {
        let t = self.core.catalog.tenant(slug).await?;
        if !matches!(t.status, TenantStatus::Ready | TenantStatus::Suspended) {
            return Err(LifecycleError::WrongState(format!(
                "tenant {slug:?} is {}; only READY or SUSPENDED tenants can be dumped",
                t.status
            )));
        }
        let (tenant, admin) = resolve(self.core, &t).await?;
        let dumped = dumps::dump(&admin, &tenant.database, &tenant.role, t.id, target).await?;
        let detail = json!({ "bytes": dumped.bytes, "seconds": dumped.duration.as_secs_f64() });
        self.core.catalog.record_event(t.id, EventKind::Dumped, detail, self.actor).await?;
        Ok(dumped)
    }
}
