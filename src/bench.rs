//! Benchmarks that print figures (`tenantd bench ...`); targets live here, never in tests.
//!
//! `bench provision` measures, on one server and in one run:
//! - the **floor**: `CREATE DATABASE ... TEMPLATE template0` plus the same tenant migrations
//!   applied by plain SQL in one transaction — the least any tool must do;
//! - **tenantd**: time-to-READY (`ready_at - created_at`, from the catalog's own clock) of
//!   tenants provisioned by a real daemon, one at a time (latency) and all at once with the
//!   configured worker concurrency (throughput, against the floor run just as parallel).
//!
//! It works in a scratch catalog database created on that server and removes everything it
//! made afterwards, so it never disturbs the tenants of a running daemon.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::Client;

use crate::catalog::Catalog;
use crate::catalog::servers::{NewServer, ServerRecord};
use crate::config::Settings;
use crate::crypto::Keyring;
use crate::names::PgIdent;
use crate::servers::{AdminTarget, server_aad};
use crate::startup::Daemon;
use crate::tenant_sql;

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
    async fn create(server: &ServerRecord, keyring: &Keyring) -> Result<Self, BenchError> {
        let admin = AdminTarget::from_record(server, keyring).map_err(err)?;
        let database = format!("tenantd_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let client = admin.connect(None).await.map_err(err)?;
        client.batch_execute(&format!("CREATE DATABASE {database} TEMPLATE template0")).await.map_err(pg)?;
        let catalog_url = SecretString::from(crate::pg::url(
            &admin.user,
            admin.password.expose_secret(),
            &admin.host,
            admin.port,
            &database,
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
        let mut tenants = Vec::new();
        let mut after = None;
        loop {
            let filter = crate::catalog::tenants::TenantFilter { after, limit: 1000, ..Default::default() };
            let page = catalog.tenants(&filter).await.map_err(err)?;
            after = page.last().map(|t| t.slug.clone());
            let done = page.len() < 1000;
            tenants.extend(page);
            if done {
                break;
            }
        }
        drop(catalog);
        let client = self.admin.connect(None).await.map_err(err)?;
        for t in &tenants {
            let marker = tenant_sql::marker(t.id);
            let names = [Some(PgIdent::staging(t.id).to_string()), t.database_name.clone()];
            for name in names.into_iter().flatten() {
                let ours: bool = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 \
                         AND shobj_description(oid, 'pg_database') = $2)",
                        &[&name, &marker],
                    )
                    .await
                    .map_err(pg)?
                    .get(0);
                if ours {
                    client
                        .batch_execute(&tenant_sql::drop_database(&PgIdent::from_catalog(name)))
                        .await
                        .map_err(pg)?;
                }
            }
            if let Some(role) = &t.role_name {
                let ours: bool = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1 \
                         AND shobj_description(oid, 'pg_authid') = $2)",
                        &[role, &marker],
                    )
                    .await
                    .map_err(pg)?
                    .get(0);
                if ours {
                    client
                        .batch_execute(&tenant_sql::drop_role(&PgIdent::from_catalog(role.clone())))
                        .await
                        .map_err(pg)?;
                }
            }
        }
        let scratch = PgIdent::from_catalog(self.database);
        client.batch_execute(&tenant_sql::drop_database(&scratch)).await.map_err(pg)?;
        Ok(())
    }
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
    maintenance.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0")).await.map_err(pg)?;
    let mut inside = admin.connect(Some(name)).await.map_err(err)?;
    let tx = inside.transaction().await.map_err(pg)?;
    tx.batch_execute(migrations).await.map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    drop(inside);
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

async fn drop_floor(maintenance: &Client, name: &str) -> Result<(), BenchError> {
    maintenance
        .batch_execute(&tenant_sql::drop_database(&PgIdent::from_catalog(name.to_owned())))
        .await
        .map_err(pg)
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

/// Time-to-READY of `slugs` (ms) read from the scratch catalog once all are READY.
async fn ready_times(catalog: &Catalog, slugs: &[String], timeout: Duration) -> Result<Vec<f64>, BenchError> {
    let deadline = Instant::now() + timeout;
    let mut times = Vec::with_capacity(slugs.len());
    for slug in slugs {
        loop {
            let t = catalog.tenant(slug).await.map_err(err)?;
            match (t.status, t.ready_at) {
                (crate::catalog::tenants::TenantStatus::Ready, Some(ready)) => {
                    times.push((ready - t.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
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
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
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
            .find(|s| s.health == "healthy")
            .ok_or_else(|| BenchError("no healthy server".into())),
    }
}

/// `tenantd bench provision`: prints floor and tenantd figures side by side.
pub async fn provision(
    settings: &Settings,
    catalog: &Catalog,
    keyring: &Keyring,
    server: Option<&str>,
    n: usize,
) -> Result<(), BenchError> {
    let servers = catalog.servers().await.map_err(err)?;
    let server = pick_server(&servers, server)?;
    let concurrency = settings.workers.concurrency;
    println!(
        "bench provision: {n} tenants on server {} ({}:{}), worker concurrency {concurrency}",
        server.name, server.host, server.port
    );
    let scratch = Scratch::create(server, keyring).await?;
    let prefix = format!("tb{}_", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let result = run_provision(settings, &scratch, &prefix, n, concurrency).await;
    let removed = scratch.remove().await;
    result.and(removed)
}

async fn run_provision(
    settings: &Settings,
    scratch: &Scratch,
    prefix: &str,
    n: usize,
    concurrency: usize,
) -> Result<(), BenchError> {
    let mut bench_settings = settings.clone();
    bench_settings.catalog_url = Some(scratch.catalog_url.clone());
    bench_settings.listen = "127.0.0.1:0".parse().map_err(err)?;
    bench_settings.names.prefix = prefix.to_owned();
    bench_settings.admin_token = Some(crate::crypto::random_secret(32));
    let tag = uuid::Uuid::new_v4().simple().to_string()[..6].to_owned();
    let daemon = Daemon::start(bench_settings.clone()).await.map_err(err)?;
    let outcome = measure(&daemon, &scratch.admin, &tag, n, concurrency).await;
    daemon.stop().await;
    // Floor databases are dropped only now: they accumulate as tenants do.
    let maintenance = scratch.admin.connect(None).await.map_err(err)?;
    for i in 0..n {
        drop_floor(&maintenance, &format!("tenantd_floor_{tag}_{i}")).await?;
        drop_floor(&maintenance, &format!("tenantd_floorp_{tag}_{i}")).await?;
    }
    let figures = outcome?;
    figures.print(n, concurrency);
    Ok(())
}

/// Everything measured in one run.
struct Figures {
    steps: Vec<(String, f64)>,
    floor: Vec<f64>,
    sequential: Vec<f64>,
    floor_rate: f64,
    batch: Vec<f64>,
    batch_rate: f64,
}

impl Figures {
    fn print(&self, n: usize, concurrency: usize) {
        let (f, t, b) = (stats(&self.floor), stats(&self.sequential), stats(&self.batch));
        let row = |label: &str, p50: f64, p95: f64, rate: f64| {
            println!("{label:<52} {p50:>9.1} {p95:>9.1} {rate:>10.2}");
        };
        println!();
        println!("{:<52} {:>9} {:>9} {:>10}", "", "p50 ms", "p95 ms", "tenants/s");
        row("floor: CREATE DATABASE + migrations, 1 at a time", f.p50, f.p95, 1000.0 / f.p50);
        row("tenantd: time-to-READY, 1 at a time", t.p50, t.p95, 1000.0 / t.p50);
        println!(
            "{:<52} {:>9} {:>9} {:>10.2}",
            format!("floor: {concurrency} in parallel"),
            "-",
            "-",
            self.floor_rate
        );
        row(&format!("tenantd: {n} at once, {concurrency} workers"), b.p50, b.p95, self.batch_rate);
        println!();
        println!("tenantd p50 / floor p50 = {:.2}x (target: <= 1.5x)", t.p50 / f.p50);
        println!();
        println!("where the time goes (one at a time, median ms before each event):");
        for (kind, ms) in &self.steps {
            println!("  {kind:<28} {ms:>8.1}");
        }
    }
}

/// Median time before each event kind, from creation on, over `slugs`.
async fn step_breakdown(catalog: &Catalog, slugs: &[String]) -> Result<Vec<(String, f64)>, BenchError> {
    let mut gaps: Vec<(String, Vec<f64>)> = Vec::new();
    for slug in slugs {
        let tenant = catalog.tenant(slug).await.map_err(err)?;
        let mut previous = tenant.created_at;
        for event in catalog.events(tenant.id, 0, 100).await.map_err(err)? {
            let ms = (event.at - previous).num_microseconds().unwrap_or(0) as f64 / 1000.0;
            previous = event.at;
            match gaps.iter_mut().find(|(k, _)| *k == event.kind) {
                Some((_, v)) => v.push(ms),
                None => gaps.push((event.kind, vec![ms])),
            }
        }
    }
    Ok(gaps.into_iter().map(|(k, v)| (k, stats(&v).p50)).collect())
}

/// One at a time, floor and tenantd interleaved (so both see the same server state), then
/// all at once.
async fn measure(
    daemon: &Daemon,
    admin: &AdminTarget,
    tag: &str,
    n: usize,
    concurrency: usize,
) -> Result<Figures, BenchError> {
    let app = daemon.app();
    crate::servers::check_all(&app.catalog, &app.keyring).await.map_err(err)?;
    let migrations: String = crate::tenant_migrations::MigrationSet::embedded().sql().join("\n");
    let maintenance = admin.connect(None).await.map_err(err)?;
    let create = |slug: String| crate::tenants::CreateTenant { slug, ..Default::default() };
    let (mut floor, mut sequential) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        floor.push(floor_one(admin, &maintenance, &format!("tenantd_floor_{tag}_{i}"), &migrations).await?);
        let slug = format!("seq-{i:04}");
        crate::tenants::create(&app.catalog, &app.settings, &create(slug.clone())).await.map_err(err)?;
        sequential.extend(ready_times(&app.catalog, &[slug], Duration::from_secs(120)).await?);
    }
    let seq_slugs: Vec<String> = (0..n).map(|i| format!("seq-{i:04}")).collect();
    let steps = step_breakdown(&app.catalog, &seq_slugs).await?;
    let floor_rate = floor_parallel(admin, tag, n, concurrency).await?;
    let started = Instant::now();
    let slugs: Vec<String> = (0..n).map(|i| format!("par-{i:04}")).collect();
    for slug in &slugs {
        crate::tenants::create(&app.catalog, &app.settings, &create(slug.clone())).await.map_err(err)?;
    }
    let batch = ready_times(&app.catalog, &slugs, Duration::from_secs(600)).await?;
    let batch_rate = n as f64 / started.elapsed().as_secs_f64();
    Ok(Figures { steps, floor, sequential, floor_rate, batch, batch_rate })
}

/// `tenantd bench sql`: `SELECT 1` through `POST /v1/tenants/{slug}/sql` next to the same
/// query on a direct tokio-postgres connection as the tenant role, one run, same server.
/// Both sides prepare and execute per query (what the endpoint does), one at a time for
/// latency, then `concurrency` clients for throughput.
pub async fn sql(
    settings: &Settings,
    catalog: &Catalog,
    keyring: &Keyring,
    server: Option<&str>,
    n: usize,
    concurrency: usize,
) -> Result<(), BenchError> {
    let servers = catalog.servers().await.map_err(err)?;
    let server = pick_server(&servers, server)?;
    println!(
        "bench sql: {n} queries on server {} ({}:{}), then {concurrency} clients",
        server.name, server.host, server.port
    );
    let scratch = Scratch::create(server, keyring).await?;
    let prefix = format!("tb{}_", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let mut bench_settings = settings.clone();
    bench_settings.catalog_url = Some(scratch.catalog_url.clone());
    bench_settings.listen = "127.0.0.1:0".parse().map_err(err)?;
    bench_settings.names.prefix = prefix.clone();
    bench_settings.admin_token = Some(crate::crypto::random_secret(32));
    bench_settings.pools.per_tenant = bench_settings.pools.per_tenant.max(concurrency);
    bench_settings.pools.per_server = bench_settings.pools.per_server.max(concurrency);
    let result = async {
        let daemon = Daemon::start(bench_settings).await.map_err(err)?;
        let measured = measure_sql(&daemon, n, concurrency).await;
        daemon.stop().await;
        measured
    }
    .await;
    let removed = scratch.remove().await;
    let figures = result?;
    removed?;
    figures.print(concurrency);
    Ok(())
}

struct SqlFigures {
    http: Vec<f64>,
    direct: Vec<f64>,
    http_rate: f64,
    direct_rate: f64,
}

impl SqlFigures {
    fn print(&self, concurrency: usize) {
        let (h, d) = (stats(&self.http), stats(&self.direct));
        println!();
        println!("{:<44} {:>9} {:>9} {:>12}", "SELECT 1", "p50 ms", "p99 ms", "queries/s");
        println!(
            "{:<44} {:>9.3} {:>9.3} {:>12.0}",
            "direct tokio-postgres, 1 client",
            d.p50,
            d.p99,
            1000.0 / d.p50
        );
        println!(
            "{:<44} {:>9.3} {:>9.3} {:>12.0}",
            "tenantd HTTP endpoint, 1 client",
            h.p50,
            h.p99,
            1000.0 / h.p50
        );
        println!(
            "{:<44} {:>9} {:>9} {:>12.0}",
            format!("direct, {concurrency} connections"),
            "-",
            "-",
            self.direct_rate
        );
        println!(
            "{:<44} {:>9} {:>9} {:>12.0}",
            format!("tenantd HTTP, {concurrency} clients"),
            "-",
            "-",
            self.http_rate
        );
        println!();
        println!("overhead p50 = {:.3} ms (target: <= 0.5 ms)", h.p50 - d.p50);
    }
}

async fn measure_sql(daemon: &Daemon, n: usize, concurrency: usize) -> Result<SqlFigures, BenchError> {
    let app = daemon.app();
    crate::servers::check_all(&app.catalog, &app.keyring).await.map_err(err)?;
    let req = crate::tenants::CreateTenant { slug: "bench-sql".into(), ..Default::default() };
    let created = crate::tenants::create(&app.catalog, &app.settings, &req).await.map_err(err)?;
    let token = created.token.ok_or_else(|| BenchError("no token".into()))?;
    ready_times(&app.catalog, &["bench-sql".to_owned()], Duration::from_secs(120)).await?;
    let tenant = app.catalog.tenant("bench-sql").await.map_err(err)?;
    let server = app.catalog.server(tenant.server.as_deref().unwrap_or_default()).await.map_err(err)?;
    let details = crate::api::lending::details(&tenant, &server, &app.keyring).map_err(BenchError)?;
    let url = format!("http://{}/v1/tenants/bench-sql/sql", daemon.local_addr());
    let http = reqwest::Client::new();
    let body = serde_json::json!({ "sql": "SELECT 1" });
    let one_http = |client: reqwest::Client| {
        let (url, body, token) = (url.clone(), body.clone(), token.expose_secret().to_owned());
        async move {
            let started = Instant::now();
            let response = client.post(&url).bearer_auth(&token).json(&body).send().await.map_err(err)?;
            if !response.status().is_success() {
                return Err(BenchError(format!("HTTP {}", response.status())));
            }
            response.bytes().await.map_err(err)?;
            Ok::<f64, BenchError>(started.elapsed().as_secs_f64() * 1000.0)
        }
    };
    let direct = crate::pg::connect(&parse_url(&details.url)?, "bench").await.map_err(pg)?;
    // Warm both paths (pool, HTTP keep-alive, server caches).
    for _ in 0..n.min(200) {
        one_http(http.clone()).await?;
        direct_select(&direct).await?;
    }
    let (mut http_times, mut direct_times) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        http_times.push(one_http(http.clone()).await?);
        direct_times.push(direct_select(&direct).await?);
    }
    let per_client = n.div_ceil(concurrency);
    let started = Instant::now();
    futures::future::try_join_all((0..concurrency).map(|_| {
        let client = http.clone();
        let one = &one_http;
        async move {
            for _ in 0..per_client {
                one(client.clone()).await?;
            }
            Ok::<(), BenchError>(())
        }
    }))
    .await?;
    let http_rate = (per_client * concurrency) as f64 / started.elapsed().as_secs_f64();
    let mut connections = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        connections.push(crate::pg::connect(&parse_url(&details.url)?, "bench").await.map_err(pg)?);
    }
    let started = Instant::now();
    futures::future::try_join_all(connections.iter().map(|c| async move {
        for _ in 0..per_client {
            direct_select(c).await?;
        }
        Ok::<(), BenchError>(())
    }))
    .await?;
    let direct_rate = (per_client * concurrency) as f64 / started.elapsed().as_secs_f64();
    Ok(SqlFigures { http: http_times, direct: direct_times, http_rate, direct_rate })
}

/// One `SELECT 1` on a direct connection; returns ms.
async fn direct_select(client: &Client) -> Result<f64, BenchError> {
    let started = Instant::now();
    client.query("SELECT 1", &[]).await.map_err(pg)?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// `tenantd bench migrate`: time to upgrade `n` tenants with a one-table migration at
/// concurrency 1, 4 and 8 (each level ships one more migration, as a new build would), and
/// the time 1,000 tenants would take at the measured rate.
pub async fn migrate(
    settings: &Settings,
    catalog: &Catalog,
    keyring: &Keyring,
    server: Option<&str>,
    n: usize,
) -> Result<(), BenchError> {
    let servers = catalog.servers().await.map_err(err)?;
    let server = pick_server(&servers, server)?;
    println!("bench migrate: {n} tenants on server {} ({}:{})", server.name, server.host, server.port);
    let scratch = Scratch::create(server, keyring).await?;
    let prefix = format!("tb{}_", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let mut bench_settings = settings.clone();
    bench_settings.catalog_url = Some(scratch.catalog_url.clone());
    bench_settings.listen = "127.0.0.1:0".parse().map_err(err)?;
    bench_settings.names.prefix = prefix.clone();
    bench_settings.admin_token = Some(crate::crypto::random_secret(32));
    let result = async {
        let daemon = Daemon::start(bench_settings).await.map_err(err)?;
        let measured = measure_migrate(&daemon, n).await;
        daemon.stop().await;
        measured
    }
    .await;
    let removed = scratch.remove().await;
    let rows = result?;
    removed?;
    println!();
    println!("{:<14} {:>10} {:>12} {:>22}", "concurrency", "seconds", "tenants/s", "1,000 tenants (est.)");
    for (concurrency, seconds) in rows {
        let rate = n as f64 / seconds;
        println!("{concurrency:<14} {seconds:>10.2} {rate:>12.1} {:>20.1} s", 1000.0 / rate);
    }
    println!("\ntarget: 1,000 tenants in <= 60 s");
    Ok(())
}

async fn measure_migrate(daemon: &Daemon, n: usize) -> Result<Vec<(usize, f64)>, BenchError> {
    let app = daemon.app();
    crate::servers::check_all(&app.catalog, &app.keyring).await.map_err(err)?;
    println!("provisioning {n} tenants first...");
    let slugs: Vec<String> = (0..n).map(|i| format!("mig-{i:04}")).collect();
    for slug in &slugs {
        let req = crate::tenants::CreateTenant { slug: slug.clone(), ..Default::default() };
        crate::tenants::create(&app.catalog, &app.settings, &req).await.map_err(err)?;
    }
    ready_times(&app.catalog, &slugs, Duration::from_secs(1800)).await?;
    let mut migrations = app.migrations.clone();
    let mut rows = Vec::new();
    for concurrency in [1, 4, 8] {
        let version = migrations.latest_version() + 1;
        migrations = migrations
            .with(
                &format!("V{version}__bench_c{concurrency}"),
                &format!("CREATE TABLE bench_c{concurrency} (id bigint PRIMARY KEY, note text)"),
            )
            .map_err(err)?;
        let upgrader = crate::upgrade::Upgrader {
            catalog: &app.catalog,
            keyring: &app.keyring,
            settings: &app.settings,
            actor: &app.instance,
            migrations: &migrations,
        };
        let selection = crate::upgrade::Selection { slugs: Vec::new(), all: true, server: None };
        let options = crate::upgrade::Options { concurrency, canary: 0, max_failures: None, dry_run: false };
        let started = Instant::now();
        let summary = upgrader.run(&selection, &options, &|_| {}).await.map_err(err)?;
        let seconds = started.elapsed().as_secs_f64();
        if !summary.succeeded() {
            return Err(BenchError(format!(
                "upgrade at concurrency {concurrency} did not succeed: {:?}",
                summary.failures()
            )));
        }
        rows.push((concurrency, seconds));
    }
    Ok(rows)
}

/// Parses a connection URL built by tenantd itself.
fn parse_url(url: &str) -> Result<tokio_postgres::Config, BenchError> {
    url.parse().map_err(|_| BenchError("bad connection URL".into()))
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
