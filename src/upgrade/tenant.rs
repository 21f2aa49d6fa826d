//! Upgrading one tenant: its lease (claimed a few tenants at a time, [`Upgrader::claim`]),
//! what is pending applied as the tenant role in one transaction (its database's own history
//! checked first, under the lock), the outcome and its run result recorded in one catalog
//! statement.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use uuid::Uuid;

use super::run::Ctx;
use super::{Outcome, Planned, UpgradeError, Upgrader};
use crate::catalog::CatalogError;
use crate::catalog::events::EventKind;
use crate::catalog::tenants::TenantRecord;
use crate::catalog::upgrades::RunResult;
use crate::target::TenantTarget;
use crate::tenant_migrations::Upgrade;

/// A planned tenant's lease, as claimed with the others of its chunk.
pub(super) enum Claimed {
    /// Ours since `at` (taken before the claim statement, as [`crate::leases::keep_lease`]
    /// wants), for `owner`.
    Held { tenant: Box<TenantRecord>, owner: Arc<str>, at: Instant },
    /// Not READY any more, or held by another process.
    NotHeld,
    /// The claim statement failed.
    Failed(String),
}

impl Upgrader<'_> {
    /// Claims the leases of a chunk of planned tenants in one catalog statement (one commit
    /// for the chunk instead of one per tenant).
    pub(super) async fn claim(&self, chunk: &[Planned]) -> Vec<Claimed> {
        let owner: Arc<str> = crate::leases::claim_owner(self.actor).into();
        let at = Instant::now();
        let slugs: Vec<&str> = chunk.iter().map(|t| t.slug.as_str()).collect();
        let lease = self.core.settings.workers.lease;
        match self.core.catalog.claim_ready_many(&slugs, &owner, lease).await {
            Ok(claimed) => {
                let mut by_slug: HashMap<String, TenantRecord> =
                    claimed.into_iter().map(|t| (t.slug.clone(), t)).collect();
                chunk
                    .iter()
                    .map(|t| match by_slug.remove(&t.slug) {
                        Some(tenant) => Claimed::Held { tenant: Box::new(tenant), owner: owner.clone(), at },
                        None => Claimed::NotHeld,
                    })
                    .collect()
            }
            Err(e) => chunk.iter().map(|_| Claimed::Failed(format!("catalog: {e}"))).collect(),
        }
    }

    /// Gives a claimed tenant back without working on it (the run stopped).
    pub(super) async fn release(&self, claim: Claimed) {
        if let Claimed::Held { tenant, owner, .. } = claim
            && let Err(e) = self.core.catalog.release_leases(&[tenant.id], &owner).await
        {
            tracing::error!(tenant = %tenant.slug, error = %e, "cannot release the lease of a tenant the run did not start; it expires by itself");
        }
    }

    /// Upgrades one tenant of the run, holding its lease throughout, and records its result.
    /// An `Err` says the result could not be recorded (the outcome is still returned).
    pub(super) async fn one(
        &self,
        ctx: &Ctx,
        planned: &Planned,
        claim: Claimed,
    ) -> (Outcome, Result<(), CatalogError>) {
        let run = ctx.run;
        let lease = self.core.settings.workers.lease;
        // Not claimable with its chunk (held a moment by another task, the catalog briefly
        // unreachable), or claimed so long ago that the lease ran out while the tenants ahead
        // of it worked: tried once more now, at its own turn.
        let claim = match claim {
            Claimed::Held { tenant, owner, at } if at.elapsed() > lease / 3 => {
                let renewing = Instant::now();
                match self.core.catalog.renew_lease(tenant.id, &owner, lease).await {
                    Ok(()) => Claimed::Held { tenant, owner, at: renewing },
                    Err(e) => {
                        tracing::debug!(tenant = %tenant.slug, error = %e, "chunk lease not renewed; claiming again");
                        Claimed::NotHeld
                    }
                }
            }
            other => other,
        };
        let claim = match claim {
            Claimed::NotHeld | Claimed::Failed(_) => {
                let owner: Arc<str> = crate::leases::claim_owner(self.actor).into();
                let at = Instant::now();
                match self.core.catalog.claim_for_upgrade(&planned.slug, &owner, lease).await {
                    Ok(Some(tenant)) => Claimed::Held { tenant: Box::new(tenant), owner, at },
                    Ok(None) => Claimed::NotHeld,
                    Err(e) => Claimed::Failed(format!("catalog: {e}")),
                }
            }
            other => other,
        };
        let (tenant, owner, claimed_at) = match claim {
            Claimed::Held { tenant, owner, at } => (tenant, owner, at),
            Claimed::NotHeld => {
                let reason = match self.core.catalog.tenant(&planned.slug).await {
                    Ok(t) if t.status != crate::catalog::tenants::TenantStatus::Ready => {
                        format!("tenant is {}", t.status)
                    }
                    Ok(t) => format!("held by {}", t.lease_owner.unwrap_or_else(|| "another process".into())),
                    Err(e) => e.to_string(),
                };
                return self.unleased(run, planned, Outcome::Skipped { reason }).await;
            }
            Claimed::Failed(error) => {
                let failed = Outcome::Failed { version: planned.from_version, error };
                return self.unleased(run, planned, failed).await;
            }
        };
        let span = tracing::info_span!("upgrade", tenant = %tenant.slug);
        let work = async {
            tokio::select! {
                outcome = self.apply(ctx, &tenant) => outcome,
                lost = crate::leases::keep_lease(&self.core.catalog, tenant.id, &owner, lease, claimed_at) => {
                    Err(UpgradeError::Lease(lost))
                }
            }
        };
        let result = tracing::Instrument::instrument(work, span).await;
        self.conclude(run, planned, &tenant, &owner, result).await
    }

    /// Records the result of a tenant that was not claimed.
    async fn unleased(
        &self,
        run: Uuid,
        planned: &Planned,
        outcome: Outcome,
    ) -> (Outcome, Result<(), CatalogError>) {
        let (to, detail) = outcome.result_fields();
        let written = self.core.catalog.insert_result(&run_result(run, planned, &outcome, to, &detail)).await;
        (outcome, written)
    }

    /// Connects as the tenant role and applies what is pending.
    async fn apply(&self, ctx: &Ctx, tenant: &TenantRecord) -> Result<Outcome, UpgradeError> {
        let server_name = tenant.server.as_deref().unwrap_or_default();
        let target = match ctx.servers.get(server_name) {
            Some(server) => TenantTarget::new(tenant, server, &self.core.keyring)?,
            None => TenantTarget::resolve(&self.core.catalog, &self.core.keyring, tenant).await?,
        };
        let config = target.migration_config(None, "tenantd-upgrade");
        let mut client = crate::pg::connect(&config, &target.server.tls, "tenant upgrade").await?;
        Ok(match self.migrations.upgrade(&mut client).await? {
            Upgrade::Ahead(version) => Outcome::Ahead { version },
            Upgrade::Done { to, applied, .. } if applied.is_empty() => Outcome::Current { version: to },
            Upgrade::Done { from, to, applied } => Outcome::Upgraded { from, to, applied },
        })
    }

    /// Writes the outcome and its run result to the catalog, releasing the lease.
    async fn conclude(
        &self,
        run: Uuid,
        planned: &Planned,
        tenant: &TenantRecord,
        owner: &str,
        result: Result<Outcome, UpgradeError>,
    ) -> (Outcome, Result<(), CatalogError>) {
        let outcome = match &result {
            Ok(outcome) => outcome.clone(),
            Err(error) => Outcome::Failed { version: tenant.schema_version, error: error.to_string() },
        };
        let (to, result_detail) = outcome.result_fields();
        let recorded = run_result(run, planned, &outcome, to, &result_detail);
        let catalog = &self.core.catalog;
        let written = match &result {
            Ok(Outcome::Upgraded { from, to, applied }) => {
                tracing::info!(tenant = %tenant.slug, from, to, "tenant upgraded");
                metrics::counter!("tenantd_upgrades_total", "outcome" => "upgraded").increment(1);
                let detail = json!({ "from": from, "to": to, "applied": applied });
                catalog
                    .finish_upgrade(tenant.id, owner, *to, EventKind::UpgradeApplied, &detail, &recorded)
                    .await
            }
            Ok(Outcome::Current { version }) => {
                let detail = json!({ "version": version });
                catalog
                    .finish_upgrade(tenant.id, owner, *version, EventKind::UpgradeCurrent, &detail, &recorded)
                    .await
            }
            Ok(Outcome::Ahead { version }) => {
                tracing::warn!(tenant = %tenant.slug, version, "tenant database is newer than this build; left alone");
                let error = format!(
                    "database at version {version}, newer than this build ({})",
                    self.migrations.latest_version()
                );
                catalog.fail_upgrade(tenant.id, owner, &error, &json!({ "ahead": version }), &recorded).await
            }
            Ok(_) => catalog.insert_result(&recorded).await,
            Err(error) => {
                tracing::error!(tenant = %tenant.slug, %error, "tenant upgrade failed; it stays at its old version");
                metrics::counter!("tenantd_upgrades_total", "outcome" => "failed").increment(1);
                let detail = json!({ "error": error.to_string(), "version": tenant.schema_version });
                catalog.fail_upgrade(tenant.id, owner, &format!("upgrade: {error}"), &detail, &recorded).await
            }
        };
        let written = match written {
            // The result row is written with the statement that found the lease gone.
            Err(CatalogError::LeaseLost) => {
                tracing::error!(tenant = %tenant.slug, "lease lost before the upgrade outcome was recorded on the tenant");
                Ok(())
            }
            Err(e) => {
                tracing::error!(tenant = %tenant.slug, error = %e, "cannot record the upgrade outcome; the lease will expire");
                Err(e)
            }
            Ok(()) => Ok(()),
        };
        (outcome, written)
    }
}

/// A planned tenant's result row in `run`.
fn run_result<'a>(
    run: Uuid,
    planned: &'a Planned,
    outcome: &Outcome,
    to: Option<i32>,
    detail: &'a Option<String>,
) -> RunResult<'a> {
    RunResult {
        run,
        slug: &planned.slug,
        kind: outcome.kind(),
        from: Some(planned.from_version),
        to,
        detail: detail.as_deref(),
    }
}
