//! Benchmarks that print figures (`tenantd bench ...`); targets live here, never in tests.
//!
//! `bench provision` measures, on one server and in one run:
//! - the **floor**: `CREATE DATABASE ... TEMPLATE template0` plus the same tenant migrations
//!   applied by plain SQL in one transaction — the least any tool must do;
//! - **tenantd**: time-to-READY (`ready_at - created_at`, from the catalog's own clock) of
//!   tenants provisioned by a real daemon, one at a time (latency) and all at once with the
//!   configured worker concurrency (throughput, against the floor run just as parallel).
//!
//! `bench sql`, `bench migrate`, `bench move` and `bench spares` (in their modules) measure
//! lending, fleet upgrades, a tenant's move and warm spares the same way. Each works in a scratch
//! catalog database created on that server and removes everything it made afterwards, so it
//! never disturbs the tenants of a running daemon.

use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::Client;

use crate::admin::AdminTarget;
use crate::app::App;
use crate::catalog::Catalog;
use crate::catalog::servers::{NewServer, ServerRecord};
use crate::config::Settings;
use crate::crypto::{Keyring, server_aad};
use crate::names::PgIdent;
use crate::tenant_sql;

mod catalog;
mod cpu;
mod migrate;
mod pools;
mod provision;
mod relocate;
mod spares;
mod sql;

pub use catalog::catalog;
pub use migrate::migrate;
pub use pools::pools;
pub use provision::provision;
pub use relocate::relocate;
pub use spares::spares;
pub use sql::sql;

/// A benchmark failure.
#[derive(Debug, thiserror::Error)]
#[error("bench: {0}")]
pub struct BenchError(String);

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

/// Percentiles of a sample, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Nearest-rank percentiles of `samples` (milliseconds).
pub fn stats(samples: &[f64]) -> Stats {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    };
    Stats { p50: pick(0.50), p95: pick(0.95), p99: pick(0.99) }
}

/// A scratch catalog on the server under test, with that server registered in it.
struct Scratch {
    admin: AdminTarget,
    database: String,
    catalog_url: SecretString,
}

impl Scratch {
    /// Settings of a daemon on the scratch catalog: random port, fresh token, own prefix.
    fn daemon_settings(&self, settings: &Settings) -> Result<Settings, BenchError> {
        let mut bench = settings.clone();
        bench.catalog_url = Some(self.catalog_url.clone());
        bench.listen = "127.0.0.1:0".parse().map_err(err)?;
        bench.names.prefix = format!("tb{}_", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        bench.admin_token = Some(crate::crypto::random_secret(32));
        // Background rounds that visit every tenant would land in the middle of a measurement
        // (the reconcile reads each database's history, the quota round each size): off.
        bench.limits.quota_check_interval = std::time::Duration::from_secs(24 * 3600);
        bench.reconcile.interval = std::time::Duration::ZERO;
        Ok(bench)
    }

    async fn create(server: &ServerRecord, keyring: &Keyring) -> Result<Self, BenchError> {
        let admin = AdminTarget::from_record(server, keyring).map_err(err)?;
        let database = format!("tenantd_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let client = admin.connect(None).await.map_err(err)?;
        let scratch = PgIdent::from_catalog(&database).map_err(err)?;
        client.batch_execute(&tenant_sql::create_database(&scratch)).await.map_err(pg)?;
        let catalog_url = SecretString::from(format!(
            "{}?{}",
            crate::pg::url(&admin.user, admin.password.expose_secret(), &admin.host, admin.port, &database),
            admin.tls.url_params(true)
        ));
        let catalog = Catalog::new(&catalog_url, 2).map_err(err)?;
        catalog.migrate().await.map_err(err)?;
        let new = NewServer {
            name: server.name.clone(),
            host: server.host.clone(),
            port: server.port,
            admin_user: server.admin_user.clone(),
            admin_password_sealed: keyring.seal(admin.password.expose_secret(), &server_aad(&server.name)),
            maintenance_db: server.maintenance_db.clone(),
            tls: server.tls.clone(),
            weight: 100,
            max_tenants: None,
            region: None,
            latency_ms: 0.0,
        };
        catalog.insert_server(&new).await.map_err(err)?;
        Ok(Self { admin, database, catalog_url })
    }

    /// Drops every tenant database (final or staging) and role the scratch catalog made —
    /// only those carrying the tenant's marker — then the scratch catalog itself.
    async fn remove(self) -> Result<(), BenchError> {
        let catalog = Catalog::new(&self.catalog_url, 2).map_err(err)?;
        let tenants = catalog.all_tenants(None, None).await.map_err(err)?;
        drop(catalog);
        let client = self.admin.connect(None).await.map_err(err)?;
        for t in &tenants {
            let role = match &t.role_name {
                Some(role) => Some(PgIdent::from_catalog(role).map_err(err)?),
                None => None,
            };
            let role_ours = match &role {
                Some(role) => {
                    crate::markers::role(&client, t.id, role).await.map_err(pg)?.ownership.is_ours()
                }
                None => false,
            };
            let staging = PgIdent::staging(t.id);
            let mut names = vec![staging];
            if let Some(name) = &t.database_name {
                names.push(PgIdent::from_catalog(name).map_err(err)?);
            }
            let found = crate::markers::databases(&client, t.id, &names.iter().collect::<Vec<_>>())
                .await
                .map_err(pg)?;
            for (name, ownership) in found {
                if ownership.is_ours() {
                    drop_database(&client, &name).await?;
                }
            }
            if let (Some(role), true) = (&role, role_ours) {
                client.batch_execute(&tenant_sql::drop_role(role)).await.map_err(pg)?;
            }
        }
        let scratch = PgIdent::from_catalog(&self.database).map_err(err)?;
        drop_database(&client, &scratch).await
    }
}

/// Drops a database of the bench's (see [`tenant_sql::drop_database_now`]).
async fn drop_database(client: &Client, name: &PgIdent) -> Result<(), BenchError> {
    tenant_sql::drop_database_now(client, name).await.map_err(pg)
}

fn pg(e: tokio_postgres::Error) -> BenchError {
    BenchError(crate::pg::describe(&e))
}

/// The floor for one database: CREATE DATABASE + migrations by plain SQL. Returns ms.
async fn floor_one(
    admin: &AdminTarget,
    maintenance: &Client,
    name: &str,
    migrations: &str,
) -> Result<f64, BenchError> {
    let started = Instant::now();
    let floor = PgIdent::from_catalog(name).map_err(err)?;
    maintenance.batch_execute(&tenant_sql::create_database(&floor)).await.map_err(pg)?;
    let mut inside = admin.connect(Some(name)).await.map_err(err)?;
    let tx = inside.transaction().await.map_err(pg)?;
    // Admin sessions pin search_path to pg_catalog; the migrations create in public.
    tx.batch_execute("SET LOCAL search_path = public").await.map_err(pg)?;
    tx.batch_execute(migrations).await.map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    drop(inside);
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

async fn drop_floor(maintenance: &Client, name: &str) -> Result<(), BenchError> {
    drop_database(maintenance, &PgIdent::from_catalog(name).map_err(err)?).await
}

/// The floor run `concurrency`-wide over `n` databases; returns databases per second.
async fn floor_parallel(
    admin: &AdminTarget,
    tag: &str,
    n: usize,
    concurrency: usize,
) -> Result<f64, BenchError> {
    let migrations: String = crate::tenant_migrations::MigrationSet::embedded().sql().join("\n");
    let started = Instant::now();
    let chunks: Vec<Vec<usize>> = (0..concurrency).map(|w| (w..n).step_by(concurrency).collect()).collect();
    let runs = chunks.into_iter().map(|indexes| {
        let migrations = migrations.clone();
        async move {
            let own = admin.connect(None).await.map_err(err)?;
            for i in indexes {
                floor_one(admin, &own, &format!("tenantd_floorp_{tag}_{i}"), &migrations).await?;
            }
            Ok::<_, BenchError>(())
        }
    });
    futures::future::try_join_all(runs).await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Asks for `slugs` all at once and waits until every one is READY; returns their
/// time-to-READY (ms) and the rate from the first `created_at` to the last `ready_at`
/// (tenants/s, catalog clock).
async fn create_ready(app: &App, slugs: &[String], timeout: Duration) -> Result<(Vec<f64>, f64), BenchError> {
    let create = |slug: &String| crate::tenants::CreateTenant { slug: slug.clone(), ..Default::default() };
    // At once, as sign-ups come: at most 32 inserts in flight (the catalog pool's waiters).
    futures::stream::iter(slugs)
        .map(|slug| async move { crate::tenants::create(&app.catalog, &app.settings, &create(slug)).await })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .map_err(err)?;
    let ready = ready_at(app, slugs, timeout).await?;
    let first = ready.iter().map(|(created, _)| *created).min();
    let last = ready.iter().map(|(_, ready)| *ready).max();
    let span = match (first, last) {
        (Some(f), Some(l)) => millis(f, l) / 1000.0,
        _ => f64::NAN,
    };
    let times = ready.iter().map(|(created, ready)| millis(*created, *ready)).collect();
    Ok((times, slugs.len() as f64 / span.max(1e-6)))
}

/// Milliseconds from `from` to `to`.
fn millis(from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

/// Time-to-READY of `slugs` (ms, the catalog's clock), once all are READY.
async fn ready_times(app: &App, slugs: &[String], timeout: Duration) -> Result<Vec<f64>, BenchError> {
    Ok(ready_at(app, slugs, timeout)
        .await?
        .into_iter()
        .map(|(created, ready)| millis(created, ready))
        .collect())
}

/// `created_at` and `ready_at` of `slugs`, once all are READY. Waits on the daemon's catalog
/// notifications as `?wait=` does, reading a tenant again when one names it (or after 250 ms
/// without): polling the catalog would load the very server being measured.
async fn ready_at(
    app: &App,
    slugs: &[String],
    timeout: Duration,
) -> Result<Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)>, BenchError> {
    let deadline = Instant::now() + timeout;
    // Subscribed before the first read: a change after that read is on the channel.
    let mut changes = app.changes.subscribe();
    let mut times = Vec::with_capacity(slugs.len());
    for slug in slugs {
        loop {
            let t = app.catalog.tenant(slug).await.map_err(err)?;
            match (t.status, t.ready_at) {
                (crate::catalog::tenants::TenantStatus::Ready, Some(ready)) => {
                    times.push((t.created_at, ready));
                    break;
                }
                (crate::catalog::tenants::TenantStatus::Error, _) => {
                    return Err(BenchError(format!(
                        "tenant {slug} failed: {}",
                        t.last_error.unwrap_or_default()
                    )));
                }
                _ if Instant::now() > deadline => {
                    return Err(BenchError(format!("tenant {slug} not READY in time")));
                }
                _ => {}
            }
            let named = async {
                loop {
                    match changes.recv().await {
                        Ok(change) if change.key == *slug => return Ok(()),
                        Ok(_) => {}
                        // Missed some: read again.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return Ok(()),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            return Err(BenchError("the daemon stopped".into()));
                        }
                    }
                }
            };
            // Elapsed without a notification naming it: read again all the same.
            if let Ok(outcome) = tokio::time::timeout(Duration::from_millis(250), named).await {
                outcome?;
            }
        }
    }
    Ok(times)
}

/// The named server, or the first healthy one.
fn pick_server<'a>(servers: &'a [ServerRecord], name: Option<&str>) -> Result<&'a ServerRecord, BenchError> {
    match name {
        Some(name) => servers
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| BenchError(format!("unknown server {name:?}"))),
        None => servers
            .iter()
            .find(|s| s.health == crate::catalog::servers::ServerHealth::Healthy)
            .ok_or_else(|| BenchError("no healthy server".into())),
    }
}

/// Parses a connection URL built by tenantd itself.
fn parse_url(url: &str) -> Result<tokio_postgres::Config, BenchError> {
    let (rest, _) = crate::pgtls::split(url).map_err(err)?;
    rest.parse().map_err(|_| BenchError("bad connection URL".into()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = super::stats(&samples);
        assert_eq!((s.p50, s.p95, s.p99), (50.0, 95.0, 99.0));
        assert_eq!(super::stats(&[7.0]).p95, 7.0);
    }
}
