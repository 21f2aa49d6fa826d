//! Provisioning by a warm spare (see [`crate::spares`] for how spares are made):
//!
//! 1. **take** (catalog, one transaction under the placement lock): placement chooses the
//!    server as always; the oldest ready spare there at exactly this build's tenant
//!    migrations version is claimed with `FOR UPDATE SKIP LOCKED` (never handed out twice,
//!    whatever the number of daemons) and marked `taken` by the tenant, which is placed with
//!    its own names and a new sealed password (CREATING). No usable spare: nothing is written
//!    and the cold path places the tenant.
//! 2. **switch** (server, one simple-query message, so all or nothing): the spare's role and
//!    database are renamed to the tenant's names; the role gets the tenant's password and
//!    limits, both the tenant's marker. Spares have no sessions, so the renames do not wait.
//! 3. **ready** (catalog, one statement): READY at the spare's version, the spare's row gone.
//!
//! A crash after 1 leaves the tenant CREATING with its spare `taken`; the next attempt
//! finds it ([`Catalog::spare_taken_by`](crate::catalog::Catalog::spare_taken_by)), looks at
//! the server, and finishes 2 (unless the tenant's marker is already on its role: 2 is done)
//! and 3. A spare that cannot be used (gone, or the tenant's names taken on the server) is
//! given back (to the refill, which discards or keeps it) and the cold path makes the tenant.

use serde_json::json;

use super::{Phase, Provisioner, Step, StepError, Target, pg_retry, timed};
use crate::catalog::spares::SpareRecord;
use crate::catalog::tenants::{Placement, TenantRecord, TenantStatus};
use crate::crypto::{self, tenant_aad};
use crate::limits::TenantLimits;
use crate::markers::{self, Ownership};
use crate::names::{PgIdent, TenantSlug};
use crate::{placement, tenant_sql};

const STEP: Step = Step::SpareTake;

/// What the server shows of a taken spare.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// The tenant's role carries the tenant's marker: the switch is done.
    Switched,
    /// The spare's role and database are there, with the spare's marker.
    Intact,
    /// Not usable: something holds the tenant's names already (the cold path says what), or
    /// the spare is (partly) gone; `true` when the spare itself is intact.
    Unusable(bool),
}

impl Provisioner<'_> {
    /// Provisions `tenant` by a spare when one can be had (or was taken by an earlier
    /// attempt); `Some(version)` once READY, `None` when the cold path must do the work.
    pub(super) async fn by_spare(&self, tenant: &TenantRecord) -> Result<Option<i32>, StepError> {
        let (placed, spare) = match tenant.server {
            None if self.core.settings.spares.per_server > 0
                && self.restore_from.is_none()
                && tenant.restore_source.is_none() =>
            {
                match timed(STEP, self.take(tenant)).await? {
                    Some((placement, spare)) => (Some(placement), spare),
                    None => return Ok(None),
                }
            }
            Some(_) if tenant.status == TenantStatus::Creating => {
                match self.core.catalog.spare_taken_by(tenant.id).await? {
                    Some(spare) => (None, spare),
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        let fresh = placed.is_some();
        let target = self.target(tenant, placed).await?;
        timed(STEP, self.switch(&target, tenant, &spare, fresh)).await
    }

    /// Step 1: placement and a spare, in one catalog transaction.
    async fn take(&self, t: &TenantRecord) -> Result<Option<(Placement, SpareRecord)>, StepError> {
        let slug = TenantSlug::parse(&t.slug).map_err(|e| StepError::Fatal(Step::Place, e.to_string()))?;
        let derived = PgIdent::for_tenant(&self.core.settings.names.prefix, &slug);
        let database = t.database_name.clone().unwrap_or_else(|| derived.to_string());
        let role = t.role_name.clone().unwrap_or_else(|| derived.to_string());
        let password = crypto::random_secret(24);
        let sealed =
            self.core.keyring.seal(secrecy::ExposeSecret::expose_secret(&password), &tenant_aad(t.id));
        let (server, region) = (t.requested_server.as_deref(), t.requested_region.as_deref());
        let version = self.core.migrations.latest_version();
        let taken = self
            .core
            .catalog
            .take_spare(t.id, self.actor, version, |servers| {
                let server = placement::choose(servers, server, region).ok()?;
                Some(Placement {
                    server,
                    database_name: database,
                    role_name: role,
                    role_password_sealed: sealed,
                })
            })
            .await?;
        if let Some((p, spare)) = &taken {
            tracing::info!(tenant = %t.slug, server = %p.server, spare = %spare.id, "tenant placed on a warm spare");
        }
        Ok(taken)
    }

    /// Steps 2 and 3; `fresh`: the take was just made (the spare was ready a moment ago, so
    /// the switch is tried before looking).
    async fn switch(
        &self,
        t: &Target,
        tenant: &TenantRecord,
        spare: &SpareRecord,
        fresh: bool,
    ) -> Result<Option<i32>, StepError> {
        self.fault(&t.slug, STEP, Phase::Before).await?;
        let name =
            |text: &str| PgIdent::from_catalog(text).map_err(|e| StepError::Fatal(STEP, e.to_string()));
        let (spare_db, spare_role) = (name(&spare.database_name)?, name(&spare.role_name)?);
        let limits = TenantLimits::resolve(&self.core.settings.limits, &tenant.limits)
            .map_err(|e| StepError::Fatal(STEP, e.to_string()))?;
        let verifier = t.scram_verifier();
        let ddl = tenant_sql::take_spare(
            (&spare_db, &spare_role),
            (&t.database, &t.role),
            &verifier,
            t.id,
            &limits,
        );
        let admin = self.admin(t, STEP).await?;
        let mut tried = false;
        if fresh {
            match admin.batch_execute(&ddl).await {
                Ok(()) => tried = true,
                Err(e) => {
                    tracing::warn!(tenant = %t.slug, spare = %spare.id, error = %crate::pg::describe(&e),
                    "switching to a warm spare failed; looking at the server")
                }
            }
        }
        if !tried {
            match self.look(&admin, t, spare, &spare_db, &spare_role).await? {
                Found::Switched => {}
                Found::Intact => {
                    admin.batch_execute(&ddl).await.map_err(pg_retry(STEP))?;
                }
                Found::Unusable(intact) => {
                    self.core.catalog.return_spare(t.id, intact).await?;
                    metrics::counter!("tenantd_spares_returned_total").increment(1);
                    tracing::warn!(tenant = %t.slug, spare = %spare.id, intact, "warm spare not usable; cold path");
                    return Ok(None);
                }
            }
        }
        self.fault(&t.slug, STEP, Phase::After).await?;
        let detail = json!({ "schema_version": spare.schema_version, "spare": spare.id });
        let applied = limits.to_json();
        self.core
            .catalog
            .mark_ready_from_spare(t.id, self.actor, spare.schema_version, &applied, &detail)
            .await?;
        metrics::counter!("tenantd_tenants_ready_total").increment(1);
        metrics::counter!("tenantd_spares_taken_total").increment(1);
        tracing::info!(tenant = %t.slug, server = %t.server.name, spare = %spare.id, version = spare.schema_version,
            "tenant is READY (warm spare)");
        Ok(Some(spare.schema_version))
    }

    async fn look(
        &self,
        admin: &tokio_postgres::Client,
        t: &Target,
        spare: &SpareRecord,
        spare_db: &PgIdent,
        spare_role: &PgIdent,
    ) -> Result<Found, StepError> {
        let role = markers::role(admin, t.id, &t.role).await.map_err(pg_retry(STEP))?;
        let db = markers::databases(admin, t.id, &[&t.database]).await.map_err(pg_retry(STEP))?;
        let db_ours = db.first().is_some_and(|(_, o)| o.is_ours());
        if role.ownership.is_ours() && db_ours {
            return Ok(Found::Switched);
        }
        let blocked =
            role.ownership != Ownership::Absent || db.first().is_some_and(|(_, o)| *o != Ownership::Absent);
        let (d, r) = markers::spare(admin, spare.id, spare_db, spare_role).await.map_err(pg_retry(STEP))?;
        let intact = d.is_ours() && r.is_ours();
        Ok(if intact && !blocked { Found::Intact } else { Found::Unusable(intact) })
    }
}
