//! `tenantd bench sql`: the SQL endpoint next to a direct connection.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tokio_postgres::Client;

use super::cpu::CpuTimes;
use super::{BenchError, Scratch, err, parse_url, pg, pick_server, ready_times, stats};
use crate::core::Core;
use crate::startup::Daemon;

/// `tenantd bench sql`: `SELECT 1` through `POST /v1/tenants/{slug}/sql` next to the same
/// query on a direct tokio-postgres connection as the tenant role, one run, same server.
/// Both sides prepare and execute per query (what the endpoint does), one at a time for
/// latency, then `concurrency` clients for throughput.
pub async fn sql(core: &Core, server: Option<&str>, n: usize, concurrency: usize) -> Result<(), BenchError> {
    let servers = core.catalog.servers().await.map_err(err)?;
    let server = pick_server(&servers, server)?;
    println!(
        "bench sql: {n} queries on server {} ({}:{}), then {concurrency} clients",
        server.name, server.host, server.port
    );
    let scratch = Scratch::create(server, &core.keyring).await?;
    let mut bench_settings = scratch.daemon_settings(&core.settings)?;
    bench_settings.pools.per_tenant = bench_settings.pools.per_tenant.max(concurrency);
    bench_settings.pools.per_server = bench_settings.pools.per_server.max(concurrency);
    // The daemon runs on threads of its own, so its CPU time can be told from the clients'.
    let runtime = super::cpu::daemon_runtime()?;
    let result = async {
        let daemon = runtime.spawn(Daemon::start(bench_settings)).await.map_err(err)?.map_err(err)?;
        let measured = measure_sql(&daemon, n, concurrency).await;
        runtime.spawn(daemon.stop()).await.map_err(err)?;
        measured
    }
    .await;
    runtime.shutdown_background();
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
    /// CPU time of the concurrent HTTP run, and how many queries it made.
    http_cpu: CpuTimes,
    /// CPU time of the concurrent direct run.
    direct_cpu: CpuTimes,
    /// CPU time of the tenant role's backends in each concurrent run (HTTP, direct), when the
    /// server runs on this machine.
    postgres_cpu: Option<(Duration, Duration)>,
    queries: usize,
}

/// Microseconds of `spent` per query.
fn per_query(spent: std::time::Duration, queries: usize) -> f64 {
    spent.as_secs_f64() * 1e6 / queries as f64
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
        println!(
            "tenantd HTTP / direct, {concurrency} clients = {:.2}x the queries/s (target: >= 0.8x)",
            self.http_rate / self.direct_rate
        );
        let q = self.queries;
        println!();
        println!("CPU time per query, {concurrency} clients (utime+stime from /proc, 10 ms ticks):");
        println!("  {:<40} {:>8.1} us", "tenantd daemon (HTTP endpoint)", per_query(self.http_cpu.daemon, q));
        println!(
            "  {:<40} {:>8.1} us",
            "HTTP client (reqwest, the bench)",
            per_query(self.http_cpu.clients, q)
        );
        println!(
            "  {:<40} {:>8.1} us",
            "direct tokio-postgres client",
            per_query(self.direct_cpu.clients, q)
        );
        match self.postgres_cpu {
            Some((http, direct)) => {
                println!("  {:<40} {:>8.1} us", "PostgreSQL backends, HTTP run", per_query(http, q));
                println!("  {:<40} {:>8.1} us", "PostgreSQL backends, direct run", per_query(direct, q));
            }
            None => println!("  (PostgreSQL's backends are on another machine: their CPU is not counted)"),
        }
    }
}

async fn measure_sql(daemon: &Daemon, n: usize, concurrency: usize) -> Result<SqlFigures, BenchError> {
    let app = daemon.app();
    crate::servers::check_all(&app.catalog, &app.keyring).await.map_err(err)?;
    let req = crate::tenants::CreateTenant { slug: "bench-sql".into(), ..Default::default() };
    let created = crate::tenants::create(&app.catalog, &app.settings, &req).await.map_err(err)?;
    let token = created.token.ok_or_else(|| BenchError("no token".into()))?;
    ready_times(app, &["bench-sql".to_owned()], Duration::from_secs(120)).await?;
    let tenant = app.catalog.tenant("bench-sql").await.map_err(err)?;
    let target =
        crate::target::TenantTarget::resolve(&app.catalog, &app.keyring, &tenant).await.map_err(err)?;
    let (details, tls) = (target.direct_details(), target.server.tls.clone());
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
    let direct = crate::pg::connect(&parse_url(&details.url)?, &tls, "bench").await.map_err(err)?;
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
    let backends_before = backend_cpu(&direct).await?;
    let cpu_before = CpuTimes::now()?;
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
    let http_cpu = CpuTimes::now()?.since(&cpu_before);
    let backends_http = backend_cpu(&direct).await?;
    let mut connections = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        connections.push(crate::pg::connect(&parse_url(&details.url)?, &tls, "bench").await.map_err(err)?);
    }
    let backends_direct_before = backend_cpu(&direct).await?;
    let cpu_before = CpuTimes::now()?;
    let started = Instant::now();
    futures::future::try_join_all(connections.iter().map(|c| async move {
        for _ in 0..per_client {
            direct_select(c).await?;
        }
        Ok::<(), BenchError>(())
    }))
    .await?;
    let direct_rate = (per_client * concurrency) as f64 / started.elapsed().as_secs_f64();
    let direct_cpu = CpuTimes::now()?.since(&cpu_before);
    let backends_after = backend_cpu(&direct).await?;
    let postgres_cpu = match (backends_before, backends_http, backends_direct_before, backends_after) {
        (Some(a), Some(b), Some(c), Some(d)) => Some((b.saturating_sub(a), d.saturating_sub(c))),
        _ => None,
    };
    Ok(SqlFigures {
        http: http_times,
        direct: direct_times,
        http_rate,
        direct_rate,
        http_cpu,
        direct_cpu,
        postgres_cpu,
        queries: per_client * concurrency,
    })
}

/// CPU time so far of every backend of the tenant role (the daemon's pool and the direct
/// connections), when the server runs on this machine. Backends started during a run count
/// from their start; none ends during one.
async fn backend_cpu(client: &Client) -> Result<Option<Duration>, BenchError> {
    let rows = client
        .query("SELECT pid FROM pg_catalog.pg_stat_activity WHERE usename = current_user", &[])
        .await
        .map_err(pg)?;
    let pids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    Ok(super::cpu::postgres_cpu(&pids))
}

/// One `SELECT 1` on a direct connection; returns ms.
async fn direct_select(client: &Client) -> Result<f64, BenchError> {
    let started = Instant::now();
    client.query("SELECT 1", &[]).await.map_err(pg)?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}
