//! The background health check of database servers.
//!
//! Every `workers.health_interval`, each server is checked (connect as admin, `SELECT 1`) and
//! the result written to the catalog: `health`, latency, time, last error. Placement uses only
//! healthy servers, so a server that goes down stops receiving tenants within one interval
//! and gets them again once it answers; tenants whose provisioning waits for it are retried at
//! once then. A change of health is logged, not every failing round. Several daemons may check
//! the same servers; the last writer wins, which is harmless.

use std::sync::Arc;

use crate::app::App;

/// Runs one round of checks now, logging (not returning) a catalog failure; refreshes the
/// tenant counts that `/metrics` shows.
pub async fn check_now(app: &App) {
    match app.catalog.tenant_counts().await {
        Ok(counts) => {
            for status in crate::catalog::tenants::TenantStatus::ALL {
                let n = counts.iter().find(|(s, _)| s == status.as_str()).map_or(0, |(_, n)| *n);
                metrics::gauge!("tenantd_tenants", "status" => status.as_str()).set(n as f64);
            }
        }
        Err(error) => super::catalog_failed("health", "cannot count tenants for the metrics", &error),
    }
    if let Err(error) = crate::servers::check_all(&app.catalog, &app.keyring).await {
        metrics::counter!("tenantd_health_check_failures_total").increment(1);
        super::catalog_failed("health", "server health check could not record its results", &error);
    }
}

/// Starts the periodic check on the daemon's task tracker.
pub fn spawn(app: Arc<App>) {
    let period = app.settings.workers.health_interval;
    super::every(app, period, |app| async move { check_now(&app).await });
}
