//! `tenantd bench catalog`: the hot paths with an empty catalog and with N tenants in it.
//!
//! In a scratch catalog on the server, with a real daemon, it measures the same things twice
//! — first with the catalog empty, then after N READY tenants were added by plain SQL (rows
//! only: no databases behind them) — and prints both with their ratio:
//! - `GET /v1/tenants?limit=100` over HTTP: the first page, and (full) a middle and the last;
//! - every hot statement of [`crate::catalog::plans`] (worker polls, placement's read, token
//!   and slug lookups, listings): median time over repeated runs, and the buffers one run
//!   touches (from `EXPLAIN (ANALYZE, BUFFERS)`: a count that no load on the machine changes);
//! - time-to-READY of new tenants made one at a time, and the placement step within it.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tokio_postgres::Client;

use super::{BenchError, Scratch, err, parse_url, pg, pick_server, stats};
use crate::catalog::Catalog;
use crate::catalog::plans::{HotStatement, hot_statements};
use crate::core::Core;
use crate::startup::Daemon;

/// Runs of each statement per measurement.
const RUNS: usize = 200;
/// Tenants made one at a time per measurement of time-to-READY.
const NEW_TENANTS: usize = 10;
/// HTTP requests per listed page.
const PAGE_REQUESTS: usize = 50;

/// `tenantd bench catalog --tenants N`.
pub async fn catalog(core: &Core, server: Option<&str>, tenants: usize) -> Result<(), BenchError> {
    let servers = core.catalog.servers().await.map_err(err)?;
    let server = pick_server(&servers, server)?;
    println!(
        "bench catalog: empty, then {tenants} READY tenants, in a scratch catalog on server {} ({}:{})",
        server.name, server.host, server.port
    );
    let scratch = Scratch::create(server, &core.keyring).await?;
    let settings = scratch.daemon_settings(&core.settings)?;
    let result = async {
        let daemon = Daemon::start(settings).await.map_err(err)?;
        let measured = measure(&daemon, &scratch, &server.name, tenants).await;
        daemon.stop().await;
        measured
    }
    .await;
    let cleared = clear_fill(&scratch).await;
    let removed = scratch.remove().await;
    let (empty, full) = result?;
    cleared?;
    removed?;
    print(&empty, &full, tenants);
    Ok(())
}

/// One measurement of the catalog.
struct Phase {
    /// (label, p50 ms) of listed pages.
    pages: Vec<(String, f64)>,
    /// Per hot statement: p50 ms and buffers touched.
    statements: Vec<(&'static str, f64, i64)>,
    ready_p50: f64,
    place_p50: f64,
}

async fn measure(
    daemon: &Daemon,
    scratch: &Scratch,
    server: &str,
    tenants: usize,
) -> Result<(Phase, Phase), BenchError> {
    let app = daemon.app();
    crate::servers::check_all(&app.catalog, &app.keyring).await.map_err(err)?;
    let direct =
        crate::pg::connect(&parse_url(scratch.catalog_url.expose_secret())?, &scratch.admin.tls, "bench")
            .await
            .map_err(err)?;
    let empty = phase(daemon, &direct, "empty", &[]).await?;
    let started = Instant::now();
    fill(&direct, server, tenants, &app.settings).await?;
    println!("added {tenants} tenants in {:.1} s", started.elapsed().as_secs_f64());
    let slugs: Vec<String> = direct
        .query(
            "SELECT slug FROM tenantd.tenants WHERE status <> 'DELETED' ORDER BY slug \
             OFFSET $1 LIMIT 1",
            &[&((tenants / 2) as i64)],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let middle = slugs.first().cloned().unwrap_or_default();
    let last: String = direct
        .query_one(
            "SELECT slug FROM tenantd.tenants WHERE status <> 'DELETED' ORDER BY slug DESC OFFSET 50 LIMIT 1",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    let full = phase(daemon, &direct, "full", &[("middle page", middle), ("last page", last)]).await?;
    Ok((empty, full))
}

/// Adds `n` READY tenants on `server` by plain SQL, in random slug order (as creation order
/// would leave them), with their limits marked applied so no task acts on them.
async fn fill(
    client: &Client,
    server: &str,
    n: usize,
    settings: &crate::config::Settings,
) -> Result<(), BenchError> {
    let applied = crate::limits::TenantLimits::defaults(&settings.limits).to_json();
    // Without the per-row NOTIFY to the daemons: 100,000 notifications at once are not what
    // months of sign-ups, one at a time, would have sent (the tallies' triggers stay on).
    client
        .batch_execute("ALTER TABLE tenantd.tenants DISABLE TRIGGER tenants_notify_insert")
        .await
        .map_err(pg)?;
    let inserted = client
        .execute(
            "INSERT INTO tenantd.tenants (slug, status, server, database_name, role_name, token_hash, \
               schema_version, ready_at, labels, limits_applied) \
             SELECT 'fill-' || lpad(i::text, 7, '0'), 'READY', $1, 'bench_fill_db_' || i, 'bench_fill_role_' || i, \
               md5(i::text), 1, now(), '{\"bench_fill\": true}', $3 \
             FROM generate_series(1, $2::int4) i ORDER BY md5(i::text)",
            &[&server, &(n as i32), &applied],
        )
        .await;
    client
        .batch_execute("ALTER TABLE tenantd.tenants ENABLE TRIGGER tenants_notify_insert")
        .await
        .map_err(pg)?;
    inserted.map_err(pg)?;
    // Vacuumed and analyzed as autovacuum would soon after such an insert, so the second
    // measurement does not share the machine with it.
    client.batch_execute("VACUUM (ANALYZE) tenantd.tenants").await.map_err(pg)?;
    client.batch_execute("VACUUM (ANALYZE) tenantd.tenant_tallies").await.map_err(pg)
}

/// Removes the added rows (they have no databases for [`Scratch::remove`] to look for).
async fn clear_fill(scratch: &Scratch) -> Result<(), BenchError> {
    let catalog = Catalog::new(&scratch.catalog_url, 1).map_err(err)?;
    catalog
        .execute("DELETE FROM tenantd.tenants WHERE labels @> '{\"bench_fill\": true}'", &[])
        .await
        .map_err(err)?;
    Ok(())
}

async fn phase(
    daemon: &Daemon,
    direct: &Client,
    tag: &str,
    pages: &[(&str, String)],
) -> Result<Phase, BenchError> {
    let app = daemon.app();
    let http = reqwest::Client::new();
    let token = app.settings.admin_token.as_ref().ok_or_else(|| BenchError("no admin token".into()))?;
    let mut listed = Vec::new();
    let mut asked = vec![("first page", String::new())];
    asked.extend(pages.iter().cloned());
    for (label, after) in &asked {
        let mut url = format!("http://{}/v1/tenants?limit=100", daemon.local_addr());
        if !after.is_empty() {
            url.push_str(&format!("&after={after}"));
        }
        let mut times = Vec::with_capacity(PAGE_REQUESTS);
        for _ in 0..PAGE_REQUESTS + 5 {
            let started = Instant::now();
            let response = http.get(&url).bearer_auth(token.expose_secret()).send().await.map_err(err)?;
            if !response.status().is_success() {
                return Err(BenchError(format!("GET {url}: HTTP {}", response.status())));
            }
            response.bytes().await.map_err(err)?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        listed.push(((*label).to_owned(), stats(&times[5..]).p50));
    }
    let mut statements = Vec::new();
    for (i, hot) in hot_statements().iter().enumerate() {
        statements.push(statement(direct, &format!("{tag}_{i}"), hot).await?);
    }
    let slugs: Vec<String> = (0..NEW_TENANTS).map(|i| format!("ttr-{tag}-{i:02}")).collect();
    let mut ready = Vec::with_capacity(NEW_TENANTS);
    for slug in &slugs {
        ready.extend(super::create_ready(app, std::slice::from_ref(slug), Duration::from_secs(120)).await?.0);
    }
    let steps = super::provision::step_breakdown(&app.catalog, &slugs).await?;
    let place = steps.iter().find(|(kind, _)| kind == "step.placed").map_or(f64::NAN, |(_, ms)| *ms);
    Ok(Phase { pages: listed, statements, ready_p50: stats(&ready).p50, place_p50: place })
}

/// Median time of `RUNS` executions of a prepared hot statement, and the buffers one touches.
async fn statement(
    client: &Client,
    name: &str,
    hot: &HotStatement,
) -> Result<(&'static str, f64, i64), BenchError> {
    client.batch_execute(&format!("PREPARE bench_{name} AS {}", hot.sql)).await.map_err(pg)?;
    let execute = format!("EXECUTE bench_{name}{}", hot.args);
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS + 10 {
        let started = Instant::now();
        client.simple_query(&execute).await.map_err(pg)?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let plan = client
        .query_one(&format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {execute}"), &[])
        .await
        .map_err(pg)?;
    let plan: serde_json::Value = plan.get(0);
    let buffers = plan[0]["Plan"]["Shared Hit Blocks"].as_i64().unwrap_or(0)
        + plan[0]["Plan"]["Shared Read Blocks"].as_i64().unwrap_or(0);
    client.batch_execute(&format!("DEALLOCATE bench_{name}")).await.map_err(pg)?;
    Ok((hot.name, stats(&times[10..]).p50, buffers))
}

fn print(empty: &Phase, full: &Phase, tenants: usize) {
    let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { f64::NAN };
    println!();
    println!(
        "{:<48} {:>10} {:>12} {:>7}",
        "GET /v1/tenants?limit=100 (HTTP)",
        "empty ms",
        format!("{tenants} ms"),
        "ratio"
    );
    for (label, ms) in &full.pages {
        let base = empty.pages.first().map_or(f64::NAN, |(_, ms)| *ms);
        println!("{:<48} {base:>10.2} {ms:>12.2} {:>7.2}", format!("  {label} p50"), ratio(base, *ms));
    }
    println!();
    println!(
        "{:<48} {:>10} {:>12} {:>7} {:>9} {:>9}",
        "hot statement (p50 of prepared runs)",
        "empty ms",
        format!("{tenants} ms"),
        "ratio",
        "buf empty",
        "buf full"
    );
    for ((name, e_ms, e_buf), (_, f_ms, f_buf)) in empty.statements.iter().zip(&full.statements) {
        println!(
            "{:<48} {e_ms:>10.3} {f_ms:>12.3} {:>7.2} {e_buf:>9} {f_buf:>9}",
            truncate(name, 48),
            ratio(*e_ms, *f_ms)
        );
    }
    println!();
    println!(
        "{:<48} {:>10} {:>12} {:>7}",
        "new tenant, one at a time",
        "empty ms",
        format!("{tenants} ms"),
        "ratio"
    );
    println!(
        "{:<48} {:>10.1} {:>12.1} {:>7.2}",
        "  time-to-READY p50",
        empty.ready_p50,
        full.ready_p50,
        ratio(empty.ready_p50, full.ready_p50)
    );
    println!(
        "{:<48} {:>10.1} {:>12.1} {:>7.2}",
        "  of which placement (created -> placed) p50",
        empty.place_p50,
        full.place_p50,
        ratio(empty.place_p50, full.place_p50)
    );
    let worst_page = full.pages.iter().map(|(_, ms)| *ms).fold(0.0, f64::max);
    println!();
    println!(
        "targets: any page p50 <= 10 ms (worst {worst_page:.2} ms); placement and claiming within 1.2x of empty;"
    );
    println!("         buffers per poll independent of the number of tenants (columns buf empty / buf full)");
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
