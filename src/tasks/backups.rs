//! The daily backup scheduler of a daemon (see [`crate::backups`] for what a run does).

use std::sync::Arc;

use chrono::Utc;

use crate::app::App;
use crate::backups::{Backups, next_look};

/// Starts the daily scheduler when `backups.dir` is set.
pub fn spawn(app: Arc<App>) {
    let (Some(_), Ok(time)) = (&app.settings.backups.dir, app.settings.backups.time_of_day()) else { return };
    let shutdown = app.shutdown.clone();
    shutdown.spawn(async move {
        tracing::info!(daily_at = %app.settings.backups.daily_at, "daily backups scheduled (UTC)");
        let backups = Backups::new(&app.core, &app.core.instance);
        loop {
            match backups.daily(time, app.shutdown.token()).await {
                Ok(()) => {}
                Err(e) if e.is_outage() => {
                    super::catalog_failed("backups", "daily backups could not run; trying again shortly", &e)
                }
                Err(e) => tracing::error!(error = %e, "daily backups could not run; trying again shortly"),
            }
            let wait = next_look(Utc::now(), time, app.settings.workers.lease);
            tokio::select! {
                () = app.shutdown.token().cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
    });
}
