//! Leases: how a process holds a tenant (or a backup day, or a run) while it works on it.
//!
//! A claim sets `lease_owner` and `lease_until` in the catalog; every write made under it is
//! guarded by the catalog's one lease predicate (see `catalog::tenants`), so a process that
//! lost its lease can change nothing. [`keep_lease`] renews the lease while the work runs and
//! ends the work on a *local* deadline, so a hung catalog cannot let work go on after another
//! process may have claimed the tenant.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::catalog::{Catalog, CatalogError};

/// The lease is gone, or can no longer be proven ours: stop before another process acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("lease lost: another process may hold this tenant now")]
pub struct LeaseLost;

/// A lease owner for one claim: the process identity plus a random suffix, so that two
/// tasks of one process can never mistake each other's lease for their own.
pub fn claim_owner(instance: &str) -> String {
    format!("{instance}/{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// Keeps a tenant's lease alive: renews it every third of its length. Returns (ending the
/// work it races against) when the lease is lost: taken by another process, or no longer
/// provably ours — the local deadline (last successful renewal + lease − a tenth) is what
/// counts, so a hung catalog or a saturated pool cannot let DDL go on after another process
/// may have claimed the tenant. `claimed_at` is taken *before* the claim query (conservative).
pub async fn keep_lease(
    catalog: &Catalog,
    id: Uuid,
    owner: &str,
    lease: Duration,
    claimed_at: Instant,
) -> LeaseLost {
    let margin = lease / 10;
    let mut valid_until = claimed_at + lease - margin;
    loop {
        tokio::time::sleep_until((Instant::now() + lease / 3).min(valid_until).into()).await;
        let now = Instant::now();
        if now >= valid_until {
            tracing::warn!("lease could not be renewed in time; stopping before it may be taken");
            return LeaseLost;
        }
        match tokio::time::timeout(valid_until - now, catalog.renew_lease(id, owner, lease)).await {
            Ok(Ok(())) => valid_until = now + lease - margin,
            Ok(Err(CatalogError::LeaseLost)) => return LeaseLost,
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew a lease; retrying while it lasts"),
            Err(_) => {
                tracing::warn!("lease renewal did not answer in time; stopping before it may be taken");
                return LeaseLost;
            }
        }
    }
}
