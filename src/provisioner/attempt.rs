//! One attempt on a claimed tenant: run the steps under a kept lease, then record the outcome.
//!
//! Nothing is ever swallowed: every failure lands in `last_error`, an event, the log and a
//! metric, and is retried with growing delays until `max_attempts`, then `ERROR`.
//! [`run_claimed`] is shared by the daemon's workers and by the CLI's driver, so a CLI process
//! provisions exactly as a daemon does (and never at the same time as one: the lease decides).

use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Provisioner, StepError};
use crate::catalog::CatalogError;
use crate::catalog::events::EventKind;
use crate::catalog::tenants::{TenantRecord, TenantStatus};
use crate::leases::keep_lease;

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

/// The work a claimed tenant needs: provisioning, or deletion when DELETING.
async fn work(p: &Provisioner<'_>, tenant: &TenantRecord) -> Result<i32, StepError> {
    if tenant.status == TenantStatus::Deleting {
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
    let lease = p.core.settings.workers.lease;
    async {
        let result = tokio::select! {
            result = work(p, tenant) => result,
            lost = keep_lease(&p.core.catalog, tenant.id, p.actor, lease, claimed_at) => Err(lost.into()),
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
    let catalog = &p.core.catalog;
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
            let retry_in = p.core.settings.workers.poll_interval;
            let result = catalog.record_wait(t.id, p.actor, reason, retry_in).await;
            if t.last_error.as_deref() != Some(reason.as_str()) {
                tracing::warn!(%reason, "tenant waits for an eligible server");
                metrics::counter!("tenantd_placement_waits_total").increment(1);
                if let Err(e) =
                    catalog.record_event(t.id, EventKind::Waiting, json!({ "reason": reason }), p.actor).await
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
            fail(p, t, "catalog", &message, Retry::Limited).await
        }
        StepError::ServerDown(step, m) => {
            // The claimed row names the server unless it was placed in this very attempt.
            let message = match t.server.as_deref() {
                Some(server) => format!("step {step}: server {server} unavailable: {m}"),
                None => format!("step {step}: server unavailable: {m}"),
            };
            fail(p, t, step.as_str(), &message, Retry::UntilServerReturns).await
        }
        StepError::Retry(step, m) => {
            fail(p, t, step.as_str(), &format!("step {step}: {m}"), Retry::Limited).await
        }
        StepError::Fatal(step, m) => {
            fail(p, t, step.as_str(), &format!("step {step}: {m}"), Retry::Never).await
        }
    };
    written.unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot record the outcome of an attempt; the lease will expire and it will be retried");
        Outcome::Interrupted(format!("outcome not recorded: {e}"))
    })
}

/// Whether a failed attempt is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Up to `workers.max_attempts`, then `ERROR`.
    Limited,
    /// For as long as the tenant's server is unavailable: nothing about the tenant is wrong,
    /// so an outage longer than the backoff schedule must not leave it in `ERROR`. The health
    /// check makes it due again as soon as the server answers.
    UntilServerReturns,
    /// Never: `ERROR` now.
    Never,
}

async fn fail(
    p: &Provisioner<'_>,
    t: &TenantRecord,
    step: &str,
    message: &str,
    retry: Retry,
) -> Result<Outcome, CatalogError> {
    let attempt = t.attempts + 1;
    let max = i32::try_from(p.core.settings.workers.max_attempts).unwrap_or(i32::MAX);
    let delays = &p.core.settings.workers.backoff;
    let deleting = t.status == TenantStatus::Deleting;
    // A deletion keeps trying (at the longest delay once it cannot succeed by itself): ERROR
    // would be wrong for it, since retrying an ERROR provisions the tenant again.
    let retry_in = match retry {
        Retry::Never if deleting => Some(backoff(delays, i32::MAX)),
        Retry::Never => None,
        Retry::Limited if !deleting && attempt >= max => None,
        Retry::Limited | Retry::UntilServerReturns => Some(backoff(delays, attempt)),
    };
    metrics::counter!("tenantd_provision_failures_total", "step" => step.to_owned()).increment(1);
    match retry_in {
        Some(delay) => {
            let detail = json!({ "step": step, "error": message, "attempt": attempt, "retry_in_ms": delay.as_millis() as u64 });
            p.core
                .catalog
                .record_failure(t.id, p.actor, message, retry_in, (EventKind::AttemptFailed, &detail))
                .await?;
            if retry == Retry::UntilServerReturns && t.last_error.as_deref() == Some(message) {
                // The same outage as the last attempt's: recorded, counted, logged once.
                tracing::debug!(error = %message, attempt, retry_in = ?delay, "server still unavailable; will retry");
            } else {
                tracing::warn!(error = %message, attempt, retry_in = ?delay, "provisioning attempt failed; will retry");
            }
            Ok(Outcome::Retrying(message.to_owned()))
        }
        None => {
            let why = if retry == Retry::Never {
                "not retryable".to_owned()
            } else {
                format!("gave up after {attempt} attempts")
            };
            let detail = json!({ "step": step, "error": message, "attempt": attempt, "reason": why });
            p.core.catalog.record_failure(t.id, p.actor, message, None, (EventKind::Error, &detail)).await?;
            tracing::error!(error = %message, attempt, "provisioning failed: tenant is in ERROR ({why})");
            metrics::counter!("tenantd_tenants_error_total").increment(1);
            Ok(Outcome::Failed(message.to_owned()))
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
