//! Shutdown: one [`CancellationToken`] that every task watches and one [`TaskTracker`] that
//! knows when they have all finished. Both are values handed to each task; nothing is global.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared shutdown state of a daemon.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, not yet triggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// The token tasks watch.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Spawns a tracked task.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Asks every task to stop and waits until all have.
    pub async fn shutdown(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// True once shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops tenantd");
                if let Err(e) = ctrl_c.await {
                    tracing::error!(error = %e, "cannot listen for Ctrl-C either");
                }
            }
        }
    }
}
