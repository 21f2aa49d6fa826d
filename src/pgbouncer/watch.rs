//! `--watch`: rewrite the files on every catalog change and make PgBouncer reload them.
//!
//! A dedicated connection `LISTEN`s on the catalog (every tenant status change and every
//! server change that matters notifies), and the catalog is read again every
//! `workers.poll_interval` in case a notification was lost. Files are replaced only when
//! their text changes, and PgBouncer gets SIGHUP (its reload) only then.

use std::collections::HashSet;
use std::convert::Infallible;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{Options, PgBouncerError, VerifierCache, files, routes};
use crate::catalog::CHANNEL;
use crate::core::Core;

/// Sends SIGHUP (PgBouncer's reload) to the process named in `pid_file`.
pub(crate) fn reload(pid_file: &Path) -> Result<(), PgBouncerError> {
    let shown = pid_file.display();
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| PgBouncerError::Reload(format!("cannot read pid file {shown}: {e}")))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| PgBouncerError::Reload(format!("pid file {shown} holds no process id")))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGHUP)
        .map_err(|e| PgBouncerError::Reload(format!("SIGHUP to process {pid} (from {shown}): {e}")))
}

/// Keeps the files current until the future is dropped (Ctrl-C). Returns only when the
/// options are wrong (an unknown `--server`); other failures are logged and retried.
pub async fn watch(core: &Core, options: &Options) -> Result<Infallible, PgBouncerError> {
    let dirty = Notify::new();
    let mut state = State { cache: VerifierCache::default(), aligned: HashSet::new() };
    // The first write reports bad options at once.
    if let Err(e) = state.sync(core, options).await {
        if matches!(e, PgBouncerError::Usage(_)) {
            return Err(e);
        }
        tracing::warn!(error = %e, "cannot write the PgBouncer configuration; retrying");
    }
    let writer = async {
        loop {
            tokio::select! {
                () = dirty.notified() => {}
                () = tokio::time::sleep(core.settings.workers.poll_interval) => {}
            }
            if let Err(error) = state.sync(core, options).await {
                tracing::warn!(%error, "cannot write the PgBouncer configuration; retrying");
            }
        }
    };
    tokio::select! {
        never = listen_forever(core, &dirty) => match never {},
        never = writer => match never {},
    }
}

struct State {
    cache: VerifierCache,
    /// Tenants whose password is known to be tenantd's verifier.
    aligned: HashSet<Uuid>,
}

impl State {
    async fn sync(&mut self, core: &Core, options: &Options) -> Result<(), PgBouncerError> {
        let routes = routes(core, options.server.as_deref(), &mut self.cache).await?;
        for skipped in &routes.skipped {
            tracing::warn!(tenant = %skipped, "tenant left out of the PgBouncer configuration");
        }
        let written = files::write(options, &routes.routes)?;
        if written.changed {
            tracing::info!(tenants = written.tenants, path = %written.ini.display(), "PgBouncer configuration written");
            if let Some(pid) = &options.pid_file {
                reload(pid)?;
            }
        }
        let pending: Vec<(Uuid, String)> =
            routes.slugs.into_iter().filter(|(id, _)| !self.aligned.contains(id)).collect();
        self.aligned.extend(super::align(core, &pending).await);
        Ok(())
    }
}

/// LISTENs on the catalog and marks the files dirty on every notification; reconnects with
/// growing delays (and marks them dirty: something may have been missed).
async fn listen_forever(core: &Core, dirty: &Notify) -> Infallible {
    let mut delay = Duration::from_millis(250);
    loop {
        let error = match listen(core, dirty).await {
            Err(e) => crate::pg::describe(&e),
            Ok(()) => "connection closed".to_owned(),
        };
        tracing::warn!(%error, retry_in = ?delay, "catalog LISTEN connection lost; polling covers the gap");
        dirty.notify_one();
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

async fn listen(core: &Core, dirty: &Notify) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = core.catalog.pg_config().connect(core.catalog.connector()).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANNEL}");
    let listening = client.batch_execute(&statement);
    tokio::pin!(listening);
    loop {
        tokio::select! {
            done = &mut listening => { done?; break; }
            message = messages.next() => match message {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
    // Whatever changed before LISTEN took effect is read now.
    dirty.notify_one();
    while let Some(message) = messages.next().await {
        if let tokio_postgres::AsyncMessage::Notification(_) = message? {
            // A hint only (anyone may NOTIFY): the catalog is read again, nothing more.
            dirty.notify_one();
        }
    }
    Ok(())
}
