//! The periodic reconcile: every `reconcile.interval`, one of the daemons (whichever takes the
//! catalog's reconcile lease first once the interval has passed since the last run of any
//! process) compares the catalog with every server; `reconcile.repair` makes it repair too.
//! Every daemon looks once a minute (or every interval, if shorter) and, when it is not its
//! turn, shows the last stored report's counts as `tenantd_drift{kind}`.

use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::reconcile::{self, Options};

/// Starts the task unless `reconcile.interval` is zero.
pub fn spawn(app: Arc<App>) {
    let every = app.settings.reconcile.interval;
    if every.is_zero() {
        return;
    }
    let look = every.min(Duration::from_secs(60));
    let shutdown = app.shutdown.clone();
    shutdown.spawn(async move {
        let cancelled = app.shutdown.token().clone();
        loop {
            // The first look waits too: a daemon that starts does not add a full pass over
            // the fleet to its start.
            tokio::select! {
                () = cancelled.cancelled() => break,
                () = tokio::time::sleep(look) => {}
            }
            tokio::select! {
                () = cancelled.cancelled() => break,
                () = round(&app, every) => {}
            }
        }
    });
}

async fn round(app: &App, every: Duration) {
    let options = Options { repair: app.settings.reconcile.repair, drop_orphans: false };
    match reconcile::run_if_due(&app.core, &app.core.instance, every, options).await {
        Ok(Some(report)) => {
            tracing::info!(
                findings = report.findings.len(),
                errors = report.errors.len(),
                "reconcile: catalog compared with every server"
            );
        }
        Ok(None) => {
            if let Err(error) = reconcile::refresh_gauges(&app.core).await {
                super::catalog_failed("reconcile", "cannot read the last reconcile report", &error);
            }
        }
        Err(reconcile::ReconcileError::Catalog(error)) => {
            super::catalog_failed("reconcile", "reconcile could not run; trying again next round", &error);
        }
        Err(error) => tracing::warn!(%error, "reconcile could not run; trying again next round"),
    }
}
