//! Keeping tenant roles in line with their limits: every minute (and at start) a daemon
//! applies the limits of READY and SUSPENDED tenants whose role does not match them yet —
//! tenants made before a setting changed, or before limits existed. Each tenant is claimed
//! with its lease, so several daemons share the work without doing any twice.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::lifecycle::Lifecycle;
use crate::limits::TenantLimits;

/// Tenants brought in line per round.
const BATCH: i64 = 50;

/// Starts the task on the daemon's tracker.
pub fn spawn(app: Arc<App>) {
    super::every(app, Duration::from_secs(60), |app| async move { round(&app).await });
}

/// One round: finds the tenants whose role does not match, applies theirs.
pub async fn round(app: &App) {
    let defaults = TenantLimits::defaults(&app.settings.limits).to_json();
    let due = match app.catalog.tenants_with_stale_limits(&defaults, BATCH).await {
        Ok(due) => due,
        Err(error) => {
            super::catalog_failed("limits", "cannot look for tenants whose limits are not applied", &error);
            return;
        }
    };
    let lifecycle = Lifecycle::new(&app.core, &app.core.instance);
    for tenant in due {
        match lifecycle.apply_limits(&tenant.slug).await {
            Ok(_) => metrics::counter!("tenantd_limits_applied_total").increment(1),
            Err(error) => {
                metrics::counter!("tenantd_limits_failures_total").increment(1);
                tracing::warn!(tenant = %tenant.slug, %error, "cannot apply the tenant's limits; trying again next round");
            }
        }
    }
}
