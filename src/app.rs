//! [`App`]: the state of a running daemon, shared by every HTTP handler and background task.
//!
//! It is the process's [`Core`] plus what only a daemon has: the admin token, shutdown, the
//! catalog change channel and worker wake-up, the tenant resolver, the tenant pools and the
//! open connection handles. It derefs to [`Core`], so `app.catalog` is the core's catalog.
//! Assembling an `App` and starting its tasks is `startup`'s job; this module only holds it.

use std::sync::Arc;

use secrecy::SecretString;
use tokio::sync::{Notify, broadcast};

use crate::catalog::Change;
use crate::core::Core;
use crate::handles::Handles;
use crate::pools::Pools;
use crate::resolver::Resolver;
use crate::shutdown::Shutdown;

/// State shared by every handler and background task of one daemon.
pub struct App {
    /// Settings, catalog, keys, admin pools, migrations, identity.
    pub core: Core,
    /// Admin bearer token.
    pub admin_token: SecretString,
    /// Shutdown of this daemon.
    pub shutdown: Shutdown,
    /// Wakes the workers (catalog notifications).
    pub wake: Arc<Notify>,
    /// Catalog changes, for requests that wait on a tenant.
    pub changes: broadcast::Sender<Change>,
    /// Cached tenant and server lookups.
    pub resolver: Resolver,
    /// Tenant connection pools.
    pub pools: Pools,
    /// Open connection handles.
    pub handles: Arc<Handles>,
    /// Permits of requests being handled (`http.max_concurrent_requests`).
    pub requests: Arc<tokio::sync::Semaphore>,
    /// The last catalog check of `/readyz` (when, and the latency or the error), reused for a
    /// second: an unauthenticated endpoint must not cost a catalog query per request.
    pub readiness: std::sync::Mutex<Option<(std::time::Instant, Result<f64, String>)>>,
}

impl App {
    /// A daemon's state around `core`; nothing runs until `startup` starts the tasks.
    pub fn new(core: Core, admin_token: SecretString) -> App {
        let pools = Pools::new(core.settings.pools.clone());
        let requests = Arc::new(tokio::sync::Semaphore::new(core.settings.http.max_concurrent_requests));
        App {
            core,
            admin_token,
            shutdown: Shutdown::new(),
            wake: Arc::new(Notify::new()),
            changes: broadcast::channel(1024).0,
            resolver: Resolver::default(),
            pools,
            handles: Arc::new(Handles::default()),
            requests,
            readiness: std::sync::Mutex::new(None),
        }
    }
}

impl std::ops::Deref for App {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("instance", &self.core.instance).finish_non_exhaustive()
    }
}
