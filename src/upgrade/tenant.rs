//! Upgrading one tenant: claim its lease, check its database's own history, apply what is
//! pending as the tenant role in one transaction, record the outcome.

use serde_json::json;

use super::{Outcome, Planned, UpgradeError, Upgrader};
use crate::catalog::events::EventKind;
use crate::catalog::tenants::TenantRecord;
use crate::target::TenantTarget;

impl Upgrader<'_> {
    /// Upgrades one tenant, holding its lease throughout.
    pub(super) async fn one(&self, planned: &Planned) -> Outcome {
        let lease = self.core.settings.workers.lease;
        let owner = crate::leases::claim_owner(self.actor);
        let claimed_at = std::time::Instant::now();
        let tenant = match self.core.catalog.claim_for_upgrade(&planned.slug, &owner, lease).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                let reason = match self.core.catalog.tenant(&planned.slug).await {
                    Ok(t) if t.status != crate::catalog::tenants::TenantStatus::Ready => {
                        format!("tenant is {}", t.status)
                    }
                    Ok(t) => format!("held by {}", t.lease_owner.unwrap_or_else(|| "another process".into())),
                    Err(e) => e.to_string(),
                };
                return Outcome::Skipped { reason };
            }
            Err(e) => {
                return Outcome::Failed { version: planned.from_version, error: format!("catalog: {e}") };
            }
        };
        let span = tracing::info_span!("upgrade", tenant = %tenant.slug);
        let work = async {
            tokio::select! {
                outcome = self.apply(&tenant) => outcome,
                lost = crate::leases::keep_lease(&self.core.catalog, tenant.id, &owner, lease, claimed_at) => {
                    Err(UpgradeError::Lease(lost))
                }
            }
        };
        let result = tracing::Instrument::instrument(work, span).await;
        self.conclude(&tenant, &owner, result).await
    }

    /// Connects as the tenant role and applies what is pending.
    async fn apply(&self, tenant: &TenantRecord) -> Result<Outcome, UpgradeError> {
        let target = TenantTarget::resolve(&self.core.catalog, &self.core.keyring, tenant).await?;
        let config = target.migration_config(None, "tenantd-upgrade");
        let mut client = crate::pg::connect(&config, &target.server.tls, "tenant upgrade").await?;
        let recorded = crate::tenant_migrations::current_version(&mut client).await?;
        if recorded > self.migrations.latest_version() {
            return Ok(Outcome::Ahead { version: recorded });
        }
        let (version, applied) = self.migrations.apply(&mut client).await?;
        Ok(if applied.is_empty() {
            Outcome::Current { version }
        } else {
            Outcome::Upgraded { from: recorded, to: version, applied }
        })
    }

    /// Writes the outcome to the catalog (and releases the lease).
    async fn conclude(
        &self,
        tenant: &TenantRecord,
        owner: &str,
        result: Result<Outcome, UpgradeError>,
    ) -> Outcome {
        let written = match &result {
            Ok(Outcome::Upgraded { from, to, applied }) => {
                tracing::info!(tenant = %tenant.slug, from, to, "tenant upgraded");
                metrics::counter!("tenantd_upgrades_total", "outcome" => "upgraded").increment(1);
                let detail = json!({ "from": from, "to": to, "applied": applied });
                self.core
                    .catalog
                    .finish_upgrade(tenant.id, owner, *to, EventKind::UpgradeApplied, &detail)
                    .await
            }
            Ok(Outcome::Current { version }) => {
                let detail = json!({ "version": version });
                self.core
                    .catalog
                    .finish_upgrade(tenant.id, owner, *version, EventKind::UpgradeCurrent, &detail)
                    .await
            }
            Ok(Outcome::Ahead { version }) => {
                tracing::warn!(tenant = %tenant.slug, version, "tenant database is newer than this build; left alone");
                let error = format!(
                    "database at version {version}, newer than this build ({})",
                    self.migrations.latest_version()
                );
                self.core.catalog.fail_upgrade(tenant.id, owner, &error, &json!({ "ahead": version })).await
            }
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::error!(tenant = %tenant.slug, %error, "tenant upgrade failed; it stays at its old version");
                metrics::counter!("tenantd_upgrades_total", "outcome" => "failed").increment(1);
                let detail = json!({ "error": error.to_string(), "version": tenant.schema_version });
                self.core.catalog.fail_upgrade(tenant.id, owner, &format!("upgrade: {error}"), &detail).await
            }
        };
        if let Err(e) = written {
            tracing::error!(tenant = %tenant.slug, error = %e, "cannot record the upgrade outcome; the lease will expire");
        }
        match result {
            Ok(outcome) => outcome,
            Err(error) => Outcome::Failed { version: tenant.schema_version, error: error.to_string() },
        }
    }
}
