//! The daemon's background tasks. Each takes the daemon's [`App`](crate::app::App), runs on
//! its shutdown tracker, and calls domain operations; none holds state of its own.
//!
//! - [`workers`]: claim tenants that need provisioning or deletion, one attempt at a time.
//! - [`watcher`]: `LISTEN tenantd`; wakes workers, drops cached lookups, closes pools.
//! - [`health`]: checks every server on an interval.
//! - [`backups`]: the daily backup scheduler.
//! - [`limits`]: brings tenant roles in line with their limits.
//! - [`quotas`]: measures tenant databases against their storage quotas.
//! - [`upgrade`]: upgrade runs started by the API or `upgrade.auto`.
//! - [`webhooks`]: delivers the webhook outbox.
//! - [`moves`]: resumes abandoned moves, drops kept source databases.
//! - [`reconcile`]: compares the catalog with every server every `reconcile.interval`.
//! - [`spares`]: keeps warm spares per server (`spares.per_server`).

pub mod backups;
pub mod health;
pub mod limits;
pub mod moves;
pub mod quotas;
pub mod reconcile;
pub mod spares;
pub mod upgrade;
pub mod watcher;
pub mod webhooks;
pub mod workers;

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;

/// A background task's catalog failure: an outage is logged once by the catalog itself, so
/// here only at debug level (a task retrying every round must not write a line each time);
/// any other failure is logged as a warning. Counted either way
/// (`tenantd_catalog_errors_total{task}`).
pub(crate) fn catalog_failed(task: &'static str, what: &str, error: &crate::catalog::CatalogError) {
    metrics::counter!("tenantd_catalog_errors_total", "task" => task).increment(1);
    if error.is_outage() {
        tracing::debug!(task, %error, "{what}: catalog unreachable; trying again next round");
    } else {
        tracing::warn!(task, %error, "{what}");
    }
}

/// Runs `round` now and then every `period` on the daemon's tracker, until shutdown. A round
/// that overruns delays the next one rather than bunching them up.
pub(crate) fn every<F, Fut>(app: Arc<App>, period: Duration, round: F)
where
    F: Fn(Arc<App>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let shutdown = app.shutdown.clone();
    shutdown.spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let cancelled = app.shutdown.token().clone();
        loop {
            tokio::select! {
                () = cancelled.cancelled() => break,
                _ = ticks.tick() => {
                    // A long round (many tenants) does not hold up shutdown.
                    tokio::select! {
                        () = cancelled.cancelled() => break,
                        () = round(app.clone()) => {}
                    }
                }
            }
        }
    });
}
