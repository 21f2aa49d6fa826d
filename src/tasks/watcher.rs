//! Watching the catalog: `LISTEN tenantd` on a dedicated connection.
//!
//! The catalog's triggers `NOTIFY tenantd` on every tenant insert, status or schedule change,
//! and every server change that matters to placement. The watcher turns them into
//! [`Change`]s on a broadcast channel (for `?wait=` requests) and wakes the workers: one for a
//! tenant's change (none when its new status is not one they claim, or when it is a step of a
//! tenant whose worker still holds its lease), all of them for a server's. It is only a
//! shortcut: workers also poll every `workers.poll_interval`, so a lost notification, or a
//! daemon that was down when it was sent, delays work by one interval at most. When the
//! connection drops, the watcher reconnects with growing delays and wakes the workers (it may
//! have missed something).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, broadcast};
use tokio_postgres::AsyncMessage;

use crate::app::App;
use crate::catalog::tenants::TenantStatus;
use crate::catalog::{CHANNEL, CatalogError, Change};

/// Starts the watcher on the daemon's tracker.
pub fn spawn(app: Arc<App>, wake: Arc<Notify>, changes: broadcast::Sender<Change>) {
    let shutdown = app.shutdown.clone();
    shutdown.spawn(async move {
        let mut delay = Duration::from_millis(250);
        // Failures in a row: only the first of an outage is a warning, and the reconnection
        // after it is logged.
        let mut failures = 0u32;
        while !app.shutdown.is_triggered() {
            match listen(&app, &wake, &changes, &mut failures).await {
                Ok(()) => break,
                Err(error) => {
                    metrics::counter!("tenantd_watcher_reconnects_total").increment(1);
                    if failures == 0 {
                        // It was listening: a new outage starts with short delays again.
                        delay = Duration::from_millis(250);
                        tracing::warn!(%error, "catalog LISTEN connection lost; polling covers the gap");
                    } else {
                        tracing::debug!(%error, retry_in = ?delay, "catalog LISTEN connection still down");
                    }
                    failures += 1;
                    // Notifications may have been missed: cached lookups may be stale.
                    app.resolver.invalidate_all();
                    wake.notify_waiters();
                    tokio::select! {
                        () = app.shutdown.token().cancelled() => break,
                        () = tokio::time::sleep(delay) => {},
                    }
                    // At most 10 s: once the catalog is back, notifications resume soon.
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    });
}

/// Why the LISTEN connection ended.
#[derive(Debug, thiserror::Error)]
enum ListenError {
    /// Connecting, LISTEN or reading failed.
    #[error("{}", crate::pg::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The server closed the connection.
    #[error("connection closed")]
    Closed,
}

/// Listens until shutdown (`Ok`) or until the connection fails (`Err`).
async fn listen(
    app: &App,
    wake: &Notify,
    changes: &broadcast::Sender<Change>,
    failures: &mut u32,
) -> Result<(), ListenError> {
    let (client, mut connection) = app.catalog.pg_config().connect(app.catalog.connector()).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    // The connection must be driven while LISTEN runs.
    loop {
        tokio::select! {
            done = &mut listen => { done?; break; }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ListenError::Closed),
            },
        }
    }
    if *failures > 0 {
        tracing::info!(failed_tries = *failures, "listening for catalog changes again");
        *failures = 0;
    } else {
        tracing::debug!("listening for catalog changes");
    }
    // Anything that happened while we were not listening is picked up now.
    wake.notify_waiters();
    loop {
        tokio::select! {
            () = app.shutdown.token().cancelled() => return Ok(()),
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => on_notification(app, wake, changes, n.payload()).await,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(ListenError::Closed),
            },
        }
    }
}

/// Closes a tenant's pools and handles when its catalog row says it is not READY (suspended,
/// deleting, moving, gone).
async fn close_if_not_lendable(app: &App, slug: &str) {
    let lendable = match app.catalog.tenant(slug).await {
        Ok(tenant) => {
            // Handles opened with a token the tenant no longer has go either way.
            app.handles.close_stale(slug, tenant.token_hash.as_deref());
            tenant.status == TenantStatus::Ready
        }
        Err(CatalogError::NotFound(_)) => false,
        Err(error) => {
            // Cannot tell: closing is the safe side (the next request reconnects if READY).
            tracing::warn!(tenant = %slug, %error, "cannot re-read a tenant after a notification; closing its connections");
            false
        }
    };
    if lendable {
        tracing::debug!(tenant = %slug, "notification did not match the catalog; nothing closed");
        return;
    }
    app.pools.close(slug);
    app.handles.close_tenant(slug);
}

async fn on_notification(app: &App, wake: &Notify, changes: &broadcast::Sender<Change>, payload: &str) {
    let change: Change = match serde_json::from_str(payload) {
        Ok(change) => change,
        Err(e) => {
            tracing::warn!(%payload, error = %e, "unexpected notification payload");
            return;
        }
    };
    if change.table == "servers" {
        app.resolver.invalidate_server(&change.key);
        // A server was added or changed: tenants waiting for one may be placeable now.
        if let Err(e) = app.catalog.wake_unplaced().await {
            tracing::warn!(error = %e, "cannot wake tenants waiting for a server");
        }
    } else {
        // Anyone who can connect to the catalog database can send a notification, so it is a
        // hint: the cached row is dropped (a re-read is harmless), and what is lent is closed
        // only when the catalog itself says the tenant may no longer be lent.
        app.resolver.invalidate(&change.key);
        // A tenant still being made has nothing lent: its many step notifications cost no
        // catalog read (a forged one with such a status closes nothing either).
        let provisioning =
            change.status.as_deref().and_then(TenantStatus::parse).is_some_and(TenantStatus::is_in_progress);
        if !provisioning {
            close_if_not_lendable(app, &change.key).await;
        }
    }
    // A tenant's change is at most one piece of work for the workers, and none at all when
    // its new status is not one they claim (READY, ...) or while the worker holding it goes
    // on with it: one idle worker is woken for it (a worker that claims something wakes the
    // next, so a backlog still reaches them all), not every one, each of which would run a
    // claim at the same moment. A server's change can concern any number of tenants.
    let work = match change.table.as_str() {
        "tenants" => Some(
            !change.held
                && change
                    .status
                    .as_deref()
                    .and_then(TenantStatus::parse)
                    .is_none_or(TenantStatus::is_workable),
        ),
        _ => None,
    };
    // Nobody listening on the channel is normal (no ?wait= request in flight).
    if changes.send(change).is_err() {
        tracing::trace!("no subscribers for catalog changes");
    }
    match work {
        Some(true) => wake.notify_one(),
        Some(false) => {}
        None => wake.notify_waiters(),
    }
}
