//! `tenantd bench pools`: the daemon's memory with many tenant pools opened, then idle.
//!
//! 10,000 real databases do not fit on a development machine, so the pools point at a few:
//! a handful of real tenants are provisioned in a scratch catalog, and each of the N pools is
//! opened for a copy of one of their catalog records under its own slug (pools are keyed by
//! slug), through [`crate::pools::Pools::get`] — the call the SQL endpoint makes. Every pool
//! really connects once (its connection is made, checked and reset); the server budget
//! (`pools.per_server`, set to 16 here) then closes idle connections of other pools to make
//! room, so at the end all but a few pools are open, idle and without connections — what a
//! daemon holds for tenants that were used a while ago and not since. RSS is read from
//! `/proc/self/status` before and after; the benchmark's own data is dropped before reading.

use std::time::{Duration, Instant};

use super::{BenchError, Scratch, err, pick_server};
use crate::core::Core;
use crate::startup::Daemon;

/// Issue 15's target: resident memory per idle pool.
const TARGET_KIB_PER_POOL: f64 = 50.0;
/// Real tenants the pools point at.
const REAL_TENANTS: usize = 4;

/// `tenantd bench pools`: RSS growth per idle tenant pool, for `n` pools.
pub async fn pools(core: &Core, server: Option<&str>, n: usize) -> Result<(), BenchError> {
    let servers = core.catalog.servers().await.map_err(err)?;
    let server = pick_server(&servers, server)?;
    println!(
        "bench pools: {n} tenant pools on server {} ({}:{}), over {REAL_TENANTS} real tenant databases",
        server.name, server.host, server.port
    );
    let scratch = Scratch::create(server, &core.keyring).await?;
    let mut bench_settings = scratch.daemon_settings(&core.settings)?;
    // Below the tenant role's CONNECTION LIMIT, and nothing closes for idleness meanwhile.
    bench_settings.pools.per_server = 16;
    bench_settings.pools.idle_timeout = Duration::from_secs(3600);
    let result = async {
        let daemon = Daemon::start(bench_settings).await.map_err(err)?;
        let measured = measure_pools(&daemon, n).await;
        daemon.stop().await;
        measured
    }
    .await;
    let removed = scratch.remove().await;
    let figures = result?;
    removed?;
    figures.print(n);
    Ok(())
}

struct PoolFigures {
    rss_before: u64,
    rss_after: u64,
    open_pools: usize,
    connections: usize,
    seconds: f64,
}

impl PoolFigures {
    fn print(&self, n: usize) {
        let kib = |bytes: u64| bytes as f64 / 1024.0;
        let per_pool = (self.rss_after.saturating_sub(self.rss_before)) as f64 / 1024.0 / n as f64;
        println!();
        println!("pools opened (each connected once)     {n:>10} in {:.1} s", self.seconds);
        println!("pools open at the end, idle            {:>10}", self.open_pools);
        println!("connections still open (budget 16)     {:>10}", self.connections);
        println!("RSS before                             {:>10.0} KiB", kib(self.rss_before));
        println!("RSS with the pools open and idle       {:>10.0} KiB", kib(self.rss_after));
        println!();
        println!("RSS per idle pool = {per_pool:.1} KiB (target: <= {TARGET_KIB_PER_POOL} KiB)");
    }
}

async fn measure_pools(daemon: &Daemon, n: usize) -> Result<PoolFigures, BenchError> {
    let app = daemon.app();
    crate::servers::check_all(&app.catalog, &app.keyring).await.map_err(err)?;
    let slugs: Vec<String> = (0..REAL_TENANTS).map(|i| format!("pools-{i}")).collect();
    super::create_ready(app, &slugs, Duration::from_secs(300)).await?;
    let mut real = Vec::with_capacity(REAL_TENANTS);
    for slug in &slugs {
        real.push(app.catalog.tenant(slug).await.map_err(err)?);
    }
    let server_name =
        real[0].server.clone().ok_or_else(|| BenchError("READY tenant without a server".into()))?;
    let server = app.catalog.server(&server_name).await.map_err(err)?;
    // Warm: the real tenants' own pools, so one-time allocations are in the "before" figure.
    for tenant in &real {
        drop(app.pools.get(tenant, &server, &app.keyring).await.map_err(err)?);
    }
    settle().await;
    let rss_before = rss()?;
    let started = Instant::now();
    for i in 0..n {
        let mut copy = real[i % REAL_TENANTS].clone();
        copy.slug = format!("pool-{i:05}");
        let lent = app.pools.get(&copy, &server, &app.keyring).await.map_err(err)?;
        lent.simple_query("SELECT 1").await.map_err(super::pg)?;
        drop(lent);
        if (i + 1) % 1000 == 0 {
            println!("  {} pools opened ({:.1} s)", i + 1, started.elapsed().as_secs_f64());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(real);
    settle().await;
    let rss_after = rss()?;
    let open_pools = (0..n).filter(|i| app.pools.tenant_status(&format!("pool-{i:05}")).is_some()).count();
    Ok(PoolFigures {
        rss_before,
        rss_after,
        open_pools,
        connections: app.pools.server_connections(&server_name),
        seconds,
    })
}

/// Lets the resets of returned connections (background tasks of a few milliseconds) finish
/// before memory is read.
async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Resident set size of this process, from `/proc/self/status` (bytes).
fn rss() -> Result<u64, BenchError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(err)?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| BenchError("no VmRSS in /proc/self/status".into()))
}
