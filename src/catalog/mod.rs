//! The master catalog: a PostgreSQL database in which tenantd keeps to schema `tenantd`.
//!
//! [`Catalog`] owns a small connection pool to it and is the only code that runs SQL on it;
//! each table has a submodule of named query functions. The catalog's own schema is applied
//! with refinery from `schema/` (embedded in the binary), under an advisory lock so that any
//! number of daemons and CLI processes may start together.
//!
//! When the catalog cannot be reached, [`CatalogError::is_unavailable`] says so (the API
//! answers 503, background work backs off), and the catalog logs the outage once when it
//! begins and once when it ends.

/// The one lease predicate of the catalog: the row is `$1` and `$2` holds its lease now.
/// Every write a lease holder makes is guarded by it; zero rows means the lease is lost.
macro_rules! held {
    () => {
        "id = $1 AND lease_owner = $2 AND lease_until > now()"
    };
}

/// The one "nobody holds it" predicate: no lease, or one that has run out.
macro_rules! free {
    () => {
        "(lease_until IS NULL OR lease_until < now())"
    };
}

pub mod backups;
pub mod events;
pub mod operations;
pub mod plans;
pub mod reconcile;
pub mod servers;
pub mod spares;
pub mod tenants;
pub mod upgrades;
pub mod webhooks;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::error::SqlState;

use crate::pgtls::PgTls;

mod embedded_schema {
    refinery::embed_migrations!("schema");
}

/// Advisory lock key serialising catalog migrations ("tenantd" + 1).
const MIGRATION_LOCK: i64 = 0x7465_6e61_6e74_6401;
/// Channel of the catalog's change notifications.
pub const CHANNEL: &str = "tenantd";

/// One notification from the catalog (`NOTIFY tenantd`). Anyone who can connect to the
/// catalog database may send one, so it is only a hint: receivers re-read the catalog
/// before acting on it.
#[derive(Debug, Clone, serde::Deserialize, PartialEq, Eq)]
pub struct Change {
    /// `tenants` or `servers`.
    pub table: String,
    /// `INSERT` or `UPDATE`.
    pub op: String,
    /// Tenant slug or server name.
    pub key: String,
    /// The row's new status.
    #[serde(default)]
    pub status: Option<String>,
    /// A tenant whose lease is in force: its holder goes on with it, so no other worker has
    /// anything to claim because of this change (absent from catalogs before V14: false).
    #[serde(default)]
    pub held: bool,
}

/// A catalog problem.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The catalog URL cannot be parsed. The URL is not repeated: it may hold a password.
    #[error("catalog URL is not a valid PostgreSQL URL (expected postgres://USER:PASSWORD@HOST:PORT/DBNAME)")]
    BadUrl,
    /// The URL's TLS settings cannot be used.
    #[error("catalog TLS: {0}")]
    Tls(#[from] crate::pgtls::TlsError),
    /// A query failed.
    #[error("catalog query failed: {}", crate::pg::describe(.0))]
    Query(#[from] tokio_postgres::Error),
    /// No connection could be had.
    #[error("catalog unreachable: {}", describe_pool(.0))]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A connection of its own (migrations) could not be made in time.
    #[error("catalog unreachable: {0}")]
    Unreachable(String),
    /// Applying the catalog schema failed.
    #[error("catalog schema migration failed: {0}")]
    Migrate(#[from] refinery::Error),
    /// The catalog server is too old.
    #[error("catalog server runs PostgreSQL {0}; tenantd needs 13 or newer")]
    TooOld(String),
    /// A uniqueness rule of the catalog was hit (name taken).
    #[error("{0}")]
    Conflict(String),
    /// A row that should be there is not.
    #[error("{0}")]
    NotFound(String),
    /// A lease-guarded write found the tenant held by another process.
    #[error("lease lost: another process holds this tenant now")]
    LeaseLost,
}

impl From<crate::pg::ConnectError> for CatalogError {
    fn from(e: crate::pg::ConnectError) -> Self {
        match e {
            crate::pg::ConnectError::Tls(e) => Self::Tls(e),
            crate::pg::ConnectError::Postgres(e) => Self::Query(e),
            crate::pg::ConnectError::TimedOut(reason) => Self::Unreachable(reason),
        }
    }
}

fn describe_pool(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => crate::pg::describe(pg),
        other => other.to_string(),
    }
}

impl CatalogError {
    /// True when the catalog cannot answer now and the same request may succeed later: no
    /// connection (refused, closed, timed out, pool exhausted), the catalog's server shutting
    /// down or starting up, or out of a shared resource (class 53 insufficient resources, 54
    /// program limit, 57P operator intervention, 08 connection exception). Not the caller's
    /// fault and not a bug: the API answers 503 with `Retry-After`, background work backs off.
    pub fn is_unavailable(&self) -> bool {
        match self {
            CatalogError::Pool(_) | CatalogError::Unreachable(_) => true,
            CatalogError::Query(e) => {
                crate::pg::is_unavailable(e)
                    || e.code().is_some_and(|c| ["53", "54", "57P"].iter().any(|p| c.code().starts_with(p)))
            }
            _ => false,
        }
    }

    /// True when the error says the catalog cannot be reached at all (no connection, or the
    /// one in use closed under the query): an outage, which the catalog logs once (see
    /// [`CatalogError::is_unavailable`] for the wider class that is worth a retry).
    pub fn is_outage(&self) -> bool {
        use deadpool_postgres::{PoolError, TimeoutType};
        match self {
            // Waiting for a free pooled connection is being busy, not unreachable.
            CatalogError::Pool(PoolError::Timeout(TimeoutType::Wait)) => false,
            CatalogError::Pool(_) | CatalogError::Unreachable(_) => true,
            CatalogError::Query(e) => crate::pg::is_unavailable(e),
            _ => false,
        }
    }

    /// True when the error is a unique violation in PostgreSQL.
    fn is_unique_violation(err: &tokio_postgres::Error) -> bool {
        err.code() == Some(&SqlState::UNIQUE_VIOLATION)
    }
}

/// A handle on the catalog database; cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: PgTls,
    connector: crate::pgtls::Connector,
    reachability: Arc<Reachability>,
}

/// Whether the catalog answered the last time anyone tried. An outage is logged once when it
/// begins and once when it ends, however many requests and tasks run into it meanwhile (they
/// log it only at debug level); `tenantd_catalog_up` and `tenantd_catalog_outages_total` show
/// it to monitoring.
#[derive(Default)]
struct Reachability {
    /// Fast path: nothing to do on success while the catalog is up.
    down: AtomicBool,
    since: Mutex<Option<Instant>>,
}

impl Reachability {
    fn failed(&self, error: &CatalogError) {
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if since.is_none() {
            *since = Some(Instant::now());
            self.down.store(true, Ordering::SeqCst);
            metrics::gauge!("tenantd_catalog_up").set(0.0);
            metrics::counter!("tenantd_catalog_outages_total").increment(1);
            tracing::error!(
                %error,
                "catalog unreachable: the API answers 503 catalog_unavailable and background work waits \
                 until it returns"
            );
        }
    }

    /// A statement was answered on a connection made at `connected`. Only one made after the
    /// outage began proves the catalog is back: older ones may still answer while the server
    /// shuts down, or not have noticed yet that it closed them.
    fn answered(&self, connected: Instant) {
        if !self.down.load(Ordering::SeqCst) {
            return;
        }
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(started) = since.take_if(|started| connected > *started) {
            self.down.store(false, Ordering::SeqCst);
            metrics::gauge!("tenantd_catalog_up").set(1.0);
            tracing::info!(down_for = ?started.elapsed(), "catalog reachable again");
        }
    }
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("dbname", &self.config.get_dbname()).finish_non_exhaustive()
    }
}

/// Parses a PostgreSQL URL or key=value string without ever echoing it; its TLS settings
/// (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) come back on their own, checked.
pub fn parse_pg_config(url: &SecretString) -> Result<(tokio_postgres::Config, PgTls), CatalogError> {
    let (rest, tls) = crate::pgtls::split(url.expose_secret()).map_err(|e| match e {
        crate::pgtls::TlsError::Syntax(_) => CatalogError::BadUrl,
        other => CatalogError::Tls(other),
    })?;
    tls.check()?;
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|_| CatalogError::BadUrl)?;
    tls.apply(&mut config);
    Ok((config, tls))
}

impl Catalog {
    /// Opens a pool on the catalog; no connection is made until first use.
    pub fn new(url: &SecretString, max_connections: usize) -> Result<Self, CatalogError> {
        let (mut config, tls) = parse_pg_config(url)?;
        config.application_name("tenantd").connect_timeout(Duration::from_secs(10));
        crate::pg::add_options(&mut config, crate::pg::CATALOG_SESSION);
        let (host, port) = crate::pg::address(&config);
        let connector = tls.connector(&host, port)?;
        let manager = Manager::from_config(
            config.clone(),
            connector.clone(),
            // Fast (no check query per checkout: the catalog is on every hot path). A query
            // abandoned while it waits (a lease renewal that timed out) can hold its
            // connection only until the session's lock_timeout/statement_timeout end it.
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(15)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|_| CatalogError::BadUrl)?;
        metrics::gauge!("tenantd_catalog_up").set(1.0);
        Ok(Self { pool, config, tls, connector, reachability: Arc::default() })
    }

    /// A pooled connection. Whether one could be had is also what tells the log that an
    /// outage began or ended.
    pub async fn client(&self) -> Result<deadpool_postgres::Client, CatalogError> {
        match self.pool.get().await {
            Ok(client) => Ok(client),
            Err(e) => Err(self.seen(e.into())),
        }
    }

    /// Notes an error that says the catalog is gone (a connection closed under a query) as an
    /// outage; returns it.
    fn seen(&self, error: CatalogError) -> CatalogError {
        if error.is_outage() {
            self.reachability.failed(&error);
        }
        error
    }

    /// The outcome of a statement on `client`: an answer ends an outage, an error may start
    /// one.
    fn outcome<T>(
        &self,
        client: &deadpool_postgres::Client,
        result: Result<T, tokio_postgres::Error>,
    ) -> Result<T, CatalogError> {
        match result {
            Ok(value) => {
                self.reachability.answered(deadpool_postgres::Object::metrics(client).created);
                Ok(value)
            }
            Err(e) => Err(self.seen(e.into())),
        }
    }

    /// Runs a query through the pooled connection's statement cache (one round trip instead
    /// of two for every query after the first).
    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, CatalogError> {
        let client = self.client().await?;
        let run = async { client.query(&client.prepare_cached(sql).await?, params).await };
        self.outcome(&client, run.await)
    }

    /// [`Catalog::query`] expecting at most one row.
    pub(crate) async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, CatalogError> {
        let client = self.client().await?;
        let run = async { client.query_opt(&client.prepare_cached(sql).await?, params).await };
        self.outcome(&client, run.await)
    }

    /// [`Catalog::query`] expecting exactly one row.
    pub(crate) async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, CatalogError> {
        let client = self.client().await?;
        let run = async { client.query_one(&client.prepare_cached(sql).await?, params).await };
        self.outcome(&client, run.await)
    }

    /// [`Catalog::query`] for statements; returns the rows affected.
    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, CatalogError> {
        let client = self.client().await?;
        let run = async { client.execute(&client.prepare_cached(sql).await?, params).await };
        self.outcome(&client, run.await)
    }

    /// The catalog's connection settings (for the watcher's dedicated LISTEN connection).
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The catalog's TLS connector (for connections made outside the pool).
    pub fn connector(&self) -> crate::pgtls::Connector {
        self.connector.clone()
    }

    /// Applies the catalog schema. Safe to run from many processes at once: one applies, the
    /// others wait on the advisory lock and then find nothing to do.
    pub async fn migrate(&self) -> Result<(), CatalogError> {
        let mut client = crate::pg::connect(&self.config, &self.tls, "catalog migration").await?;
        let version: i32 = client
            .query_one("SELECT pg_catalog.current_setting('server_version_num')::pg_catalog.int4", &[])
            .await?
            .get(0);
        if version < 130_000 {
            return Err(CatalogError::TooOld(version.to_string()));
        }
        // The lock is released with the session if anything below fails. Another process may
        // be applying the schema: wait for it longer than the session's usual lock timeout.
        client.batch_execute("SET lock_timeout = '5min'; SET statement_timeout = '10min'").await?;
        client.execute("SELECT pg_catalog.pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await?;
        client.batch_execute("CREATE SCHEMA IF NOT EXISTS tenantd").await?;
        let mut runner = embedded_schema::migrations::runner();
        runner.set_migration_table_name("tenantd.schema_history");
        let report = runner.set_grouped(true).run_async(&mut client).await?;
        client.execute("SELECT pg_catalog.pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await?;
        for m in report.applied_migrations() {
            tracing::info!(version = m.version(), name = m.name(), "applied catalog migration");
        }
        Ok(())
    }

    /// Checks the catalog answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), CatalogError> {
        let client = self.client().await?;
        let answer = client.simple_query("SELECT 1").await;
        self.outcome(&client, answer).map(drop)
    }
}
