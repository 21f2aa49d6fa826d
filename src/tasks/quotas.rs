//! Measuring tenant databases against their quotas every `limits.quota_check_interval`
//! (see [`crate::quotas`]); tenants whose state flipped have their pools in this daemon
//! closed at once (other daemons' connections were ended on the server).

use std::sync::Arc;

use crate::app::App;

/// Starts the task when any quota can apply (a default quota or per-tenant overrides are
/// both possible, so it always runs; a round without quotas only measures sizes).
pub fn spawn(app: Arc<App>) {
    let period = app.settings.limits.quota_check_interval;
    super::every(app, period, |app| async move { round(&app).await });
}

async fn round(app: &App) {
    match crate::quotas::round(&app.core).await {
        Ok(report) => {
            for slug in report.exceeded.iter().chain(&report.back_under) {
                app.resolver.invalidate(slug);
                app.pools.close(slug);
            }
            for failure in &report.failures {
                metrics::counter!("tenantd_quota_check_failures_total").increment(1);
                tracing::warn!(%failure, "quota check incomplete");
            }
        }
        Err(error) => {
            metrics::counter!("tenantd_quota_check_failures_total").increment(1);
            super::catalog_failed("quotas", "cannot measure tenant databases", &error);
        }
    }
}
