//! `tenantd bench provision`: time-to-READY next to the raw floor.

use std::time::Duration;

use super::{
    BenchError, Scratch, drop_floor, err, floor_one, floor_parallel, pick_server, ready_times, stats,
};
use crate::admin::AdminTarget;
use crate::catalog::Catalog;
use crate::config::Settings;
use crate::core::Core;
use crate::startup::Daemon;

/// `tenantd bench provision`: prints floor and tenantd figures side by side.
pub async fn provision(core: &Core, server: Option<&str>, n: usize) -> Result<(), BenchError> {
    let (settings, keyring) = (&core.settings, &core.keyring);
    let servers = core.catalog.servers().await.map_err(err)?;
    let server = pick_server(&servers, server)?;
    let concurrency = settings.workers.concurrency;
    println!(
        "bench provision: {n} tenants on server {} ({}:{}), worker concurrency {concurrency}",
        server.name, server.host, server.port
    );
    let scratch = Scratch::create(server, keyring).await?;
    let result = run_provision(settings, &scratch, n, concurrency).await;
    let removed = scratch.remove().await;
    result.and(removed)
}

async fn run_provision(
    settings: &Settings,
    scratch: &Scratch,
    n: usize,
    concurrency: usize,
) -> Result<(), BenchError> {
    let bench_settings = scratch.daemon_settings(settings)?;
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
        println!("tenantd p50 / floor p50 = {:.2}x (target: <= 1.2x)", t.p50 / f.p50);
        println!(
            "burst: {n} asked for at once, READY at {:.1} tenants/s sustained, no failure (target: >= 30/s for 100)",
            self.batch_rate
        );
        println!();
        println!("where the time goes (one at a time, median ms before each event):");
        for (kind, ms) in &self.steps {
            println!("  {kind:<28} {ms:>8.1}");
        }
    }
}

/// Median time before each event kind, from creation on, over `slugs`.
pub(super) async fn step_breakdown(
    catalog: &Catalog,
    slugs: &[String],
) -> Result<Vec<(String, f64)>, BenchError> {
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
        sequential.extend(ready_times(app, &[slug], Duration::from_secs(120)).await?);
    }
    let seq_slugs: Vec<String> = (0..n).map(|i| format!("seq-{i:04}")).collect();
    let steps = step_breakdown(&app.catalog, &seq_slugs).await?;
    let floor_rate = floor_parallel(admin, tag, n, concurrency).await?;
    let slugs: Vec<String> = (0..n).map(|i| format!("par-{i:04}")).collect();
    let (batch, batch_rate) = super::create_ready(app, &slugs, Duration::from_secs(600)).await?;
    Ok(Figures { steps, floor, sequential, floor_rate, batch, batch_rate })
}
