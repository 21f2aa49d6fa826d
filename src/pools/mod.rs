//! Tenant connection pools: one deadpool pool per tenant database, connecting as the tenant's
//! own role, bounded per tenant and per server.
//!
//! - **Per tenant**: each pool holds at most `pools.per_tenant` connections.
//! - **Per server**: every connection, whichever tenant pool it belongs to, holds a permit of
//!   its server's semaphore (`pools.per_server` permits). Creating a connection when the budget
//!   is spent first closes idle connections of *other* tenants on that server, then waits up
//!   to `pools.acquire_timeout`; after that the caller gets [`LendError::Saturated`] (503 with
//!   `Retry-After`).
//! - **Idle**: a pool unused for `pools.idle_timeout` is closed by a background task.
//! - **Clean lending**: a [`Lent`] connection goes back through `ROLLBACK` (when a
//!   transaction block is open) and everything `DISCARD ALL` does but deallocating the
//!   driver's own statements (session settings, temporary objects, the tenant's prepared
//!   statements, advisory locks, LISTENs, role) before anyone else may borrow it; a
//!   connection that cannot be reset, is still in a transaction block after it, or whose
//!   prepared statements cannot be trusted (one went missing, too many, a tenant statement
//!   named like the driver's) is closed instead. For a single statement of the SQL endpoint
//!   the reset is queued right behind it ([`Lent::reset_behind`]), so the server runs it
//!   without waiting for the daemon in between.
//! - **Limits the tenant cannot lift** ([`Lent::run_guarded`]): a deadline enforced with a
//!   cancel request, a cap on server message size read from the wire before the message is
//!   (see `pgwire`), and a cap on type lookups while preparing.
//!
//! Pools are keyed by slug and carry a fingerprint of the tenant's placement and credentials,
//! so a moved, recreated or re-keyed tenant gets a fresh pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicBool;

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};
use deadpool_postgres::ClientWrapper;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::catalog::servers::ServerRecord;
use crate::catalog::tenants::TenantRecord;
use crate::config::PoolSettings;
use crate::crypto::Keyring;
use crate::pgtls::Endpoint;
use crate::pgwire::{GuardedStream, WireGuard};
use crate::shutdown::Shutdown;
use crate::target::TenantTarget;

mod lent;
pub use lent::Lent;

/// Why no connection could be lent.
#[derive(Debug, thiserror::Error)]
pub enum LendError {
    /// The server's connection budget stayed spent for the whole acquire timeout.
    #[error("server {server:?} has no free connections (budget {budget}); retry shortly")]
    Saturated {
        /// Server.
        server: String,
        /// Its budget.
        budget: usize,
    },
    /// The tenant's own pool stayed full for the whole acquire timeout.
    #[error("all {0} connections of this tenant are in use; retry shortly")]
    TenantBusy(usize),
    /// The tenant's server cannot be reached, or is shutting down or starting up.
    #[error("server {server:?} is unavailable: {reason}")]
    ServerDown {
        /// Server.
        server: String,
        /// Why.
        reason: String,
    },
    /// The tenant database refused the connection (login, database missing).
    #[error("cannot connect to the tenant database: {0}")]
    Connect(String),
    /// The tenant's pool was closed meanwhile (suspended, moved, deleted).
    #[error("the tenant's pool was closed; retry")]
    Closed,
    /// The tenant's catalog row cannot lead to its database (names, sealed password).
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
}

/// Error of the pool manager (internal to deadpool).
#[derive(Debug)]
pub enum ManagerError {
    /// Server budget spent.
    Saturated,
    /// Connecting failed.
    Connect(tokio_postgres::Error),
    /// The server could not be reached.
    Unreachable(String),
}

/// A pooled connection, the server permit it holds, and the guards on its wire.
pub struct PooledConn {
    client: ClientWrapper,
    guard: Arc<WireGuard>,
    /// Where cancel requests go.
    address: Arc<Endpoint>,
    /// A statement may be running (a request is using the connection).
    busy: AtomicBool,
    /// Close instead of reset when the lending ends (see [`Lent::run_guarded`]).
    retire: AtomicBool,
    /// A cancel request sent for an abandoned request, still on its way: what comes next on
    /// this connection waits for it, so that it cannot land on a later statement.
    cancelling: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Its backend on the server, for ending it when a cancel request is not enough.
    backend: Backend,
    /// The statements kept prepared for the SQL endpoint (its single statements).
    statements: crate::sqlhttp::StatementCache,
    _permit: OwnedSemaphorePermit,
}

/// A tenant connection's backend: which server, which role, which process.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Server name.
    pub server: String,
    /// The tenant role it is logged in as.
    pub role: String,
    /// The backend's process id.
    pub pid: i32,
}

/// Ends a backend that ignored its cancel request (a tenant function that catches
/// `query_canceled` in a loop): the daemon gives the pools one, since only it has the admin
/// connections that may do it.
pub type Terminator = Arc<dyn Fn(Backend) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Creates tenant connections under the server budget.
pub struct TenantManager {
    config: tokio_postgres::Config,
    role: String,
    address: Arc<Endpoint>,
    max_message: usize,
    budget: Arc<Semaphore>,
    server: String,
    slug: String,
    acquire_timeout: Duration,
    pools: Weak<Inner>,
}

impl managed::Manager for TenantManager {
    type Type = PooledConn;
    type Error = ManagerError;

    async fn create(&self) -> Result<PooledConn, ManagerError> {
        let permit = match self.budget.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Budget spent: make room from other tenants' idle connections first.
                if let Some(pools) = self.pools.upgrade() {
                    pools.evict_idle(&self.server, &self.slug);
                }
                match tokio::time::timeout(self.acquire_timeout, self.budget.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) | Err(_) => return Err(ManagerError::Saturated),
                }
            }
        };
        let guard = WireGuard::new(self.max_message);
        let client = self.connect(&guard).await?;
        let pid: i32 = client
            .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
            .await
            .map_err(ManagerError::Connect)?
            .get(0);
        let backend = Backend { server: self.server.clone(), role: self.role.clone(), pid };
        metrics::counter!("tenantd_pool_connections_opened_total", "server" => self.server.clone())
            .increment(1);
        Ok(PooledConn {
            client,
            guard,
            address: self.address.clone(),
            busy: AtomicBool::new(false),
            retire: AtomicBool::new(false),
            cancelling: Mutex::new(None),
            backend,
            statements: crate::sqlhttp::StatementCache::default(),
            _permit: permit,
        })
    }

    async fn recycle(&self, conn: &mut PooledConn, _: &Metrics) -> RecycleResult<ManagerError> {
        if conn.client.is_closed() || conn.guard.tripped().is_some() {
            Err(RecycleError::message("connection closed"))
        } else {
            Ok(())
        }
    }
}

impl TenantManager {
    /// The daemon's terminator, if it has one (a daemon always does).
    pub(super) fn terminator(&self) -> Option<Terminator> {
        self.pools.upgrade().and_then(|inner| inner.terminator.get().cloned())
    }

    /// Connects over a [`GuardedStream`] (inside TLS when there is TLS): server messages
    /// larger than the result limit end the connection before they are read into memory.
    async fn connect(&self, guard: &Arc<WireGuard>) -> Result<ClientWrapper, ManagerError> {
        let timeout = self.config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(10));
        let (host, port) = (&self.address.host, self.address.port);
        let unreachable =
            |e: &dyn std::fmt::Display| ManagerError::Unreachable(format!("{host}:{port}: {e}"));
        let login_timed_out = |_| ManagerError::Unreachable(format!("{host}:{port}: login timed out"));
        let slug = self.slug.clone();
        let task = if self.address.tls_required() {
            // tokio-postgres negotiates TLS (with SCRAM channel binding); the guard is inside.
            let tls = self.address.guarded_tls(guard.clone()).map_err(|e| unreachable(&e))?;
            let tcp = tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port)))
                .await
                .map_err(|_| unreachable(&"connect timed out"))?
                .map_err(|e| unreachable(&e))?;
            tcp.set_nodelay(true).map_err(|e| unreachable(&e))?;
            let mut config = self.config.clone();
            config.ssl_mode(tokio_postgres::config::SslMode::Require);
            let (client, connection) = tokio::time::timeout(timeout, config.connect_raw(tcp, tls))
                .await
                .map_err(login_timed_out)?
                .map_err(ManagerError::Connect)?;
            (client, tokio::spawn(drive(connection, slug)))
        } else {
            // `prefer` may end in plaintext: negotiated here, so the guard is on either stream.
            let stream = tokio::time::timeout(timeout, self.address.open())
                .await
                .map_err(|_| unreachable(&"connect timed out"))?
                .map_err(|e| unreachable(&e))?;
            let stream = GuardedStream::new(stream, guard.clone());
            let (client, connection) =
                tokio::time::timeout(timeout, self.config.connect_raw(stream, tokio_postgres::NoTls))
                    .await
                    .map_err(login_timed_out)?
                    .map_err(ManagerError::Connect)?;
            (client, tokio::spawn(drive(connection, slug)))
        };
        Ok(ClientWrapper::new(task.0, task.1))
    }
}

/// Drives a tenant connection until it ends.
async fn drive<S, T>(connection: tokio_postgres::Connection<S, T>, slug: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(error) = connection.await {
        tracing::debug!(tenant = %slug, error = %crate::pg::describe(&error), "tenant connection ended");
    }
}

type Pool = managed::Pool<TenantManager>;

struct TenantPool {
    pool: Pool,
    fingerprint: String,
    server: String,
    last_used: Mutex<Instant>,
}

struct Inner {
    settings: PoolSettings,
    terminator: std::sync::OnceLock<Terminator>,
    budgets: Mutex<HashMap<String, Arc<Semaphore>>>,
    tenants: Mutex<HashMap<String, Arc<TenantPool>>>,
}

impl Inner {
    /// Closes idle connections of every tenant on `server` except `except`.
    fn evict_idle(&self, server: &str, except: &str) {
        let pools: Vec<Arc<TenantPool>> = self
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(slug, p)| p.server == server && slug.as_str() != except)
            .map(|(_, p)| p.clone())
            .collect();
        let mut closed = 0;
        for p in pools {
            closed += p.pool.retain(|_, _| false).removed.len();
        }
        if closed > 0 {
            metrics::counter!("tenantd_pool_evictions_total", "server" => server.to_owned())
                .increment(closed as u64);
            tracing::debug!(server, closed, "closed idle connections of other tenants to make room");
        }
    }
}

/// Every tenant pool of one daemon.
#[derive(Clone)]
pub struct Pools {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools").finish_non_exhaustive()
    }
}

/// What a tenant pool looks like from outside (for tests, metrics and the console).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PoolStatus {
    /// Connections open.
    pub size: usize,
    /// Of which idle.
    pub available: usize,
}

impl Pools {
    /// Empty registry.
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                terminator: std::sync::OnceLock::new(),
                budgets: Mutex::default(),
                tenants: Mutex::default(),
            }),
        }
    }

    /// Sets how stuck backends are ended (once, when the daemon starts).
    pub fn set_terminator(&self, terminator: Terminator) {
        if self.inner.terminator.set(terminator).is_err() {
            tracing::warn!("the pools' terminator was set twice; the first one stays");
        }
    }

    fn budget(&self, server: &str) -> Arc<Semaphore> {
        let mut budgets = self.inner.budgets.lock().unwrap_or_else(PoisonError::into_inner);
        budgets
            .entry(server.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.inner.settings.per_server)))
            .clone()
    }

    /// Connections open on a server across all its tenant pools.
    pub fn server_connections(&self, server: &str) -> usize {
        self.inner.settings.per_server - self.budget(server).available_permits()
    }

    /// Status of a tenant's pool, if it has one.
    pub fn tenant_status(&self, slug: &str) -> Option<PoolStatus> {
        let tenants = self.inner.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants.get(slug).map(|p| {
            let s = p.pool.status();
            PoolStatus { size: s.size, available: s.available }
        })
    }

    fn pool_for(
        &self,
        tenant: &TenantRecord,
        server: &ServerRecord,
        keyring: &Keyring,
    ) -> Result<Arc<TenantPool>, LendError> {
        let fingerprint = format!(
            "{}|{}:{}|{:?}|{:?}|{:?}|{:?}",
            tenant.id,
            server.host,
            server.port,
            tenant.database_name,
            tenant.role_name,
            tenant.role_password_sealed,
            server.tls
        );
        let mut tenants = self.inner.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = tenants.get(&tenant.slug) {
            if existing.fingerprint == fingerprint {
                return Ok(existing.clone());
            }
            // Outdated (moved, re-keyed): closed and forgotten, whatever happens next.
            existing.pool.close();
            tenants.remove(&tenant.slug);
        }
        let target = TenantTarget::new(tenant, server, keyring)?;
        let settings = &self.inner.settings;
        let mut config = target.config(None, "tenantd-lend");
        // TLS is negotiated before the guard (see `TenantManager::connect`).
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        crate::pg::add_options(
            &mut config,
            &format!("-c statement_timeout={}", settings.statement_timeout.as_millis()),
        );
        let manager = TenantManager {
            role: target.role.to_string(),
            config,
            address: Arc::new(Endpoint {
                host: server.host.clone(),
                port: server.port,
                tls: server.tls.clone(),
            }),
            // A message may hold one row; no row may be larger than a whole result.
            max_message: settings.max_result_bytes + 64 * 1024,
            budget: self.budget(&server.name),
            server: server.name.clone(),
            slug: tenant.slug.clone(),
            acquire_timeout: settings.acquire_timeout,
            pools: Arc::downgrade(&self.inner),
        };
        let pool = Pool::builder(manager)
            .max_size(settings.per_tenant)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(settings.acquire_timeout))
            .create_timeout(Some(settings.acquire_timeout + Duration::from_secs(10)))
            .build()
            .map_err(|e| LendError::Connect(e.to_string()))?;
        let entry = Arc::new(TenantPool {
            pool,
            fingerprint,
            server: server.name.clone(),
            last_used: Mutex::new(Instant::now()),
        });
        tenants.insert(tenant.slug.clone(), entry.clone());
        tracing::debug!(tenant = %tenant.slug, server = %server.name, "tenant pool opened");
        Ok(entry)
    }

    /// Lends a connection of a READY tenant (the caller checks the status).
    pub async fn get(
        &self,
        tenant: &TenantRecord,
        server: &ServerRecord,
        keyring: &Keyring,
    ) -> Result<Lent, LendError> {
        let entry = self.pool_for(tenant, server, keyring)?;
        *entry.last_used.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
        let object = entry.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(ManagerError::Saturated) => {
                metrics::counter!("tenantd_pool_saturated_total", "server" => server.name.clone())
                    .increment(1);
                LendError::Saturated { server: server.name.clone(), budget: self.inner.settings.per_server }
            }
            managed::PoolError::Backend(ManagerError::Connect(pg)) if crate::pg::is_unavailable(&pg) => {
                LendError::ServerDown { server: server.name.clone(), reason: crate::pg::describe(&pg) }
            }
            managed::PoolError::Backend(ManagerError::Connect(pg)) => {
                LendError::Connect(crate::pg::describe(&pg))
            }
            managed::PoolError::Backend(ManagerError::Unreachable(reason)) => {
                LendError::ServerDown { server: server.name.clone(), reason }
            }
            managed::PoolError::Timeout(_) => LendError::TenantBusy(self.inner.settings.per_tenant),
            managed::PoolError::Closed => LendError::Closed,
            other => LendError::Connect(format!("{other:?}")),
        })?;
        Ok(Lent { object: Some(object), behind: Default::default() })
    }

    /// Closes a tenant's pool (suspended, deleted, moved): idle connections close now, lent
    /// ones when they come back.
    pub fn close(&self, slug: &str) {
        if let Some(p) = self.inner.tenants.lock().unwrap_or_else(PoisonError::into_inner).remove(slug) {
            p.pool.close();
            tracing::debug!(tenant = slug, "tenant pool closed");
        }
    }

    /// Closes pools unused for `idle_timeout` with nothing lent out; returns how many.
    pub fn close_idle(&self) -> usize {
        let idle_timeout = self.inner.settings.idle_timeout;
        let mut tenants = self.inner.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        let before = tenants.len();
        tenants.retain(|slug, p| {
            let status = p.pool.status();
            let idle = p.last_used.lock().unwrap_or_else(PoisonError::into_inner).elapsed() >= idle_timeout
                && status.size == status.available;
            if idle {
                p.pool.close();
                tracing::debug!(tenant = %slug, "idle tenant pool closed");
            }
            !idle
        });
        let closed = before - tenants.len();
        metrics::gauge!("tenantd_pools_open").set(tenants.len() as f64);
        closed
    }

    /// Starts the idle-pool reaper on the daemon's tracker.
    pub fn spawn_reaper(&self, shutdown: &Shutdown) {
        let pools = self.clone();
        let token = shutdown.token().clone();
        let period =
            (self.inner.settings.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        shutdown.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = ticks.tick() => { pools.close_idle(); }
                }
            }
        });
    }
}
