//! Warm spares in the background: every second (or `workers.poll_interval`, if shorter) a
//! daemon refills each server it gets the refill lease of (one process per server at a
//! time), discards spares that must not be handed out, and sets `tenantd_spares{server}`.
//! See [`crate::spares`] for what a refill does and how it yields to provisioning.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::spares::{self, SpareError};

/// Starts the task on the daemon's tracker.
pub fn spawn(app: Arc<App>) {
    let period = app.settings.workers.poll_interval.min(Duration::from_secs(1));
    let owner: Arc<str> = crate::leases::claim_owner(&app.core.instance).into();
    super::every(app, period, move |app| {
        let owner = owner.clone();
        async move {
            match spares::refill_all(&app.core, &owner).await {
                Ok(()) => {}
                Err(SpareError::Catalog(error)) => super::catalog_failed("spares", "spare refill", &error),
                // Logged and counted per server by the refill itself.
                Err(_) => {}
            }
        }
    });
}
