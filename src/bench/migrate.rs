//! `tenantd bench migrate`: a fleet upgrade next to its raw floor.
//!
//! N tenants are provisioned in a scratch catalog. Then, at the same concurrency and on the
//! same databases:
//! - the **floor**: a one-table migration applied by plain SQL — connect as the tenant role,
//!   `BEGIN; CREATE TABLE ...; COMMIT` — the least any tool must do per database;
//! - **tenantd**: `migrate --all` with the same kind of migration (a new build's `V<n>`), with
//!   everything an upgrade run does: lease, history check, advisory lock, refinery's history,
//!   catalog records.
//!
//! The floor runs once before and once after tenantd's run and its figure is the mean of the
//! two. Before either, every database gets one connection: the first connection to a new
//! database writes its relation cache file (`pg_internal.init`), which no run should pay
//! for. The first floor run can still be the slower one, while the server writes out the
//! databases just provisioned; the mean takes one run from each side of tenantd's.

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{BenchError, Scratch, err, pg, pick_server};
use crate::core::Core;
use crate::startup::Daemon;

/// Targets of issue 15, printed next to the figures.
const TARGET_SECONDS_PER_1000: f64 = 10.0;
const TARGET_RATIO: f64 = 1.2;

/// `tenantd bench migrate`: time to upgrade `n` tenants with a one-table migration at
/// `concurrency`, next to the plain-SQL floor at the same concurrency.
pub async fn migrate(
    core: &Core,
    server: Option<&str>,
    n: usize,
    concurrency: usize,
) -> Result<(), BenchError> {
    let servers = core.catalog.servers().await.map_err(err)?;
    let server = pick_server(&servers, server)?;
    println!(
        "bench migrate: {n} tenants on server {} ({}:{}), concurrency {concurrency}",
        server.name, server.host, server.port
    );
    let scratch = Scratch::create(server, &core.keyring).await?;
    let bench_settings = scratch.daemon_settings(&core.settings)?;
    let result = async {
        let daemon = Daemon::start(bench_settings).await.map_err(err)?;
        let measured = measure_migrate(&daemon, n, concurrency).await;
        daemon.stop().await;
        measured
    }
    .await;
    let removed = scratch.remove().await;
    let figures = result?;
    removed?;
    figures.print(n, concurrency);
    Ok(())
}

struct MigrateFigures {
    floor_before: f64,
    floor_after: f64,
    tenantd: f64,
}

impl MigrateFigures {
    fn print(&self, n: usize, concurrency: usize) {
        let floor = f64::midpoint(self.floor_before, self.floor_after);
        let row = |label: &str, seconds: f64| {
            let rate = n as f64 / seconds;
            println!("{label:<52} {seconds:>9.2} {rate:>10.1} {:>13.1} s", 1000.0 / rate);
        };
        println!();
        println!("{:<52} {:>9} {:>10} {:>15}", "", "seconds", "tenants/s", "1,000 (est.)");
        row(&format!("floor: plain SQL, {concurrency} at a time (before)"), self.floor_before);
        row(&format!("floor: plain SQL, {concurrency} at a time (after)"), self.floor_after);
        row(&format!("tenantd: migrate --all, concurrency {concurrency}"), self.tenantd);
        println!();
        let per_1000 = self.tenantd * 1000.0 / n as f64;
        println!(
            "tenantd / floor (mean of both floor runs) = {:.2}x (target: <= {TARGET_RATIO}x)",
            self.tenantd / floor
        );
        println!(
            "1,000 tenants: {per_1000:.1} s{} (target: <= {TARGET_SECONDS_PER_1000} s)",
            if n == 1000 { "" } else { " at the measured rate" }
        );
    }
}

async fn measure_migrate(
    daemon: &Daemon,
    n: usize,
    concurrency: usize,
) -> Result<MigrateFigures, BenchError> {
    let app = daemon.app();
    crate::servers::check_all(&app.catalog, &app.keyring).await.map_err(err)?;
    println!("provisioning {n} tenants first...");
    let slugs: Vec<String> = (0..n).map(|i| format!("mig-{i:04}")).collect();
    super::create_ready(app, &slugs, Duration::from_secs(3600)).await?;
    // Where each tenant database is and how to log in as its role, resolved before timing.
    let mut targets = Vec::with_capacity(n);
    for slug in &slugs {
        let tenant = app.catalog.tenant(slug).await.map_err(err)?;
        let target =
            crate::target::TenantTarget::resolve(&app.catalog, &app.keyring, &tenant).await.map_err(err)?;
        targets.push((target.migration_config(None, "tenantd-bench"), target.server.tls.clone()));
    }
    println!("warming up (one connection to each database)...");
    floor(&targets, concurrency, "SELECT 1").await?;
    println!("floor (before)...");
    let floor_before = floor(&targets, concurrency, &create_table("bench_floor_before")).await?;
    let version = app.migrations.latest_version() + 1;
    let migrations = app
        .migrations
        .with(
            &format!("V{version}__bench_upgrade"),
            "CREATE TABLE bench_upgrade (id bigint PRIMARY KEY, note text)",
        )
        .map_err(err)?;
    let upgrader = crate::upgrade::Upgrader::new(&app.core, &app.core.instance).with_migrations(&migrations);
    let selection = crate::upgrade::Selection { slugs: Vec::new(), all: true, server: None };
    let options = crate::upgrade::Options { concurrency, canary: 0, max_failures: None, dry_run: false };
    println!("tenantd: migrate --all...");
    let started = Instant::now();
    let summary = upgrader.run(&selection, &options, &|_| {}).await.map_err(err)?;
    let tenantd = started.elapsed().as_secs_f64();
    if !summary.succeeded() {
        return Err(BenchError(format!("the upgrade did not succeed: {:?}", summary.failures())));
    }
    println!("floor (after)...");
    let floor_after = floor(&targets, concurrency, &create_table("bench_floor_after")).await?;
    Ok(MigrateFigures { floor_before, floor_after, tenantd })
}

/// The floor's migration: one table in one transaction.
fn create_table(table: &str) -> String {
    format!("BEGIN; CREATE TABLE {table} (id bigint PRIMARY KEY, note text); COMMIT")
}

/// The floor: `sql` run in every database as its tenant role, one connection per database,
/// `concurrency` at a time. Returns seconds.
async fn floor(
    targets: &[(tokio_postgres::Config, crate::pgtls::PgTls)],
    concurrency: usize,
    sql: &str,
) -> Result<f64, BenchError> {
    let started = Instant::now();
    let mut runs = futures::stream::iter(targets)
        .map(|(config, tls)| async move {
            let client = crate::pg::connect(config, tls, "bench floor").await.map_err(err)?;
            client.batch_execute(sql).await.map_err(pg)
        })
        .buffer_unordered(concurrency);
    while let Some(done) = runs.next().await {
        done?;
    }
    Ok(started.elapsed().as_secs_f64())
}
