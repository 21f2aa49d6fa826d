//! Upgrades: a new build's migrations reach every tenant database — safely (all or nothing
//! per tenant), visibly (runs, results, events) and resumably (re-runs finish the job, never
//! applying anything twice).

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{ProcessDaemon, TestApp, app, shared_cluster};
use reqwest::Method;
use serde_json::{Value, json};
use tenantd::tenant_migrations::MigrationSet;

fn base() -> i32 {
    MigrationSet::embedded().latest_version()
}

/// "A newer build": the embedded migrations plus one more.
fn newer(sql: &str) -> MigrationSet {
    MigrationSet::embedded().with(&format!("V{}__invoices", base() + 1), sql).unwrap()
}

const INVOICES: &str = "CREATE TABLE invoices (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
                        order_id bigint NOT NULL REFERENCES orders (id), total numeric(12,2) NOT NULL)";

async fn tenants(app: &TestApp, slugs: &[&str]) {
    for slug in slugs {
        let (status, body) = app.post("/v1/tenants", &json!({ "slug": slug })).await;
        assert_eq!(status, 201, "{body}");
    }
    for slug in slugs {
        app.wait_ready(slug).await;
    }
}

/// Starts a run and waits for it to end; returns the run document.
async fn run(app: &TestApp, body: Value) -> Value {
    let (status, started) = app.post("/v1/migrations", &body).await;
    assert_eq!(status, 202, "{started}");
    ended(app, started["id"].as_str().unwrap()).await
}

/// Waits for run `id` to end; returns the run document.
async fn ended(app: &TestApp, id: &str) -> Value {
    crate::common::wait_for("run to end", Duration::from_secs(60), || async {
        let (_, doc) = app.get(&format!("/v1/migrations/{id}")).await;
        (doc["run"]["status"] != "running").then_some(doc)
    })
    .await
}

fn outcomes(doc: &Value) -> HashMap<String, String> {
    doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["slug"].as_str().unwrap().to_owned(), r["outcome"].as_str().unwrap().to_owned()))
        .collect()
}

async fn tables(app: &TestApp, slug: &str) -> Vec<String> {
    let db = format!("{}{}", app.settings.names.prefix, slug.replace('-', "_"));
    let client = shared_cluster().superuser(&db).await;
    client
        .query("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn version(app: &TestApp, slug: &str) -> i64 {
    app.get(&format!("/v1/tenants/{slug}")).await.1["schema_version"].as_i64().unwrap()
}

async fn event_count(app: &TestApp, slug: &str, kind: &str) -> usize {
    let (_, events) = app.get(&format!("/v1/tenants/{slug}/events")).await;
    events.as_array().unwrap().iter().filter(|e| e["kind"] == kind).count()
}

fn db_name(app: &TestApp, slug: &str) -> String {
    format!("{}{}", app.settings.names.prefix, slug.replace('-', "_"))
}

/// How many times the tenant's own history (in its database) records `version` as applied.
async fn history_count(app: &TestApp, slug: &str, version: i32) -> i64 {
    let client = shared_cluster().superuser(&db_name(app, slug)).await;
    client
        .query_one("SELECT count(*) FROM tenantd_schema_history WHERE version = $1", &[&version])
        .await
        .unwrap()
        .get(0)
}

/// A connection with the tenant's own credentials, lent by `app`.
async fn tenant_client(app: &TestApp, slug: &str) -> tokio_postgres::Client {
    let (status, details) = app.get(&format!("/v1/tenants/{slug}/connection")).await;
    assert_eq!(status, 200, "{details}");
    crate::common::connect(details["url"].as_str().unwrap()).await.unwrap()
}

/// The version this build's binary (the CLI, a `tenantd serve` process) upgrades to.
fn embedded() -> i32 {
    MigrationSet::embedded().latest_version()
}

/// Puts a READY tenant where the previous build (one without this build's newest embedded
/// migration, `V2__orders`) left it: that migration's tables and its history row removed, as
/// the tenant role, and the catalog's version to match. The binary then has work to do.
async fn as_left_by_the_previous_build(app: &TestApp, slug: &str) {
    let newest = MigrationSet::embedded().known().pop().unwrap();
    assert_eq!((newest.version, newest.name.as_str()), (2, "orders"), "the sample schema's newest migration");
    tenant_client(app, slug)
        .await
        .batch_execute("DROP TABLE order_items, orders; DELETE FROM tenantd_schema_history WHERE version = 2")
        .await
        .unwrap();
    let changed = app
        .catalog()
        .await
        .execute("UPDATE tenantd.tenants SET schema_version = 1 WHERE slug = $1", &[&slug])
        .await
        .unwrap();
    assert_eq!(changed, 1);
    assert_eq!(version(app, slug).await, 1, "{slug}");
    assert_eq!(history_count(app, slug, 2).await, 0, "{slug}");
}

/// Gives the tenant, as its own role, a table `orders` with a row in it: the newest embedded
/// migration, which creates `orders`, fails there (42P07) and must leave it as it is.
async fn squat_orders(app: &TestApp, slug: &str) {
    tenant_client(app, slug)
        .await
        .batch_execute("CREATE TABLE orders (legacy text); INSERT INTO orders VALUES ('keep me')")
        .await
        .unwrap();
}

async fn legacy_orders(app: &TestApp, slug: &str) -> Vec<String> {
    let client = shared_cluster().superuser(&db_name(app, slug)).await;
    client.query("SELECT legacy FROM orders", &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

/// The run id printed by `tenantd migrate` ("run <id> (GET /v1/migrations/<id>)").
fn printed_run_id(stdout: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("run ") && l.contains("(GET /v1/migrations/"))
        .unwrap_or_else(|| panic!("no run id in {stdout}"));
    line.split_whitespace().nth(1).unwrap().to_owned()
}

async fn leases_held(app: &TestApp) -> i64 {
    app.catalog()
        .await
        .query_one("SELECT count(*) FROM tenantd.tenants WHERE lease_until > now()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn wait_no_lease(app: &TestApp) {
    crate::common::wait_for("every tenant lease to lapse", Duration::from_secs(60), || async {
        (leases_held(app).await == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_new_migration_reaches_every_tenant_and_a_failing_one_stays_intact() {
    let mut old = app().spawn().await;
    tenants(&old, &["up-a", "up-b", "up-broken", "up-c"]).await;
    // up-broken already has a table the new migration wants to create, with data in it.
    let token = old.cli(&["tenant", "connection", "up-broken"]).await.stdout.trim().to_owned();
    let client = crate::common::connect(&token).await.unwrap();
    client
        .batch_execute("CREATE TABLE invoices (legacy text); INSERT INTO invoices VALUES ('keep me')")
        .await
        .unwrap();

    let new = app().same_catalog_as(&old).migrations(newer(INVOICES)).spawn().await;
    let (_, shown) = new.get("/v1/tenants/up-a").await;
    assert_eq!(shown["pending_migrations"][0]["name"], "invoices", "{shown}");
    assert_eq!(shown["latest_version"], base() + 1);

    let doc = run(&new, json!({ "all": true, "concurrency": 2 })).await;
    let results = outcomes(&doc);
    assert_eq!(results["up-a"], "upgraded");
    assert_eq!(results["up-c"], "upgraded");
    assert_eq!(results["up-broken"], "failed", "{doc}");
    assert_eq!(doc["progress"]["failed"], 1);
    assert_eq!(doc["run"]["status"], "finished");
    for slug in ["up-a", "up-b", "up-c"] {
        assert_eq!(version(&new, slug).await, i64::from(base() + 1), "{slug}");
        assert!(tables(&new, slug).await.contains(&"invoices".to_owned()));
        assert_eq!(event_count(&new, slug, "upgrade.applied").await, 1);
    }
    // The failed tenant: old version, its data and schema as they were, reason recorded.
    let (_, broken) = new.get("/v1/tenants/up-broken").await;
    assert_eq!(broken["schema_version"], base(), "{broken}");
    assert_eq!(broken["status"], "READY", "still usable at its old version");
    assert!(broken["last_error"].as_str().unwrap().contains("42P07"), "{broken}");
    let legacy: String = client.query_one("SELECT legacy FROM invoices", &[]).await.unwrap().get(0);
    assert_eq!(legacy, "keep me");
    let history: i64 =
        client.query_one("SELECT count(*) FROM tenantd_schema_history", &[]).await.unwrap().get(0);
    assert_eq!(history, i64::from(base()), "nothing half-applied");
    assert_eq!(event_count(&new, "up-broken", "upgrade.failed").await, 1);

    // Tenants created by the new build start at the new version (the old build is gone, as
    // after a finished rollout; while it runs it provisions at its own, older version).
    old.stop().await;
    let (_, fresh) = new.post("/v1/tenants?wait=30", &json!({ "slug": "up-fresh" })).await;
    assert_eq!(fresh["schema_version"], base() + 1, "{fresh}");
    let old = app().same_catalog_as(&new).spawn().await;

    // The old build refuses to lend a tenant that is ahead of it, and never downgrades it.
    let (status, body) = old.post("/v1/tenants/up-a/sql", &json!({ "sql": "SELECT 1" })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("tenant_schema_newer")), "{body}");
    let doc = run(&old, json!({ "tenants": ["up-a"] })).await;
    assert_eq!(outcomes(&doc)["up-a"], "ahead", "{doc}");
    assert_eq!(version(&old, "up-a").await, i64::from(base() + 1));

    // A database ahead of its catalog row (say a newer build's result was never recorded):
    // the plan sees it behind, but the run reads the database's own history under its lock
    // and leaves it alone, with the reason on the tenant.
    let catalog = old.catalog().await;
    catalog
        .execute("UPDATE tenantd.tenants SET schema_version = $1 WHERE slug = 'up-a'", &[&(base() - 1)])
        .await
        .unwrap();
    let doc = run(&old, json!({ "tenants": ["up-a"] })).await;
    assert_eq!(outcomes(&doc)["up-a"], "ahead", "{doc}");
    assert_eq!(history_count(&old, "up-a", base() + 1).await, 1, "the newer build's migration stays");
    assert!(tables(&old, "up-a").await.contains(&"invoices".to_owned()));
    let (_, tenant) = old.get("/v1/tenants/up-a").await;
    assert!(tenant["last_error"].as_str().unwrap().contains("newer than this build"), "{tenant}");
    assert_eq!(tenant["status"], "READY", "{tenant}");
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_bad_requests_are_refused() {
    let old = app().spawn().await;
    tenants(&old, &["dry-a", "dry-b"]).await;
    let new = app().same_catalog_as(&old).migrations(newer(INVOICES)).spawn().await;
    let (status, plan) = new.post("/v1/migrations", &json!({ "all": true, "dry_run": true })).await;
    assert_eq!(status, 200, "{plan}");
    let planned = plan["plan"]["tenants"].as_array().unwrap();
    assert_eq!(planned.len(), 2);
    assert!(planned.iter().all(|t| t["pending"][0]["version"] == base() + 1), "{plan}");
    assert_eq!(version(&new, "dry-a").await, i64::from(base()));
    assert!(!tables(&new, "dry-a").await.contains(&"invoices".to_owned()));
    let runs: i64 = new
        .catalog()
        .await
        .query_one("SELECT count(*) FROM tenantd.migration_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 0, "a dry run records nothing");

    for (body, want) in [
        (json!({ "all": true, "concurrency": 0 }), 400),
        (json!({ "all": true, "concurrency": 100_000 }), 400),
        (json!({ "all": true, "tenants": ["dry-a"] }), 400),
        (json!({}), 400),
        (json!({ "all": true, "max_failures": 0 }), 400),
        (json!({ "all": true, "speed": "ludicrous" }), 400),
    ] {
        let (status, answer) = new.post("/v1/migrations", &body).await;
        assert_eq!(status, want, "{body}: {answer}");
    }
    let doc = run(&new, json!({ "tenants": ["dry-a", "no-such-tenant"] })).await;
    let results = outcomes(&doc);
    assert_eq!(results["no-such-tenant"], "not_found", "{doc}");
    assert_eq!(results["dry-a"], "upgraded");
    let (status, _) = new.get("/v1/migrations/not-a-uuid").await;
    assert_eq!(status, 400);
    let (status, _) = new.get(&format!("/v1/migrations/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn canary_and_max_failures_stop_the_run() {
    let old = app().spawn().await;
    // Slugs sort so that the broken tenant comes first.
    tenants(&old, &["can-0-broken", "can-1", "can-2", "can-3"]).await;
    let url = old.cli(&["tenant", "connection", "can-0-broken"]).await.stdout.trim().to_owned();
    crate::common::connect(&url).await.unwrap().batch_execute("CREATE TABLE invoices (x int)").await.unwrap();
    let new = app().same_catalog_as(&old).migrations(newer(INVOICES)).spawn().await;

    let doc = run(&new, json!({ "all": true, "canary": 1 })).await;
    assert_eq!(doc["run"]["status"], "stopped", "{doc}");
    assert!(doc["run"]["stop_reason"].as_str().unwrap().contains("canary"), "{doc}");
    let results = outcomes(&doc);
    assert_eq!(results["can-0-broken"], "failed");
    for slug in ["can-1", "can-2", "can-3"] {
        assert_eq!(results[slug], "not_started", "{doc}");
        assert_eq!(version(&new, slug).await, i64::from(base()));
    }
    let doc = run(&new, json!({ "all": true, "concurrency": 1, "max_failures": 1 })).await;
    assert_eq!(doc["run"]["status"], "stopped", "{doc}");
    assert!(outcomes(&doc).values().filter(|o| *o == "not_started").count() >= 2, "{doc}");
    // The tenants claimed ahead with the failed one are given back, not left to expire.
    assert_eq!(leases_held(&new).await, 0, "a stopped run leaves no lease behind");
    // Fix the tenant, re-run: it continues where it stopped.
    crate::common::connect(&url).await.unwrap().batch_execute("DROP TABLE invoices").await.unwrap();
    let doc = run(&new, json!({ "all": true })).await;
    assert_eq!(doc["run"]["status"], "finished");
    assert!(outcomes(&doc).values().all(|o| o == "upgraded"), "{doc}");
}

#[tokio::test]
async fn tenants_waiting_their_turn_longer_than_the_lease_are_still_upgraded() {
    // Leases are claimed a few tenants ahead; with a 2 s lease and 1.2 s per tenant, the
    // last ones of a chunk wait longer than the lease before their turn.
    let old = app().spawn().await;
    let slugs = ["slow-0", "slow-1", "slow-2", "slow-3"];
    tenants(&old, &slugs).await;
    let slow = "CREATE TABLE invoices (id bigint PRIMARY KEY); SELECT pg_catalog.pg_sleep(1.2)";
    let new = app()
        .same_catalog_as(&old)
        .migrations(newer(slow))
        .configure(|s| s.workers.lease = Duration::from_secs(2))
        .spawn()
        .await;
    let doc = run(&new, json!({ "all": true, "concurrency": 1 })).await;
    assert_eq!(doc["run"]["status"], "finished", "{doc}");
    let results = outcomes(&doc);
    for slug in slugs {
        assert_eq!(results[slug], "upgraded", "{doc}");
        assert_eq!(version(&new, slug).await, i64::from(base() + 1), "{slug}");
    }
    assert_eq!(leases_held(&new).await, 0);
}

#[tokio::test]
async fn a_daemon_stopped_mid_run_marks_it_interrupted_and_a_rerun_finishes_the_job() {
    let old = app().spawn().await;
    let slugs: Vec<String> = (0..4).map(|i| format!("slow-{i}")).collect();
    tenants(&old, &slugs.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let slow = format!("{INVOICES}; SELECT pg_sleep(0.3)");
    let mut first = app()
        .same_catalog_as(&old)
        .migrations(newer(&slow))
        .configure(|s| s.workers.lease = Duration::from_secs(2))
        .spawn()
        .await;
    let (status, started) = first.post("/v1/migrations", &json!({ "all": true, "concurrency": 1 })).await;
    assert_eq!(status, 202);
    let id = started["id"].as_str().unwrap().to_owned();
    // Stop once some, but not all, are done.
    crate::common::wait_for("a first tenant upgraded", Duration::from_secs(30), || async {
        let (_, doc) = first.get(&format!("/v1/migrations/{id}")).await;
        (doc["progress"]["upgraded"].as_u64() >= Some(1)).then_some(())
    })
    .await;
    first.stop().await;
    let catalog = old.catalog().await;
    let status: String = catalog
        .query_one("SELECT status FROM tenantd.migration_runs WHERE id = $1::text::uuid", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "interrupted");
    let (_, doc) = old.get(&format!("/v1/migrations/{id}")).await;
    assert_eq!(doc["run"]["stop_reason"], "daemon shut down", "{doc}");

    // A new daemon of the same build re-runs once the stopped one's leases lapsed: it finishes.
    wait_no_lease(&old).await;
    let second = app().same_catalog_as(&old).migrations(newer(&slow)).spawn().await;
    let rerun = run(&second, json!({ "all": true, "concurrency": 2 })).await;
    assert_eq!(rerun["run"]["status"], "finished", "{rerun}");
    assert!(outcomes(&rerun).values().all(|o| o == "upgraded" || o == "current"), "{rerun}");
    for slug in &slugs {
        assert_eq!(version(&second, slug).await, i64::from(base() + 1), "{slug}: {doc} {rerun}");
        // A stop between the tenant's commit and the catalog write shows up as "current" on
        // the next run; either way the migration itself ran once (history below).
        let applied = event_count(&second, slug, "upgrade.applied").await;
        let current = event_count(&second, slug, "upgrade.current").await;
        assert!(applied <= 1 && applied + current >= 1, "{slug}: applied {applied}, current {current}");
        // The tenant database's own history: the migration is recorded exactly once.
        let n: i64 = tenant_client(&second, slug)
            .await
            .query_one("SELECT count(*) FROM tenantd_schema_history WHERE version = $1", &[&(base() + 1)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{slug}");
    }
}

#[tokio::test]
async fn a_crash_mid_run_and_concurrent_runs_never_apply_anything_twice() {
    // Six tenants the previous build left behind: this build's binary has a migration for them.
    let app = app().spawn().await;
    let slugs: Vec<String> = (0..6).map(|i| format!("crash-{i}")).collect();
    let slugs: Vec<&str> = slugs.iter().map(String::as_str).collect();
    tenants(&app, &slugs).await;
    for slug in &slugs {
        as_left_by_the_previous_build(&app, slug).await;
    }
    let (before, after) = (i64::from(embedded() - 1), i64::from(embedded()));
    let cluster = shared_cluster();

    // A daemon process upgrades them one at a time. crash-3's migration waits on a lock held
    // here, so the process is killed (SIGKILL) in the middle of crash-3's transaction, with
    // crash-0..2 done and crash-4..5 not started.
    let blocker = crate::common::hold_lock(cluster, &db_name(&app, "crash-3"), "customers").await;
    let mut process = ProcessDaemon::start(&app, &[("TENANTD_WORKERS_LEASE", "6s")]).await;
    let (status, started) =
        process.post(&app.admin_token, "/v1/migrations", &json!({ "all": true, "concurrency": 1 })).await;
    assert_eq!(status, 202, "{started}");
    let crashed = started["id"].as_str().unwrap().to_owned();
    let stuck = db_name(&app, "crash-3");
    crate::common::wait_for(
        "crash-0..2 upgraded, crash-3 mid-migration",
        Duration::from_secs(60),
        || async {
            for slug in &slugs[..3] {
                if version(&app, slug).await != after {
                    return None;
                }
            }
            (crate::common::sessions_waiting_on_a_lock(cluster, &stuck).await == 1).then_some(())
        },
    )
    .await;
    process.kill().await;
    blocker.batch_execute("ROLLBACK").await.unwrap();

    // Nothing half-applied: crash-3's transaction never committed; crash-4..5 untouched.
    for slug in &slugs[3..] {
        assert_eq!(version(&app, slug).await, before, "{slug}");
        assert_eq!(history_count(&app, slug, embedded()).await, 0, "{slug}");
        assert!(!tables(&app, slug).await.contains(&"orders".to_owned()), "{slug}");
    }
    let (_, doc) = app.get(&format!("/v1/migrations/{crashed}")).await;
    let results = outcomes(&doc);
    assert_eq!(results.len(), 3, "only what finished before the crash is recorded: {doc}");
    assert!(slugs[..3].iter().all(|s| results[*s] == "upgraded"), "{doc}");

    // Once the dead process's lease lapsed, two daemons of this build re-run at the same time.
    // Both plan while crash-3..5 are held up by locks, so both runs cover the same three.
    wait_no_lease(&app).await;
    let a = crate::common::app().same_catalog_as(&app).spawn().await;
    let b = crate::common::app().same_catalog_as(&app).spawn().await;
    let mut blockers = Vec::new();
    for slug in &slugs[3..] {
        blockers.push(crate::common::hold_lock(cluster, &db_name(&app, slug), "customers").await);
    }
    let body = json!({ "all": true, "concurrency": 2 });
    let ((sa, started_a), (sb, started_b)) =
        tokio::join!(a.post("/v1/migrations", &body), b.post("/v1/migrations", &body));
    assert_eq!((sa, sb), (202, 202), "{started_a} {started_b}");
    for started in [&started_a, &started_b] {
        let behind: Vec<&str> = started["plan"]["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| !t["pending"].as_array().unwrap().is_empty())
            .map(|t| t["slug"].as_str().unwrap())
            .collect();
        assert_eq!(behind, &slugs[3..], "{started}");
    }
    for blocker in &blockers {
        blocker.batch_execute("ROLLBACK").await.unwrap();
    }
    let (ra, rb) = tokio::join!(
        ended(&a, started_a["id"].as_str().unwrap()),
        ended(&b, started_b["id"].as_str().unwrap())
    );
    // Per tenant, exactly one run upgraded it; the other found it held (skipped) or, having
    // come after, already current.
    let (oa, ob) = (outcomes(&ra), outcomes(&rb));
    for slug in &slugs[3..] {
        let pair = [oa[*slug].as_str(), ob[*slug].as_str()];
        assert_eq!(pair.iter().filter(|o| **o == "upgraded").count(), 1, "{slug}: {pair:?}\n{ra}\n{rb}");
        assert!(pair.iter().all(|o| ["upgraded", "skipped", "current"].contains(o)), "{slug}: {pair:?}");
    }
    for doc in [&ra, &rb] {
        assert_eq!(doc["run"]["status"], "finished", "{doc}");
        assert_eq!(
            (doc["run"]["total"].as_u64(), doc["progress"]["done"].as_u64()),
            (Some(3), Some(3)),
            "{doc}"
        );
        assert_eq!(doc["progress"]["failed"], 0, "{doc}");
    }
    let upgraded =
        ra["progress"]["upgraded"].as_u64().unwrap() + rb["progress"]["upgraded"].as_u64().unwrap();
    assert_eq!(upgraded, 3, "{ra}\n{rb}");

    // Every tenant at the new version, the migration applied exactly once in its database.
    for slug in &slugs {
        assert_eq!(version(&app, slug).await, after, "{slug}");
        assert_eq!(history_count(&app, slug, embedded()).await, 1, "{slug}");
        assert_eq!(event_count(&app, slug, "upgrade.applied").await, 1, "{slug}");
        assert!(tables(&app, slug).await.contains(&"orders".to_owned()), "{slug}");
    }
    // The killed run stops beating: it is shown interrupted, with what it did before the crash.
    let doc =
        crate::common::wait_for("the killed run shown interrupted", Duration::from_secs(150), || async {
            let (_, doc) = app.get(&format!("/v1/migrations/{crashed}")).await;
            (doc["run"]["status"] == "interrupted").then_some(doc)
        })
        .await;
    assert!(doc["run"]["stop_reason"].as_str().unwrap().contains("no heartbeat"), "{doc}");
    assert_eq!(
        (doc["run"]["total"].as_u64(), doc["progress"]["upgraded"].as_u64()),
        (Some(6), Some(3)),
        "{doc}"
    );
    let runs: i64 = app
        .catalog()
        .await
        .query_one("SELECT count(*) FROM tenantd.migration_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 3, "the killed run and the two re-runs");
}

#[tokio::test]
async fn migrate_over_the_cli() {
    let app = app().spawn().await;
    tenants(&app, &["cli-up"]).await;
    let dry = app.cli(&["migrate", "--all", "--dry-run"]).await;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(dry.stdout.contains("0 tenant(s) behind, 1 current"), "{}", dry.stdout);
    let all = app.cli(&["migrate", "--all", "--json"]).await;
    assert_eq!(all.code, 0, "{all:?}");
    let summary: Value = serde_json::from_str(&all.stdout).unwrap();
    assert_eq!(summary["plan"]["target_version"], base());
    let missing = app.cli(&["migrate", "cli-up", "nobody-here"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(missing.stdout.contains("nobody-here: not found"), "{}", missing.stdout);
    for args in [
        vec!["migrate"],
        vec!["migrate", "--all", "--concurrency", "0"],
        vec!["migrate", "--all", "--max-failures", "0"],
    ] {
        let out = app.cli(&args).await;
        assert_eq!(out.code, 2, "{args:?}: {out:?}");
    }
    let show = app.cli(&["tenant", "show", "cli-up"]).await;
    assert!(show.stdout.lines().any(|l| l.starts_with("pending") && l.ends_with('-')), "{}", show.stdout);
    let (status, _) =
        app.request(Method::GET, "/v1/migrations/00000000-0000-0000-0000-000000000000", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_run_whose_process_died_is_shown_interrupted() {
    let app = app().spawn().await;
    let catalog = app.catalog().await;
    let id: uuid::Uuid = catalog
        .query_one(
            "INSERT INTO tenantd.migration_runs (actor, target_version, heartbeat_at) \
             VALUES ('gone-host:1:x', 3, now() - interval '5 minutes') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (status, doc) = app.get(&format!("/v1/migrations/{id}")).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["run"]["status"], "interrupted", "{doc}");
    assert!(doc["run"]["stop_reason"].as_str().unwrap().contains("no heartbeat"), "{doc}");
    let fresh: uuid::Uuid = catalog
        .query_one(
            "INSERT INTO tenantd.migration_runs (actor, target_version) VALUES ('alive', 3) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let (_, doc) = app.get(&format!("/v1/migrations/{fresh}")).await;
    assert_eq!(doc["run"]["status"], "running", "a beating run stays running");
}

#[tokio::test]
async fn the_cli_upgrades_what_the_previous_build_left_and_fails_loudly_for_a_broken_tenant() {
    let app = app().spawn().await;
    tenants(&app, &["cli-a", "cli-b", "cli-broken"]).await;
    for slug in ["cli-a", "cli-b", "cli-broken"] {
        as_left_by_the_previous_build(&app, slug).await;
    }
    squat_orders(&app, "cli-broken").await;
    let (before, after) = (embedded() - 1, embedded());

    // The plan names who is behind and what each would get; nothing changes.
    let dry = app.cli(&["migrate", "--all", "--dry-run"]).await;
    assert_eq!(dry.code, 0, "{dry:?}");
    assert!(
        dry.stdout.contains(&format!("target version {after}: 3 tenant(s) behind, 0 current, 0 ahead")),
        "{dry:?}"
    );
    assert!(
        dry.stdout.contains(&format!("cli-a at {before}: would apply V{after}__orders")),
        "{}",
        dry.stdout
    );
    assert_eq!(version(&app, "cli-a").await, i64::from(before));

    // One named tenant: upgraded, exit 0, the run recorded for GET /v1/migrations.
    let one = app.cli(&["migrate", "cli-a"]).await;
    assert_eq!(one.code, 0, "{one:?}");
    assert!(
        one.stdout.contains("upgraded 1, already current 0, failed 0, skipped 0, not started 0"),
        "{}",
        one.stdout
    );
    assert!(one.stderr.contains("migrate: 1/1 done, 0 failed"), "plain progress lines: {}", one.stderr);
    let (status, doc) = app.get(&format!("/v1/migrations/{}", printed_run_id(&one.stdout))).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["run"]["status"], "finished", "{doc}");
    assert_eq!(outcomes(&doc), HashMap::from([("cli-a".to_owned(), "upgraded".to_owned())]));
    assert_eq!(version(&app, "cli-a").await, i64::from(after));
    assert_eq!(history_count(&app, "cli-a", after).await, 1);
    assert!(tables(&app, "cli-a").await.contains(&"orders".to_owned()));
    assert_eq!(version(&app, "cli-b").await, i64::from(before), "only the named tenant");

    // All: cli-b upgraded, cli-broken fails — named with its error — and the exit code says so.
    let all = app.cli(&["migrate", "--all", "--concurrency", "2"]).await;
    assert_eq!(all.code, 1, "{all:?}");
    assert!(
        all.stdout.contains(&format!("target version {after}: 2 tenant(s) behind, 1 current")),
        "{}",
        all.stdout
    );
    assert!(
        all.stdout.contains("upgraded 1, already current 0, failed 1, skipped 0, not started 0"),
        "{}",
        all.stdout
    );
    let failed_line = all.stdout.lines().find(|l| l.contains("FAILED cli-broken")).unwrap_or_default();
    assert!(failed_line.contains("42P07"), "the PostgreSQL error: {}", all.stdout);
    assert!(all.stderr.contains("upgrade incomplete") && all.stderr.contains("cli-broken"), "{}", all.stderr);
    assert_eq!(version(&app, "cli-b").await, i64::from(after));
    // The broken tenant: READY at its old version, its data as it was, the reason recorded.
    let (_, broken) = app.get("/v1/tenants/cli-broken").await;
    assert_eq!(
        (broken["status"].as_str(), broken["schema_version"].as_i64()),
        (Some("READY"), Some(before.into()))
    );
    assert!(broken["last_error"].as_str().unwrap_or_default().contains("42P07"), "{broken}");
    assert_eq!(legacy_orders(&app, "cli-broken").await, ["keep me"]);
    assert_eq!(history_count(&app, "cli-broken", after).await, 0, "nothing half-applied");
    assert_eq!(event_count(&app, "cli-broken", "upgrade.failed").await, 1);

    // Fixed, it is upgraded by naming it again.
    tenant_client(&app, "cli-broken").await.batch_execute("DROP TABLE orders").await.unwrap();
    let fixed = app.cli(&["migrate", "cli-broken"]).await;
    assert_eq!(fixed.code, 0, "{fixed:?}");
    assert_eq!(version(&app, "cli-broken").await, i64::from(after));
    for slug in ["cli-a", "cli-b", "cli-broken"] {
        assert_eq!(event_count(&app, slug, "upgrade.applied").await, 1, "{slug}");
    }
}

#[tokio::test]
async fn a_failing_canary_stops_the_cli_run_and_leaves_the_others_untouched() {
    let app = app().spawn().await;
    // Slugs sort so that the broken tenant is the canary.
    let slugs = ["cc-0-broken", "cc-1", "cc-2"];
    tenants(&app, &slugs).await;
    for slug in slugs {
        as_left_by_the_previous_build(&app, slug).await;
    }
    squat_orders(&app, "cc-0-broken").await;
    let out = app.cli(&["migrate", "--all", "--canary", "1"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("FAILED cc-0-broken"), "{}", out.stdout);
    assert!(
        out.stdout.contains("upgraded 0, already current 0, failed 1, skipped 0, not started 2"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("run stopped: canary failed"), "{}", out.stdout);
    assert!(out.stderr.contains("canary failed"), "{}", out.stderr);
    for slug in ["cc-1", "cc-2"] {
        assert_eq!(version(&app, slug).await, i64::from(embedded() - 1), "{slug}");
        assert!(!tables(&app, slug).await.contains(&"orders".to_owned()), "{slug}");
        assert_eq!(history_count(&app, slug, embedded()).await, 0, "{slug}");
    }
    let (_, doc) = app.get(&format!("/v1/migrations/{}", printed_run_id(&out.stdout))).await;
    assert_eq!(doc["run"]["status"], "stopped", "{doc}");
}

#[tokio::test]
async fn the_cli_narrows_a_run_to_one_server_and_prints_json() {
    let app = app().spawn().await;
    // A second server record (on the same cluster): tenants placed on each.
    let url = app.cluster.admin_url("postgres");
    let (status, body) = app.post("/v1/servers", &json!({ "name": "pg2", "url": url })).await;
    assert_eq!(status, 201, "{body}");
    for (slug, server) in [("on-pg1", "pg1"), ("on-pg2", "pg2")] {
        let (status, body) = app.post("/v1/tenants", &json!({ "slug": slug, "server": server })).await;
        assert_eq!(status, 201, "{body}");
    }
    for slug in ["on-pg1", "on-pg2"] {
        app.wait_ready(slug).await;
        as_left_by_the_previous_build(&app, slug).await;
    }
    let (before, after) = (embedded() - 1, embedded());

    let out = app.cli(&["migrate", "--all", "--server", "pg2", "--json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let summary: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let run = summary["run"].as_str().unwrap_or_default();
    assert!(uuid::Uuid::parse_str(run).is_ok(), "{summary}");
    assert_eq!(summary["stopped"], Value::Null);
    assert_eq!(
        summary["plan"],
        json!({
            "target_version": after,
            "tenants": [{ "slug": "on-pg2", "from_version": before, "ahead": false,
                          "pending": [{ "version": after, "name": "orders" }] }],
            "not_found": [],
        })
    );
    assert_eq!(
        summary["results"],
        json!([["on-pg2", { "outcome": "upgraded", "from": before, "to": after,
                            "applied": [{ "version": after, "name": "orders" }] }]])
    );
    assert_eq!(version(&app, "on-pg2").await, i64::from(after));
    assert_eq!(version(&app, "on-pg1").await, i64::from(before), "the other server's tenant is left alone");
    let (_, doc) = app.get(&format!("/v1/migrations/{run}")).await;
    assert_eq!(doc["run"]["status"], "finished", "{doc}");

    // A named tenant that is not on that server is "not found" there: exit 1, untouched.
    let out = app.cli(&["migrate", "on-pg1", "--server", "pg2"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("on-pg1: not found"), "{}", out.stdout);
    assert_eq!(version(&app, "on-pg1").await, i64::from(before));
}

#[tokio::test]
async fn upgrade_auto_upgrades_every_ready_tenant_when_a_new_build_starts() {
    let old = app().spawn().await;
    tenants(&old, &["auto-a", "auto-b"]).await;
    let new = app()
        .same_catalog_as(&old)
        .migrations(newer(INVOICES))
        .configure(|s| s.upgrade.auto = true)
        .spawn()
        .await;
    for slug in ["auto-a", "auto-b"] {
        new.wait_tenant(slug, "upgraded by itself", Duration::from_secs(60), |t| {
            t["schema_version"] == base() + 1
        })
        .await;
        assert!(tables(&new, slug).await.contains(&"invoices".to_owned()), "{slug}");
        assert_eq!(history_count(&new, slug, base() + 1).await, 1, "{slug}");
        assert_eq!(event_count(&new, slug, "upgrade.applied").await, 1, "{slug}");
    }
    // It is an ordinary run, visible like one started over HTTP.
    let id: String = new
        .catalog()
        .await
        .query_one("SELECT id::text FROM tenantd.migration_runs", &[])
        .await
        .unwrap()
        .get(0);
    let doc = ended(&new, &id).await;
    assert_eq!(doc["run"]["status"], "finished", "{doc}");
    assert_eq!(doc["progress"]["upgraded"], 2, "{doc}");
}

/// The provisioner records the lockdown in the catalog while the migrations start
/// (`apply_gated`): a gate that says no — a lost lease — must leave nothing behind, and one
/// that says yes late must still commit everything.
#[tokio::test]
async fn a_migration_run_commits_only_once_its_gate_opens() {
    let cluster = shared_cluster();
    let db = format!("gated_{}", crate::common::random_suffix());
    let su = cluster.superuser("postgres").await;
    su.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    let inside = cluster.superuser(&db).await;
    let tables = || async {
        let row = inside
            .query_one(
                "SELECT count(*) FROM pg_class WHERE relname IN ('tenantd_schema_history', 'customers')",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let set = MigrationSet::embedded();

    let mut client = cluster.superuser(&db).await;
    let refused = set.apply_gated(&mut client, &Default::default(), async { false }).await.unwrap_err();
    assert!(matches!(refused, tenantd::tenant_migrations::MigrationError::Gated), "{refused}");
    assert_eq!(tables().await, 0, "nothing of a refused run is committed");
    // The session is usable again: nothing was left open.
    assert_eq!(client.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1);

    let late = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        true
    };
    let (version, applied) = set.apply_gated(&mut client, &Default::default(), late).await.unwrap();
    assert_eq!(version, base());
    assert_eq!(applied.len(), set.sql().len(), "{applied:?}");
    assert_eq!(tables().await, 2, "the history and the migrations are committed");
    drop((client, inside));
    su.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).await.unwrap();
}
