//! Upgrade runs in the daemon's background (`POST /v1/migrations`, `upgrade.auto`); see
//! [`crate::upgrade`] for what a run does.

use std::sync::Arc;

use crate::app::App;
use crate::catalog::CatalogError;
use crate::catalog::upgrades::RunStatus;
use crate::upgrade::{Options, Selection, Started, Upgrader};

/// Starts an upgrade run in the daemon's background (API and `upgrade.auto`); returns once
/// the run is recorded, with its id and plan. Shutdown interrupts it: in-flight tenants roll
/// back, and the run is marked `interrupted` (a new run continues where it stopped).
pub async fn spawn_in_daemon(
    app: Arc<App>,
    selection: Selection,
    options: Options,
) -> Result<Started, CatalogError> {
    let started = Upgrader::new(&app.core, &app.core.instance).start(&selection, &options).await?;
    let handed = started.clone();
    let daemon = app.clone();
    app.shutdown.spawn(async move {
        let run = handed.run;
        let upgrader = Upgrader::new(&daemon.core, &daemon.core.instance);
        tokio::select! {
            summary = upgrader.execute(handed, &options, &crate::upgrade::no_progress) => {
                if let Err(e) = summary {
                    tracing::error!(%run, error = %e, "upgrade run failed");
                }
            }
            () = daemon.shutdown.token().cancelled() => {
                tracing::warn!(%run, "upgrade run interrupted by shutdown");
                if let Err(e) = daemon.catalog.finish_run(run, RunStatus::Interrupted, Some("daemon shut down")).await {
                    tracing::error!(%run, error = %e, "cannot mark the run interrupted");
                }
            }
        }
    });
    Ok(started)
}

/// `upgrade.auto`: upgrades every READY tenant in the background. A failure to even start
/// is logged loudly; the daemon keeps serving (tenants stay at their old versions).
pub async fn auto(app: Arc<App>) {
    let selection = Selection { slugs: Vec::new(), all: true, server: None };
    let options = Options {
        concurrency: app.settings.upgrade.concurrency,
        canary: 0,
        max_failures: None,
        dry_run: false,
    };
    match spawn_in_daemon(app, selection, options).await {
        Ok(started) => {
            tracing::info!(run = %started.run, behind = started.plan.behind().count(), "automatic upgrade started")
        }
        Err(error) => tracing::error!(%error, "automatic upgrade could not start"),
    }
}
