//! `tenantd bench spares`: new tenants while warm spares last — time-to-READY (catalog
//! clock), the `POST /v1/tenants?wait` round trip, and a burst's rate.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use super::{BenchError, Scratch, err, pick_server, ready_times, stats};
use crate::catalog::Catalog;
use crate::core::Core;
use crate::startup::Daemon;

/// What one run measured.
struct Figures {
    ready: Vec<f64>,
    http: Vec<f64>,
    from_spares: usize,
    burst: usize,
    burst_rate: f64,
    burst_from_spares: usize,
    fill_rate: f64,
    spare_bytes: i64,
}

/// `tenantd bench spares`: `tenants` one at a time over HTTP, then `burst` at once, each
/// while `spares` spares are kept on the server.
pub async fn spares(
    core: &Core,
    server: Option<&str>,
    tenants: usize,
    burst: usize,
    spares: usize,
) -> Result<(), BenchError> {
    let servers = core.catalog.servers().await.map_err(err)?;
    let server = pick_server(&servers, server)?;
    println!(
        "bench spares: {tenants} tenants one at a time, then a burst of {burst}, with {spares} spares kept on \
         server {} ({}:{}), worker concurrency {}",
        server.name, server.host, server.port, core.settings.workers.concurrency
    );
    let scratch = Scratch::create(server, &core.keyring).await?;
    let mut settings = scratch.daemon_settings(&core.settings)?;
    settings.spares.per_server = spares;
    let result = run(&settings, &server.name, tenants, burst, spares).await;
    // Whatever spares are left go before the scratch catalog (tenants go with it).
    let dropped = async {
        let core = Core::open(settings.clone(), "bench".into()).await.map_err(err)?;
        crate::spares::drop_all(&core, &server.name).await.map_err(err)
    }
    .await;
    let removed = scratch.remove().await;
    let figures = result?;
    dropped?;
    removed?;
    figures.print(tenants);
    Ok(())
}

async fn run(
    settings: &crate::config::Settings,
    server: &str,
    tenants: usize,
    burst: usize,
    spares: usize,
) -> Result<Figures, BenchError> {
    let daemon = Daemon::start(settings.clone()).await.map_err(err)?;
    let figures = measure(&daemon, server, tenants, burst, spares).await;
    daemon.stop().await;
    figures
}

/// Waits until `server` holds `want` usable spares; returns spares made per second.
async fn filled(catalog: &Catalog, server: &str, version: i32, want: usize) -> Result<f64, BenchError> {
    let started = Instant::now();
    let usable = |counts: &[crate::catalog::spares::SpareCounts]| {
        counts.iter().find(|c| c.server == server).map_or(0, |c| c.usable) as usize
    };
    let before = usable(&catalog.spare_counts(version).await.map_err(err)?);
    loop {
        let now = usable(&catalog.spare_counts(version).await.map_err(err)?);
        if now >= want {
            return Ok((now - before.min(now)) as f64 / started.elapsed().as_secs_f64().max(1e-3));
        }
        if started.elapsed() > Duration::from_secs(900) {
            return Err(BenchError(format!("only {now} of {want} spares ready after 15 minutes")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the server has written out what the refill just made (`CHECKPOINT`): spares
/// are made long before the sign-ups that take them, so the burst should not pay for the
/// write-back of hundreds of new databases. Without the privilege (`pg_checkpoint`, a
/// superuser) it says so, and the burst runs with that write-back going on.
async fn settle(core: &Core, server: &str) -> Result<(), BenchError> {
    let client = admin_client(core, server).await?;
    if let Err(e) = client.batch_execute("CHECKPOINT").await {
        println!(
            "note: CHECKPOINT refused ({}): the refill's writes may still be flushing during the burst",
            crate::pg::describe(&e)
        );
    }
    Ok(())
}

/// A connection to the server's maintenance database as its admin.
async fn admin_client(core: &Core, server: &str) -> Result<tokio_postgres::Client, BenchError> {
    let record = core.catalog.server(server).await.map_err(err)?;
    let admin = crate::admin::AdminTarget::from_record(&record, &core.keyring).map_err(err)?;
    admin.connect(None).await.map_err(err)
}

/// The size of one of the server's spares (`pg_database_size`).
async fn spare_size(core: &Core, server: &str) -> Result<i64, BenchError> {
    let spares = core.catalog.spares_of(server).await.map_err(err)?;
    let spare = spares.first().ok_or_else(|| BenchError("no spare".into()))?;
    let client = admin_client(core, server).await?;
    let row = client
        .query_one("SELECT pg_catalog.pg_database_size($1::pg_catalog.text)", &[&spare.database_name])
        .await
        .map_err(super::pg)?;
    Ok(row.get(0))
}

/// How many of `slugs` were made from a spare (their `step.spare.taken` event).
async fn from_spares(catalog: &Catalog, slugs: &[String]) -> Result<usize, BenchError> {
    let mut n = 0;
    for slug in slugs {
        let tenant = catalog.tenant(slug).await.map_err(err)?;
        let events = catalog.events(tenant.id, 0, 100).await.map_err(err)?;
        n += usize::from(events.iter().any(|e| e.kind == "step.spare.taken"));
    }
    Ok(n)
}

async fn measure(
    daemon: &Daemon,
    server: &str,
    tenants: usize,
    burst: usize,
    spares: usize,
) -> Result<Figures, BenchError> {
    let app = daemon.app();
    let catalog = &app.catalog;
    crate::servers::check_all(catalog, &app.keyring).await.map_err(err)?;
    let version = app.core.migrations.latest_version();
    let fill_rate = filled(catalog, server, version, spares).await?;
    let spare_bytes = spare_size(&app.core, server).await?;
    let token = app.settings.admin_token.as_ref().map(|t| t.expose_secret().to_owned()).unwrap_or_default();
    let url = format!("http://{}/v1/tenants?wait=30", daemon.local_addr());
    let http = reqwest::Client::new();
    let (mut ready, mut round_trips) = (Vec::with_capacity(tenants), Vec::with_capacity(tenants));
    let slugs: Vec<String> = (0..tenants).map(|i| format!("spare-{i:04}")).collect();
    for slug in &slugs {
        // Each tenant finds a spare: wait for the refill between them.
        filled(catalog, server, version, 1).await?;
        let started = Instant::now();
        let response = http
            .post(&url)
            .bearer_auth(&token)
            .json(&serde_json::json!({ "slug": slug }))
            .send()
            .await
            .map_err(err)?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.map_err(err)?;
        round_trips.push(started.elapsed().as_secs_f64() * 1000.0);
        if status.as_u16() != 201 || body["status"] != "READY" {
            return Err(BenchError(format!("POST /v1/tenants for {slug}: HTTP {status}: {body}")));
        }
        ready.extend(ready_times(app, std::slice::from_ref(slug), Duration::from_secs(30)).await?);
    }
    let from_spares_seq = from_spares(catalog, &slugs).await?;
    filled(catalog, server, version, burst.min(spares)).await?;
    settle(&app.core, server).await?;
    let burst_slugs: Vec<String> = (0..burst).map(|i| format!("burst-{i:04}")).collect();
    println!("burst: {burst} tenants asked for at once");
    let (_, burst_rate) = super::create_ready(app, &burst_slugs, Duration::from_secs(600)).await?;
    Ok(Figures {
        ready,
        http: round_trips,
        from_spares: from_spares_seq,
        burst,
        burst_rate,
        burst_from_spares: from_spares(catalog, &burst_slugs).await?,
        fill_rate,
        spare_bytes,
    })
}

impl Figures {
    fn print(&self, tenants: usize) {
        let (r, h) = (stats(&self.ready), stats(&self.http));
        println!();
        println!("{:<56} {:>9} {:>9}", "", "p50 ms", "p95 ms");
        println!("{:<56} {:>9.1} {:>9.1}", "time-to-READY with a spare (catalog clock)", r.p50, r.p95);
        println!("{:<56} {:>9.1} {:>9.1}", "POST /v1/tenants?wait round trip", h.p50, h.p95);
        println!();
        println!(
            "made from a spare: {} of {tenants} one at a time, {} of {} in the burst",
            self.from_spares, self.burst_from_spares, self.burst
        );
        println!(
            "burst of {} at once: {:.1} tenants/s (first created to last READY, catalog clock)",
            self.burst, self.burst_rate
        );
        println!(
            "refill: {:.1} spares/s while idle; one spare takes {:.1} MB on disk",
            self.fill_rate,
            self.spare_bytes as f64 / 1e6
        );
        println!();
        println!("time-to-READY p50 {:.1} ms (target: <= 50 ms)", r.p50);
        println!("round trip p50 {:.1} ms (target: <= 60 ms)", h.p50);
        println!("burst {:.1} tenants/s (target: >= 200 tenants/s)", self.burst_rate);
    }
}
