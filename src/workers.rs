//! Provisioning workers: claim a tenant, keep its lease alive, run the steps, record the
//! outcome. Nothing is ever swallowed: every failure lands in `last_error`, an event, the log
//! and a metric, and is retried with growing delays until `max_attempts`, then `ERROR`.
//!
//! [`run_claimed`] is shared by the daemon's workers and by `tenantd tenant create --wait`,
//! so a CLI process provisions exactly as a daemon does (and never at the same time as one:
//! the lease decides).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::catalog::tenants::{Claim, TenantRecord};
use crate::catalog::{Catalog, CatalogError};
use crate::provisioner::{Provisioner, StepError};
use crate::startup::App;

/// What became of one claimed tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// READY at this schema version.
    Ready(i32),
    /// Failed; will be retried.
    Retrying(String),
    /// Failed for good (`ERROR`).
    Failed(String),
    /// Waiting for an eligible server.
    Waiting(String),
    /// Stopped without a result (shutdown, lease lost, catalog down).
    Interrupted(String),
    /// An injected crash: this process "died" here; its lease is left to expire.
    Crashed,
}

/// The delay before attempt `attempts + 1`; the last configured delay repeats.
pub fn backoff(delays: &[Duration], attempts: i32) -> Duration {
    let index = usize::try_from(attempts.max(1) - 1).unwrap_or(0);
    delays.get(index).or(delays.last()).copied().unwrap_or(Duration::from_secs(1))
}

/// Keeps a lease alive: renews it every third of its length. Returns (ending the work it
/// races against) when the lease is lost: taken by another process, or no longer provably
/// ours — the local deadline (last successful renewal + lease − a tenth) is what counts, so a
/// hung catalog or a saturated pool cannot let DDL go on after another process may have
/// claimed the tenant. `claimed_at` is taken *before* the claim query (conservative).
pub(crate) async fn keep_lease(
    catalog: &Catalog,
    id: Uuid,
    owner: &str,
    lease: Duration,
    claimed_at: Instant,
) -> StepError {
    let margin = lease / 10;
    let mut valid_until = claimed_at + lease - margin;
    loop {
        tokio::time::sleep_until((Instant::now() + lease / 3).min(valid_until).into()).await;
        let now = Instant::now();
        if now >= valid_until {
            tracing::warn!("lease could not be renewed in time; stopping before it may be taken");
            return StepError::LeaseLost;
        }
        match tokio::time::timeout(valid_until - now, catalog.renew_lease(id, owner, lease)).await {
            Ok(Ok(())) => valid_until = now + lease - margin,
            Ok(Err(CatalogError::LeaseLost)) => return StepError::LeaseLost,
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew a lease; retrying while it lasts"),
            Err(_) => {
                tracing::warn!("lease renewal did not answer in time; stopping before it may be taken");
                return StepError::LeaseLost;
            }
        }
    }
}

/// A lease owner for one claim: the daemon instance plus a random suffix, so that two
/// workers of one process can never mistake each other's lease for their own.
pub fn claim_owner(instance: &str) -> String {
    format!("{instance}/{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// The work a claimed tenant needs: provisioning, or deletion when DELETING.
async fn work(p: &Provisioner<'_>, tenant: &TenantRecord) -> Result<i32, StepError> {
    if tenant.status == crate::catalog::tenants::TenantStatus::Deleting {
        p.deprovision(tenant).await.map(|()| 0)
    } else {
        p.provision(tenant).await
    }
}

/// Provisions (or deletes) one claimed tenant and records the outcome.
pub async fn run_claimed(
    p: &Provisioner<'_>,
    tenant: &TenantRecord,
    claimed_at: Instant,
    cancel: &CancellationToken,
) -> Outcome {
    let span = tracing::info_span!("provision", tenant = %tenant.slug, attempt = tenant.attempts + 1);
    let lease = p.settings.workers.lease;
    async {
        let result = tokio::select! {
            result = work(p, tenant) => result,
            lost = keep_lease(p.catalog, tenant.id, p.actor, lease, claimed_at) => Err(lost),
            () = cancel.cancelled() => Err(StepError::Interrupted),
        };
        match result {
            Ok(version) => Outcome::Ready(version),
            Err(e) => record(p, tenant, e).await,
        }
    }
    .instrument(span)
    .await
}

async fn record(p: &Provisioner<'_>, t: &TenantRecord, error: StepError) -> Outcome {
    let catalog = p.catalog;
    let written = match &error {
        StepError::Interrupted => {
            tracing::info!("shutdown: giving the tenant back");
            let released = catalog.release_lease(t.id, p.actor).await;
            return match released {
                Ok(()) | Err(CatalogError::LeaseLost) => Outcome::Interrupted("shutdown".into()),
                Err(e) => Outcome::Interrupted(format!("shutdown; lease not released ({e}), it will expire")),
            };
        }
        StepError::Crashed => return Outcome::Crashed,
        StepError::LeaseLost => {
            metrics::counter!("tenantd_leases_lost_total").increment(1);
            tracing::warn!("lease lost: another process holds this tenant now; stopping");
            return Outcome::Interrupted("lease lost".into());
        }
        StepError::Wait(reason) => {
            let retry_in = p.settings.workers.poll_interval;
            let result = catalog.record_wait(t.id, p.actor, reason, retry_in).await;
            if t.last_error.as_deref() != Some(reason.as_str()) {
                tracing::warn!(%reason, "tenant waits for an eligible server");
                metrics::counter!("tenantd_placement_waits_total").increment(1);
                if let Err(e) =
                    catalog.record_event(t.id, "waiting", json!({ "reason": reason }), p.actor).await
                {
                    tracing::error!(error = %e, "cannot record the waiting event");
                }
            }
            result.map(|()| Outcome::Waiting(reason.clone()))
        }
        StepError::Catalog(e) => {
            // The catalog itself failed: try to record it; if that fails too the lease expires
            // and another attempt follows.
            metrics::counter!("tenantd_provision_failures_total", "step" => "catalog").increment(1);
            tracing::error!(error = %e, "catalog failure while provisioning");
            let message = format!("catalog: {e}");
            fail(p, t, "catalog", &message, true).await
        }
        StepError::Retry(step, m) => fail(p, t, step.as_str(), &format!("step {step}: {m}"), true).await,
        StepError::Fatal(step, m) => fail(p, t, step.as_str(), &format!("step {step}: {m}"), false).await,
    };
    written.unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot record the outcome of an attempt; the lease will expire and it will be retried");
        Outcome::Interrupted(format!("outcome not recorded: {e}"))
    })
}

async fn fail(
    p: &Provisioner<'_>,
    t: &TenantRecord,
    step: &str,
    message: &str,
    retryable: bool,
) -> Result<Outcome, CatalogError> {
    let attempt = t.attempts + 1;
    let max = i32::try_from(p.settings.workers.max_attempts).unwrap_or(i32::MAX);
    let deleting = t.status == crate::catalog::tenants::TenantStatus::Deleting;
    // A deletion keeps trying (at the longest delay once it cannot succeed by itself): ERROR
    // would be wrong for it, since retrying an ERROR provisions the tenant again.
    let retry_in = if deleting {
        Some(backoff(&p.settings.workers.backoff, if retryable { attempt } else { i32::MAX }))
    } else {
        (retryable && attempt < max).then(|| backoff(&p.settings.workers.backoff, attempt))
    };
    metrics::counter!("tenantd_provision_failures_total", "step" => step.to_owned()).increment(1);
    match retry_in {
        Some(delay) => {
            let detail = json!({ "step": step, "error": message, "attempt": attempt, "retry_in_ms": delay.as_millis() as u64 });
            p.catalog.record_failure(t.id, p.actor, message, retry_in, ("attempt.failed", &detail)).await?;
            tracing::warn!(error = %message, attempt, retry_in = ?delay, "provisioning attempt failed; will retry");
            Ok(Outcome::Retrying(message.to_owned()))
        }
        None => {
            let why = if retryable {
                format!("gave up after {attempt} attempts")
            } else {
                "not retryable".to_owned()
            };
            let detail = json!({ "step": step, "error": message, "attempt": attempt, "reason": why });
            p.catalog.record_failure(t.id, p.actor, message, None, ("error", &detail)).await?;
            tracing::error!(error = %message, attempt, "provisioning failed: tenant is in ERROR ({why})");
            metrics::counter!("tenantd_tenants_error_total").increment(1);
            Ok(Outcome::Failed(message.to_owned()))
        }
    }
}

/// Starts `workers.concurrency` worker tasks on the daemon's tracker.
pub fn spawn(app: Arc<App>, wake: Arc<Notify>) {
    for n in 0..app.settings.workers.concurrency {
        let (app, wake) = (app.clone(), wake.clone());
        app.shutdown.clone().spawn(async move { worker(app, wake, n).await });
    }
}

async fn worker(app: Arc<App>, wake: Arc<Notify>, n: usize) {
    let cancel = app.shutdown.token().clone();
    let poll = app.settings.workers.poll_interval;
    let mut catalog_backoff = Duration::from_millis(200);
    while !cancel.is_cancelled() {
        // Register for wake-ups before looking, so a notification during the claim is not lost.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let owner = claim_owner(&app.instance);
        let claimed_at = Instant::now();
        let idle_for = match app.catalog.claim_tenant(&owner, app.settings.workers.lease, None).await {
            Ok(Claim::Claimed(tenant)) => {
                catalog_backoff = Duration::from_millis(200);
                tracing::debug!(
                    worker = n,
                    tenant = %tenant.slug,
                    since_created_ms = (chrono::Utc::now() - tenant.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0,
                    "claimed"
                );
                let p = Provisioner {
                    catalog: &app.catalog,
                    keyring: &app.keyring,
                    settings: &app.settings,
                    actor: &owner,
                    faults: app.faults.as_ref(),
                    admin_pools: &app.admin_pools,
                    migrations: &app.migrations,
                    restore_from: None,
                };
                let outcome = run_claimed(&p, &tenant, claimed_at, &cancel).await;
                tracing::debug!(worker = n, tenant = %tenant.slug, ?outcome, "attempt finished");
                continue;
            }
            Ok(Claim::Idle(next)) => next.map_or(poll, |d| d.min(poll)),
            Err(e) => {
                tracing::error!(worker = n, error = %e, "cannot claim work from the catalog");
                metrics::counter!("tenantd_catalog_errors_total").increment(1);
                catalog_backoff = (catalog_backoff * 2).min(Duration::from_secs(10));
                catalog_backoff
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = &mut notified => {},
            () = tokio::time::sleep(idle_for.max(Duration::from_millis(10))) => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_repeats_the_last_delay() {
        let delays: Vec<Duration> = [1, 5, 30].into_iter().map(Duration::from_secs).collect();
        let got: Vec<u64> = (1..=5).map(|a| backoff(&delays, a).as_secs()).collect();
        assert_eq!(got, vec![1, 5, 30, 30, 30]);
    }
}
