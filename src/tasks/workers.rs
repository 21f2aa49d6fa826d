//! Provisioning workers: `workers.concurrency` tasks that claim the next tenant needing work
//! (provisioning or deletion) and run one attempt on it ([`run_claimed`]). Woken by catalog
//! notifications (one worker per tenant change; a worker that claims something wakes the next,
//! so a backlog reaches every idle worker), and polling every `workers.poll_interval` in case
//! one was lost; a catalog that cannot be reached makes them back off, and they resume by
//! themselves when it returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::app::App;
use crate::catalog::tenants::Claim;
use crate::leases::claim_owner;
use crate::provisioner::{Provisioner, run_claimed};

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
            Ok(Claim::Claimed { tenant, more }) => {
                catalog_backoff = Duration::from_millis(200);
                // There is other work: the next idle worker looks, to claim it or time it (a
                // notification wakes one worker, and may stand for many tenants, as after a bulk
                // INSERT; or a retry scheduled meanwhile needs a worker's timer).
                if more {
                    wake.notify_one();
                }
                tracing::debug!(
                    worker = n,
                    tenant = %tenant.slug,
                    since_created_ms = (chrono::Utc::now() - tenant.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0,
                    claim_ms = claimed_at.elapsed().as_secs_f64() * 1000.0,
                    "claimed"
                );
                let p = Provisioner::new(&app.core, &owner);
                let outcome = run_claimed(&p, &tenant, claimed_at, &cancel).await;
                tracing::debug!(worker = n, tenant = %tenant.slug, ?outcome, "attempt finished");
                continue;
            }
            Ok(Claim::Idle(next)) => next.map_or(poll, |d| d.min(poll)),
            Err(e) => {
                // An outage is logged once by the catalog; a worker only counts its tries.
                if e.is_outage() {
                    tracing::debug!(worker = n, error = %e, retry_in = ?catalog_backoff, "catalog unreachable; waiting");
                } else {
                    tracing::error!(worker = n, error = %e, "cannot claim work from the catalog");
                }
                metrics::counter!("tenantd_catalog_errors_total", "task" => "workers").increment(1);
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
