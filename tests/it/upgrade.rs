//! Upgrades: a new build's migrations reach every tenant database — safely (all or nothing
//! per tenant), visibly (runs, results, events) and resumably (re-runs finish the job, never
//! applying anything twice).

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{TestApp, app, shared_cluster};
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
    let id = started["id"].as_str().unwrap().to_owned();
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
    // Fix the tenant, re-run: it continues where it stopped.
    crate::common::connect(&url).await.unwrap().batch_execute("DROP TABLE invoices").await.unwrap();
    let doc = run(&new, json!({ "all": true })).await;
    assert_eq!(doc["run"]["status"], "finished");
    assert!(outcomes(&doc).values().all(|o| o == "upgraded"), "{doc}");
}

#[tokio::test]
async fn a_crash_mid_run_and_concurrent_runs_never_apply_anything_twice() {
    let old = app().spawn().await;
    let slugs: Vec<String> = (0..6).map(|i| format!("slow-{i}")).collect();
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
    // Crash once some, but not all, are done.
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

    // Two new daemons re-run at the same time: together they finish, each tenant once.
    let a = app()
        .same_catalog_as(&old)
        .migrations(newer(&slow))
        .configure(|s| s.workers.lease = Duration::from_secs(2))
        .spawn()
        .await;
    let b = app()
        .same_catalog_as(&old)
        .migrations(newer(&slow))
        .configure(|s| s.workers.lease = Duration::from_secs(2))
        .spawn()
        .await;
    let (ra, rb) = tokio::join!(
        run(&a, json!({ "all": true, "concurrency": 2 })),
        run(&b, json!({ "all": true, "concurrency": 2 }))
    );
    // Tenants held by the other run (or by the crashed one, until its lease expires) are
    // skipped; once no lease is held, a third run mops up anything left.
    crate::common::wait_for("leases expired", Duration::from_secs(10), || async {
        let held: i64 = catalog
            .query_one("SELECT count(*) FROM tenantd.tenants WHERE lease_until > now()", &[])
            .await
            .unwrap()
            .get(0);
        (held == 0).then_some(())
    })
    .await;
    let rc = run(&a, json!({ "all": true })).await;
    for slug in &slugs {
        assert_eq!(version(&a, slug).await, i64::from(base() + 1), "{slug}: {ra} {rb} {rc}");
        // A crash between the tenant's commit and the catalog write shows up as "current" on
        // the next run; either way the migration itself ran once (history below).
        let applied = event_count(&a, slug, "upgrade.applied").await;
        let current = event_count(&a, slug, "upgrade.current").await;
        assert!(applied <= 1 && applied + current >= 1, "{slug}: applied {applied}, current {current}");
        // Through the daemon of the newer build: the CLI binary, at the older embedded version,
        // refuses to lend a tenant whose schema is newer than it knows.
        let (status, details) = a.get(&format!("/v1/tenants/{slug}/connection")).await;
        assert_eq!(status, 200, "{details}");
        let client = crate::common::connect(details["url"].as_str().unwrap()).await.unwrap();
        let n: i64 = client
            .query_one("SELECT count(*) FROM tenantd_schema_history WHERE version = $1", &[&(base() + 1)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    }
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
