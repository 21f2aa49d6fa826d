//! `tenantd bench migrate`: a fleet upgrade at several concurrencies.

use std::time::{Duration, Instant};

use super::{BenchError, Scratch, err, pick_server, ready_times};
use crate::core::Core;
use crate::startup::Daemon;

/// `tenantd bench migrate`: time to upgrade `n` tenants with a one-table migration at
/// concurrency 1, 4 and 8 (each level ships one more migration, as a new build would), and
/// the time 1,000 tenants would take at the measured rate.
pub async fn migrate(core: &Core, server: Option<&str>, n: usize) -> Result<(), BenchError> {
    let servers = core.catalog.servers().await.map_err(err)?;
    let server = pick_server(&servers, server)?;
    println!("bench migrate: {n} tenants on server {} ({}:{})", server.name, server.host, server.port);
    let scratch = Scratch::create(server, &core.keyring).await?;
    let bench_settings = scratch.daemon_settings(&core.settings)?;
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
        let upgrader =
            crate::upgrade::Upgrader::new(&app.core, &app.core.instance).with_migrations(&migrations);
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
