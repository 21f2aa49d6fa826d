//! Moves left behind: every `workers.poll_interval` a daemon resumes the moves whose process
//! died or stopped (MOVING tenants nobody holds, taken with their lease, so one daemon each),
//! and drops the source databases that moves kept once `moves.keep_source` has passed.

use std::sync::Arc;

use crate::app::App;
use crate::moves::{self, Mover};

/// Starts the task on the daemon's tracker.
pub fn spawn(app: Arc<App>) {
    let period = app.settings.workers.poll_interval;
    super::every(app, period, |app| async move {
        resume(&app).await;
        drop_kept(&app).await;
    });
}

/// Resumes abandoned moves, one after another.
async fn resume(app: &App) {
    let slugs = match app.catalog.abandoned_moves().await {
        Ok(slugs) => slugs,
        Err(error) => return super::catalog_failed("moves", "cannot look for abandoned moves", &error),
    };
    let mover = Mover::new(&app.core, &app.core.instance);
    for slug in slugs {
        let job = match mover.claim_abandoned(&slug).await {
            Ok(Some(job)) => job,
            Ok(None) => continue,
            Err(error) => {
                metrics::counter!("tenantd_moves_resume_failures_total").increment(1);
                tracing::warn!(tenant = %slug, %error, "cannot resume a move");
                continue;
            }
        };
        tracing::info!(tenant = %slug, operation = %job.op.id, step = %job.op.step, "resuming a move");
        metrics::counter!("tenantd_moves_resumed_total").increment(1);
        if let Err(error) = mover.run(job, app.shutdown.token()).await {
            tracing::warn!(tenant = %slug, %error, "resumed move stopped; it will be resumed again");
        }
    }
}

/// Drops kept source databases whose time is up.
async fn drop_kept(app: &App) {
    loop {
        let op = match app.catalog.claim_kept_source().await {
            Ok(Some(op)) => op,
            Ok(None) => return,
            Err(error) => {
                return super::catalog_failed("moves", "cannot look for kept source databases", &error);
            }
        };
        if let Err(error) = moves::drop_kept_source(&app.core, &op).await {
            metrics::counter!("tenantd_move_source_failures_total").increment(1);
            tracing::warn!(operation = %op.id, server = %op.server, %error, "cannot drop a kept source database; trying again in 10 minutes");
            if let Err(e) = app.catalog.kept_source_failed(op.id, &error.to_string()).await {
                super::catalog_failed("moves", "cannot record a failed drop", &e);
            }
        }
    }
}
