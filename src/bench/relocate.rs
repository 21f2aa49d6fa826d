//! `tenantd bench move`: the window a client of the SQL endpoint cannot use a tenant while it
//! moves to another server.
//!
//! A scratch catalog on the source server (as every bench), a tenant there filled with about
//! `--size-mb` of data (several tables, indexes, sequences), then a move over HTTP to the
//! target while a client polls `POST /v1/tenants/{slug}/sql` with the tenant token every
//! 50 ms. The source is kept as by default (renamed), then dropped by the bench. With no `--to`, the target is a scratch PostgreSQL cluster started for the run
//! (`initdb` + `pg_ctl`-like start, like the embedded default), removed afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{BenchError, Scratch, err, parse_url, pg, pick_server, ready_times};
use crate::admin::AdminTarget;
use crate::catalog::Catalog;
use crate::catalog::servers::NewServer;
use crate::core::Core;
use crate::crypto::{Keyring, server_aad};
use crate::names::PgIdent;
use crate::pgcluster::{Cluster, ClusterOptions, PgBinaries, RunningCluster};
use crate::startup::Daemon;
use crate::tenant_sql;

const SLUG: &str = "bench-move";
const SCRATCH_TARGET: &str = "bench-move-target";
const POLL_EVERY: Duration = Duration::from_millis(50);

/// `tenantd bench move`: see the module comment.
pub async fn relocate(
    core: &Core,
    server: Option<&str>,
    to: Option<&str>,
    size_mb: u64,
) -> Result<(), BenchError> {
    let servers = core.catalog.servers().await.map_err(err)?;
    let source = pick_server(&servers, server)?;
    let target = match to {
        Some(name) if name == source.name => {
            return Err(BenchError("--to must differ from the source".into()));
        }
        Some(name) => {
            let record = pick_server(&servers, Some(name))?;
            Some(AdminTarget::from_record(record, &core.keyring).map_err(err)?)
        }
        None => None,
    };
    println!(
        "bench move: a tenant with ~{size_mb} MB on server {} ({}:{}) moved to {}, polled every {} ms",
        source.name,
        source.host,
        source.port,
        to.unwrap_or("a scratch cluster started for this run"),
        POLL_EVERY.as_millis()
    );
    let scratch = Scratch::create(source, &core.keyring).await?;
    let result = async {
        let (target_name, target_admin, cluster) = match (to, target) {
            (Some(name), Some(admin)) => (name.to_owned(), admin, None),
            _ => {
                let started = Instant::now();
                let (cluster, admin) = scratch_cluster().await?;
                println!(
                    "scratch target cluster on port {} in {:.1} s",
                    admin.port,
                    started.elapsed().as_secs_f64()
                );
                (SCRATCH_TARGET.to_owned(), admin, Some(cluster))
            }
        };
        let measured = async {
            let catalog = Catalog::new(&scratch.catalog_url, 2).map_err(err)?;
            catalog
                .insert_server(&new_server(&target_name, &target_admin, &core.keyring))
                .await
                .map_err(err)?;
            let settings = scratch.daemon_settings(&core.settings)?;
            let daemon = Daemon::start(settings).await.map_err(err)?;
            let measured = measure(&daemon, &source.name, &target_name, size_mb).await;
            daemon.stop().await;
            // The tenant ends on the target: remove it there (the scratch cluster goes whole).
            let cleaned = match &cluster {
                None => remove_tenant(&catalog, &target_admin).await,
                Some(_) => Ok(()),
            };
            measured.and_then(|m| cleaned.map(|()| m))
        }
        .await;
        if let Some(cluster) = cluster {
            tokio::task::spawn_blocking(move || cluster.stop()).await.map_err(err)?.map_err(err)?;
        }
        measured
    }
    .await;
    let removed = scratch.remove().await;
    let figures = result?;
    removed?;
    figures.print(size_mb);
    Ok(())
}

/// A throwaway cluster of our own (not `throwaway`: the target writes as a real one would),
/// with `tenantd_admin` as in the embedded default; removed when stopped.
async fn scratch_cluster() -> Result<(RunningCluster, AdminTarget), BenchError> {
    // Under the system's temporary directory (traversable by the postgres OS user when we
    // run as root); `initdb` creates it and the supervisor removes it once PostgreSQL stops.
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let root = std::env::temp_dir().join(format!("tenantd-bench-move-{tag}"));
    let su_password = crate::crypto::random_secret(24);
    let admin_password = crate::crypto::random_secret(24);
    let cluster =
        Cluster::new(PgBinaries::locate().map_err(err)?, &root, ClusterOptions::default()).map_err(err)?;
    let port = crate::pgcluster::free_port().map_err(err)?;
    let su = su_password.clone();
    let started = tokio::task::spawn_blocking(move || {
        cluster.init(&su)?;
        cluster.start(port, true)
    })
    .await
    .map_err(err)?;
    let running = match started {
        Ok(running) => running,
        Err(e) => {
            if root.exists()
                && let Err(rm) = std::fs::remove_dir_all(&root)
            {
                tracing::warn!(error = %rm, dir = %root.display(), "cannot remove the scratch cluster");
            }
            return Err(err(e));
        }
    };
    // From here, dropping `running` stops PostgreSQL and removes the directory.
    crate::embedded::prepare_cluster(port, &su_password, &admin_password).await.map_err(err)?;
    let admin = AdminTarget {
        host: "127.0.0.1".into(),
        port,
        user: crate::embedded::ADMIN_ROLE.into(),
        password: admin_password,
        maintenance_db: "postgres".into(),
        tls: crate::pgtls::PgTls { sslmode: crate::pgtls::SslMode::Disable, ..Default::default() },
    };
    Ok((running, admin))
}

fn new_server(name: &str, admin: &AdminTarget, keyring: &Keyring) -> NewServer {
    NewServer {
        name: name.to_owned(),
        host: admin.host.clone(),
        port: admin.port,
        admin_user: admin.user.clone(),
        admin_password_sealed: keyring.seal(admin.password.expose_secret(), &server_aad(name)),
        maintenance_db: admin.maintenance_db.clone(),
        tls: admin.tls.clone(),
        weight: 100,
        max_tenants: None,
        region: None,
        latency_ms: 0.0,
    }
}

/// Drops the bench tenant's database and role on an existing target server (by marker only).
async fn remove_tenant(catalog: &Catalog, target: &AdminTarget) -> Result<(), BenchError> {
    let t = catalog.tenant(SLUG).await.map_err(err)?;
    let client = target.connect(None).await.map_err(err)?;
    let mut names = vec![PgIdent::staging(t.id)];
    if let Some(name) = &t.database_name {
        names.push(PgIdent::from_catalog(name).map_err(err)?);
    }
    for (name, ownership) in
        crate::markers::databases(&client, t.id, &names.iter().collect::<Vec<_>>()).await.map_err(pg)?
    {
        if ownership.is_ours() {
            super::drop_database(&client, &name).await?;
        }
    }
    if let Some(role) = &t.role_name {
        let role = PgIdent::from_catalog(role).map_err(err)?;
        if crate::markers::role(&client, t.id, &role).await.map_err(pg)?.ownership.is_ours() {
            client.batch_execute(&tenant_sql::drop_role(&role)).await.map_err(pg)?;
        }
    }
    Ok(())
}

struct MoveFigures {
    database_bytes: i64,
    rows: i64,
    polls: usize,
    failed_polls: usize,
    /// First failed poll to the first successful one after the last failure.
    window: Option<Duration>,
    operation: Value,
    /// `move.*` events: (seconds since the move started, kind, step).
    timeline: Vec<(f64, String, String)>,
}

impl MoveFigures {
    fn print(&self, size_mb: u64) {
        let d = &self.operation["detail"];
        let f = |k: &str| d[k].as_f64().map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        println!();
        println!(
            "tenant: {:.1} MB on disk ({size_mb} MB asked), {} rows, {} tables, {} sequences",
            self.database_bytes as f64 / 1_048_576.0,
            self.rows,
            d["tables"],
            d["sequences"]
        );
        println!("move steps (seconds):");
        for (label, key) in [
            ("close (LOGIN off, sessions ended)", "close_seconds"),
            ("stage (role, staging database)", "stage_seconds"),
            ("pg_dump -Fd", "dump_seconds"),
            ("pg_restore (with the source's checksums)", "restore_seconds"),
            ("verify the copy", "verify_seconds"),
            ("promote (rename)", "promote_seconds"),
            ("total, claimed to READY", "seconds"),
        ] {
            println!("  {label:<44} {:>8}", f(key));
        }
        println!(
            "  dump size {:.1} MB, jobs {}",
            d["dump_bytes"].as_f64().unwrap_or(0.0) / 1_048_576.0,
            d["jobs"].as_u64().map_or("-".to_owned(), |j| j.to_string())
        );
        println!("timeline (seconds after the move started):");
        for (at, kind, step) in &self.timeline {
            println!("  {at:>7.2}  {kind} {step}");
        }
        println!();
        println!("polls: {} ({} failed)", self.polls, self.failed_polls);
        match self.window {
            Some(w) => println!(
                "unavailable window seen by the client: {:.2} s (target: <= 10 s for 100 MB)",
                w.as_secs_f64()
            ),
            None => println!("unavailable window seen by the client: none observed"),
        }
    }
}

/// Fills the tenant, moves it while polling, reads the figures back.
async fn measure(
    daemon: &Daemon,
    source: &str,
    target: &str,
    size_mb: u64,
) -> Result<MoveFigures, BenchError> {
    let app = daemon.app();
    crate::servers::check_all(&app.catalog, &app.keyring).await.map_err(err)?;
    let req =
        crate::tenants::CreateTenant { slug: SLUG.into(), server: Some(source.into()), ..Default::default() };
    let created = crate::tenants::create(&app.catalog, &app.settings, &req).await.map_err(err)?;
    let token = created.token.ok_or_else(|| BenchError("no token".into()))?;
    ready_times(app, &[SLUG.to_owned()], Duration::from_secs(120)).await?;
    let tenant = app.catalog.tenant(SLUG).await.map_err(err)?;
    let on_source =
        crate::target::TenantTarget::resolve(&app.catalog, &app.keyring, &tenant).await.map_err(err)?;
    let started = Instant::now();
    let (database_bytes, rows) = fill(&on_source, size_mb).await?;
    println!(
        "filled {:.1} MB ({rows} rows) in {:.1} s",
        database_bytes as f64 / 1_048_576.0,
        started.elapsed().as_secs_f64()
    );
    let base = format!("http://{}", daemon.local_addr());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(err)?;
    let stop = Arc::new(AtomicBool::new(false));
    let poller =
        tokio::spawn(poll(http.clone(), format!("{base}/v1/tenants/{SLUG}/sql"), token, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let admin_token = app.settings.admin_token.clone().ok_or_else(|| BenchError("no admin token".into()))?;
    let moved = async {
        let response = http
            .post(format!("{base}/v1/tenants/{SLUG}/move"))
            .bearer_auth(admin_token.expose_secret())
            .json(&json!({ "to": target }))
            .send()
            .await
            .map_err(err)?;
        let status = response.status();
        let op: Value = response.json().await.map_err(err)?;
        if status.as_u16() != 202 {
            return Err(BenchError(format!("move refused: HTTP {status}: {op}")));
        }
        let id = op["id"].as_str().ok_or_else(|| BenchError(format!("no operation id in {op}")))?.to_owned();
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let op: Value = http
                .get(format!("{base}/v1/operations/{id}"))
                .bearer_auth(admin_token.expose_secret())
                .send()
                .await
                .map_err(err)?
                .json()
                .await
                .map_err(err)?;
            if op["state"] != "running" {
                return Ok(op);
            }
            if Instant::now() > deadline {
                return Err(BenchError(format!("the move did not end in 30 min: {op}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    // A last successful poll after the move, then the poller stops.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let polls = poller.await.map_err(err)?;
    let operation = moved?;
    if operation["state"] != "succeeded" {
        return Err(BenchError(format!("the move failed: {}", operation["error"])));
    }
    // The default keeps the source (renamed, a fast step); the bench drops it now.
    let id = operation["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| BenchError("bad operation id".into()))?;
    let record = app.catalog.operation(id).await.map_err(err)?;
    crate::moves::drop_kept_source(&app.core, &record).await.map_err(err)?;
    let opened = operation["created_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .ok_or_else(|| BenchError("operation without created_at".into()))?;
    let events = app.catalog.events(tenant.id, 0, 1000).await.map_err(err)?;
    let timeline = events
        .iter()
        .filter(|e| e.kind.starts_with("move."))
        .map(|e| {
            let at = (e.at - opened.with_timezone(&chrono::Utc)).num_milliseconds() as f64 / 1000.0;
            (at, e.kind.clone(), e.detail["step"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    let failed_polls = polls.iter().filter(|(_, ok)| !ok).count();
    Ok(MoveFigures {
        database_bytes,
        rows,
        polls: polls.len(),
        failed_polls,
        window: window(&polls),
        operation,
        timeline,
    })
}

/// First failed poll to the first successful poll after the last failure.
fn window(polls: &[(Instant, bool)]) -> Option<Duration> {
    let first_fail = polls.iter().position(|(_, ok)| !ok)?;
    let last_fail = polls.iter().rposition(|(_, ok)| !ok)?;
    let back = polls[last_fail..].iter().find(|(_, ok)| *ok)?;
    Some(back.0 - polls[first_fail].0)
}

/// Polls the SQL endpoint every 50 ms until told to stop: (when sent, answered 200).
async fn poll(
    http: reqwest::Client,
    url: String,
    token: SecretString,
    stop: Arc<AtomicBool>,
) -> Vec<(Instant, bool)> {
    let mut polls = Vec::new();
    let body = json!({ "sql": "SELECT count(*) AS n FROM bench_accounts" });
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let ok = match http.post(&url).bearer_auth(token.expose_secret()).json(&body).send().await {
            Ok(r) => r.status().is_success(),
            Err(_) => false,
        };
        polls.push((sent, ok));
        tokio::time::sleep_until((sent + POLL_EVERY).into()).await;
    }
    polls
}

/// Fills the tenant's database as the tenant role up to about `size_mb`: accounts, events with
/// two secondary indexes, documents, a sequence in use. Returns (database bytes, rows).
async fn fill(target: &crate::target::TenantTarget, size_mb: u64) -> Result<(i64, i64), BenchError> {
    let details = target.direct_details();
    let client =
        crate::pg::connect(&parse_url(&details.url)?, &target.server.tls, "bench").await.map_err(err)?;
    client
        .batch_execute(
            "SET statement_timeout = '10min'; \
             CREATE TABLE bench_accounts (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, \
               plan text NOT NULL, created_at timestamptz NOT NULL DEFAULT now()); \
             CREATE TABLE bench_events (id bigserial PRIMARY KEY, \
               account_id bigint NOT NULL REFERENCES bench_accounts, kind text NOT NULL, \
               payload text NOT NULL, at timestamptz NOT NULL); \
             CREATE INDEX bench_events_account_at ON bench_events (account_id, at); \
             CREATE INDEX bench_events_kind ON bench_events (kind); \
             CREATE TABLE bench_documents (id bigserial PRIMARY KEY, title text NOT NULL, body text NOT NULL); \
             CREATE SEQUENCE bench_invoice_numbers START 1000; \
             INSERT INTO bench_accounts (email, plan) SELECT 'user' || g || '@example.com', \
               (ARRAY['free','pro','team'])[1 + g % 3] FROM generate_series(1, 20000) g",
        )
        .await
        .map_err(pg)?;
    let want = i64::try_from(size_mb.saturating_mul(1_048_576)).unwrap_or(i64::MAX);
    let size = || async {
        client
            .query_one("SELECT pg_catalog.pg_database_size(pg_catalog.current_database())", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .map_err(pg)
    };
    let mut batch = 0i64;
    while size().await? < want {
        let from = batch * 50_000;
        client
            .execute(
                "INSERT INTO bench_events (account_id, kind, payload, at) \
                 SELECT 1 + (g * 7919) % 20000, (ARRAY['login','view','click','buy'])[1 + g % 4], \
                   md5(g::text) || md5((g * 31)::text) || ' ' || g, now() - g * interval '1 second' \
                 FROM generate_series($1::bigint + 1, $1::bigint + 50000) g",
                &[&from],
            )
            .await
            .map_err(pg)?;
        client
            .execute(
                "INSERT INTO bench_documents (title, body) \
                 SELECT 'document ' || g, string_agg(md5((g * 1000 + i)::text), ' ') \
                 FROM generate_series($1::bigint + 1, $1::bigint + 2000) g, generate_series(1, 12) i GROUP BY g",
                &[&from],
            )
            .await
            .map_err(pg)?;
        client.query_one("SELECT nextval('bench_invoice_numbers')", &[]).await.map_err(pg)?;
        batch += 1;
    }
    client.batch_execute("ANALYZE").await.map_err(pg)?;
    let rows: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM bench_accounts) + (SELECT count(*) FROM bench_events) \
             + (SELECT count(*) FROM bench_documents)",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    Ok((size().await?, rows))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn the_window_runs_from_the_first_failure_to_the_first_success_after_the_last() {
        let t = Instant::now();
        let at = |ms| t + Duration::from_millis(ms);
        let polls = [(at(0), true), (at(50), false), (at(100), true), (at(150), false), (at(200), true)];
        assert_eq!(super::window(&polls), Some(Duration::from_millis(150)));
        assert_eq!(super::window(&[(at(0), true)]), None);
    }
}
