//! Carrying one tenant's provisioning, restore or deletion through in this process: the CLI's
//! `tenant create --wait`, `tenant restore` and `tenant drop`.
//!
//! The same steps, leases and crash safety as the daemon's workers: when a daemon gets to the
//! tenant first, this process waits for it; when this process dies (or is killed) midway,
//! running the same command again — or, except for restores, any daemon — carries it on.
//! A restore is driven only here, since only this process has the dump file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::catalog::events::EventKind;
use crate::catalog::tenants::{Claim, TenantRecord, TenantStatus};
use crate::core::Core;
use crate::lifecycle::{Lifecycle, LifecycleError};
use crate::provisioner::{Outcome, Provisioner, run_claimed};
use crate::tenants::CreateTenant;

/// Drives tenants in this process.
pub struct Driver<'a> {
    core: &'a Core,
    report: Box<dyn Fn(&str) + Send + Sync>,
}

/// What `tenant restore` asks for.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// Slug of the new tenant.
    pub slug: String,
    /// The dump (pg_dump custom format).
    pub input: PathBuf,
    /// Place it on this server.
    pub server: Option<String>,
    /// Drop an existing tenant of this slug first.
    pub replace: bool,
    /// With `replace`: the final archive of the replaced tenant goes here (`None`: none).
    pub replace_archive: Option<PathBuf>,
    /// Give up waiting after this long (the restore goes on when the command is run again).
    pub timeout: Duration,
}

/// A restore's result.
#[derive(Debug)]
pub struct Restored {
    /// The tenant as it ended up (READY unless the wait ran out or it failed).
    pub tenant: TenantRecord,
    /// Its bearer token when this run created it (shown once).
    pub token: Option<SecretString>,
}

impl<'a> Driver<'a> {
    /// A driver acting as the core's instance; progress goes to the log.
    pub fn new(core: &'a Core) -> Self {
        Self { core, report: Box::new(|line| tracing::info!("{line}")) }
    }

    /// Sends progress lines ("waiting: ...", "attempt failed: ...") here instead.
    #[must_use]
    pub fn with_report(mut self, report: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.report = Box::new(report);
        self
    }

    fn lifecycle(&self) -> Lifecycle<'_> {
        Lifecycle::new(self.core, &self.core.instance)
    }

    /// Works on `tenant` until it is settled (READY, ERROR, SUSPENDED, DELETED) or `timeout`
    /// passes; returns it as it is then. An injected crash ends this process's part at once,
    /// leaving the lease to expire, like a real crash.
    pub async fn drive(
        &self,
        tenant: &TenantRecord,
        timeout: Duration,
        restore_from: Option<&Path>,
    ) -> Result<TenantRecord, LifecycleError> {
        if tenant.restore_source.is_some()
            && restore_from.is_none()
            && tenant.status != TenantStatus::Deleting
        {
            // Provisioning it without the dump would make it READY and empty.
            return Err(LifecycleError::WrongState(format!(
                "tenant {} is a restore from {}; run `tenantd tenant restore {} -i FILE` to carry it on",
                tenant.slug,
                tenant.restore_source.as_deref().unwrap_or_default(),
                tenant.slug
            )));
        }
        let cancel = CancellationToken::new();
        let deadline = Instant::now() + timeout;
        loop {
            let current = self.core.catalog.tenant_by_id(tenant.id).await?;
            if current.status.is_settled() || Instant::now() >= deadline {
                return Ok(current);
            }
            let lease = self.core.settings.workers.lease;
            let owner = crate::leases::claim_owner(&self.core.instance);
            let claimed_at = Instant::now();
            let pause = match self.core.catalog.claim_tenant(&owner, lease, Some(tenant.id)).await? {
                Claim::Claimed { tenant: claimed, .. } => {
                    let p = Provisioner::new(self.core, &owner).restoring_from(restore_from);
                    match run_claimed(&p, &claimed, claimed_at, &cancel).await {
                        Outcome::Crashed => return Ok(self.core.catalog.tenant_by_id(tenant.id).await?),
                        Outcome::Waiting(reason) => {
                            (self.report)(&format!("waiting: {reason}"));
                            self.core.settings.workers.poll_interval
                        }
                        Outcome::Retrying(error) => {
                            (self.report)(&format!("attempt failed, will retry: {error}"));
                            Duration::ZERO
                        }
                        _ => Duration::ZERO,
                    }
                }
                // Held by a daemon (or a crashed run whose lease has not expired yet), or
                // scheduled for later: look again soon.
                Claim::Idle(next) => {
                    next.unwrap_or(Duration::from_millis(200)).min(Duration::from_millis(200))
                }
            };
            tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// `tenant restore`: a new tenant provisioned like any other, its database filled from the
    /// dump. A bad file is refused before anything is created; an existing slug is refused
    /// unless `replace` (the existing tenant is then dropped first, after a final archive into
    /// `replace_archive` when given); an interrupted or failed restore of the same slug from
    /// the same file is carried on.
    pub async fn restore(&self, req: &RestoreRequest) -> Result<Restored, LifecycleError> {
        crate::dumps::check_archive(&req.input).await?;
        let source = std::fs::canonicalize(&req.input)
            .map_err(|e| LifecycleError::WrongState(format!("{}: {e}", req.input.display())))?
            .display()
            .to_string();
        let slug = req.slug.as_str();
        let existing = match self.core.catalog.tenant(slug).await {
            Ok(t) if t.status != TenantStatus::Deleted => Some(t),
            Ok(_) | Err(crate::catalog::CatalogError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let resumable = |t: &TenantRecord| t.status.is_in_progress() || t.status == TenantStatus::Error;
        let (tenant, token) = match existing {
            Some(t) if t.restore_source.is_some() && resumable(&t) => {
                let recorded = t.restore_source.clone().unwrap_or_default();
                if recorded != source {
                    return Err(LifecycleError::WrongState(format!(
                        "tenant {slug} is being restored from {recorded}; run again with -i {recorded}, or drop it first"
                    )));
                }
                (self.report)(&format!("carrying on the restore of {slug} ({})", t.status));
                let t = if t.status == TenantStatus::Error {
                    crate::tenants::retry_unchecked(&self.core.catalog, &t, &self.core.instance).await?
                } else {
                    t
                };
                (t, None)
            }
            Some(t) if !req.replace => {
                return Err(LifecycleError::Exists(format!(
                    "tenant {slug} exists ({}); pass --replace to drop it and restore in its place",
                    t.status
                )));
            }
            existing => {
                if existing.is_some() {
                    let dropped = self.drop_tenant(slug, req.replace_archive.as_deref(), req.timeout).await?;
                    if dropped.status != TenantStatus::Deleted {
                        return Err(LifecycleError::WrongState(format!(
                            "tenant {slug} could not be dropped for the replace (still {}): {}",
                            dropped.status,
                            dropped.last_error.as_deref().unwrap_or("no reason recorded")
                        )));
                    }
                }
                let create = CreateTenant {
                    slug: slug.to_owned(),
                    server: req.server.clone(),
                    region: None,
                    labels: None,
                };
                let created = crate::tenants::create_from(
                    &self.core.catalog,
                    &self.core.settings,
                    &create,
                    Some(&source),
                )
                .await?;
                (created.tenant, created.token)
            }
        };
        let tenant = self.drive(&tenant, req.timeout, Some(Path::new(&source))).await?;
        Ok(Restored { tenant, token })
    }

    /// `tenant drop`: with `archive`, the tenant is suspended (no session writes behind the
    /// archive's back), dumped into that directory, and given back as it was if the dump
    /// fails — nothing is dropped then. Then DELETING, carried out here: sessions ended,
    /// database and role dropped (only ours), DELETED.
    pub async fn drop_tenant(
        &self,
        slug: &str,
        archive: Option<&Path>,
        timeout: Duration,
    ) -> Result<TenantRecord, LifecycleError> {
        let tenant = self.core.catalog.tenant(slug).await?;
        if tenant.status == TenantStatus::Deleted {
            return Err(LifecycleError::WrongState(format!("tenant {slug} is deleted already")));
        }
        let requested = match archive {
            Some(dir) => self.final_archive(&tenant, dir).await?,
            // A daemon may carry the deletion out as well as this process: whoever claims it.
            None => self.core.catalog.request_delete(slug, None, &self.core.instance, None).await?,
        };
        let Some(deleting) = requested else {
            let t = self.core.catalog.tenant(slug).await?;
            return Err(LifecycleError::WrongState(format!(
                "tenant {slug} is {} and being worked on by {}; try again shortly",
                t.status,
                t.lease_owner.as_deref().unwrap_or("another process")
            )));
        };
        self.drive(&deleting, timeout, None).await
    }

    /// Under one lease from start to end (so nothing resumes it or works on it meanwhile):
    /// suspends a READY tenant, dumps it into `dir`, and requests the deletion. If the dump
    /// fails, a tenant that was READY is resumed and the error returned: nothing is dropped.
    async fn final_archive(
        &self,
        tenant: &TenantRecord,
        dir: &Path,
    ) -> Result<Option<TenantRecord>, LifecycleError> {
        let slug = tenant.slug.as_str();
        let lifecycle = self.lifecycle();
        let (t, owner) = lifecycle
            .claim(slug, &[TenantStatus::Ready, TenantStatus::Suspended])
            .await
            .map_err(|e| match e {
                LifecycleError::WrongState(m) => LifecycleError::WrongState(format!(
                    "{m} (a final archive needs a READY or SUSPENDED tenant)"
                )),
                other => other,
            })?;
        let claimed_at = Instant::now();
        let was_ready = t.status == TenantStatus::Ready;
        let work = async {
            let (target, admin) = crate::lifecycle::resolve(self.core, &t).await?;
            if was_ready {
                lifecycle.suspend_held(&t, &owner).await?;
            }
            let archived =
                crate::dumps::archive(&admin, &target.database, &target.role, dir, slug, t.id).await?;
            Ok::<_, LifecycleError>(archived)
        };
        let lease = self.core.settings.workers.lease;
        let (result, lease_lost) = tokio::select! {
            result = work => (result, false),
            lost = crate::leases::keep_lease(&self.core.catalog, t.id, &owner, lease, claimed_at) => {
                (Err(LifecycleError::WrongState(format!("lost the tenant while archiving it: {lost}"))), true)
            }
        };
        match result {
            Ok((file, dumped)) => {
                let requested = async {
                    let detail = json!({ "file": file.display().to_string(), "bytes": dumped.bytes });
                    self.core
                        .catalog
                        .record_event(t.id, EventKind::ArchiveCreated, detail, &self.core.instance)
                        .await?;
                    (self.report)(&format!("final archive {}: {} bytes", file.display(), dumped.bytes));
                    self.core.catalog.request_delete(slug, None, &self.core.instance, Some(&owner)).await
                }
                .await;
                if requested.is_err() {
                    lifecycle.release(&t, &owner).await;
                }
                Ok(requested?)
            }
            Err(e) => {
                let detail = json!({ "error": e.to_string() });
                let recorded = self
                    .core
                    .catalog
                    .record_event(t.id, EventKind::ArchiveFailed, detail, &self.core.instance)
                    .await;
                // Without the lease, someone else decides about the tenant now: hands off.
                let state = if lease_lost {
                    "held by another process now".to_owned()
                } else if was_ready {
                    let resumed = lifecycle.resume_held(&t, &owner).await;
                    lifecycle.release(&t, &owner).await;
                    match resumed {
                        Ok(()) => "READY again".to_owned(),
                        Err(r) => format!(
                            "still SUSPENDED: resuming it failed ({r}); run `tenantd tenant resume {slug}`"
                        ),
                    }
                } else {
                    lifecycle.release(&t, &owner).await;
                    "SUSPENDED as before".to_owned()
                };
                let unrecorded = match recorded {
                    Ok(()) => String::new(),
                    Err(r) => format!(" (the failure could not be recorded: {r})"),
                };
                Err(LifecycleError::WrongState(format!(
                    "final archive failed, nothing was dropped: {e}; {slug} is {state}{unrecorded}"
                )))
            }
        }
    }
}
