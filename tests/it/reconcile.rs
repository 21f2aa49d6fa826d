//! Reconcile on a real cluster of its own (the shared one holds other tests' tenants, which
//! this catalog would rightly call orphans): each kind of drift made by hand is found with its
//! kind, `--repair` fixes the safe ones and a second run is clean, orphans stay without
//! `--drop-orphans --yes` and go with it, and a READY tenant whose database is gone goes to
//! ERROR. The report's JSON shape, `GET /v1/reconcile` and the daemon's periodic run.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{TestApp, TestCluster, app, wait_for};

async fn ready_tenant(app: &TestApp, slug: &str) -> Value {
    let (status, body) = app.post("/v1/tenants?wait=55", &json!({ "slug": slug, "server": "own" })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    body
}

/// `tenantd reconcile ARGS --json`: exit code and the report.
async fn reconcile(app: &TestApp, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["reconcile", "--json"];
    all.extend_from_slice(args);
    let out = app.cli(&all).await;
    let report = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!("reconcile {args:?}: {e}\nstdout: {}\nstderr: {}", out.stdout, out.stderr)
    });
    (out.code, report)
}

/// (kind, tenant or "-", object) of every finding, sorted.
fn kinds(report: &Value) -> Vec<(String, String, String)> {
    let mut found: Vec<_> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["tenant"].as_str().unwrap_or("-").to_owned(),
                f["object"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

fn finding<'a>(report: &'a Value, kind: &str, object: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == kind && f["object"] == object)
        .unwrap_or_else(|| panic!("no {kind} finding for {object} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_each_drift_and_repairs_the_safe_ones() {
    let own = TestCluster::start();
    let app = app().without_server().configure(|s| s.reconcile.interval = Duration::ZERO).spawn().await;
    let (status, body) =
        app.post("/v1/servers", &json!({ "name": "own", "url": own.admin_url("postgres") })).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app.get("/v1/reconcile").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");

    let alpha = ready_tenant(&app, "alpha").await;
    let bravo = ready_tenant(&app, "bravo").await;
    let gone = ready_tenant(&app, "gone").await;
    let (status, body) = app.post("/v1/tenants/bravo/suspend", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (a_db, a_role) = (alpha["database_name"].as_str().unwrap(), alpha["role_name"].as_str().unwrap());
    let b_role = bravo["role_name"].as_str().unwrap();
    let (g_db, g_role) = (gone["database_name"].as_str().unwrap(), gone["role_name"].as_str().unwrap());
    let staging = format!("tenantd_staging_{}", alpha["id"].as_str().unwrap().replace('-', ""));
    let stranger = uuid::Uuid::new_v4();

    // Drift, by hand, as the superuser.
    let su = own.superuser("postgres").await;
    for sql in [
        format!("GRANT CONNECT ON DATABASE {a_db} TO PUBLIC"),
        format!("ALTER ROLE {a_role} NOLOGIN"),
        format!("ALTER ROLE {b_role} LOGIN"),
        format!("DROP DATABASE {g_db} WITH (FORCE)"),
        format!("DROP ROLE {g_role}"),
    ] {
        su.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    // What a crashed or hand-made copy leaves: made by tenantd's admin role, as tenantd would.
    let admin = crate::common::connect(&own.admin_url("postgres")).await.unwrap();
    let alpha_id = alpha["id"].as_str().unwrap();
    for sql in [
        format!("CREATE DATABASE {staging}"),
        format!("COMMENT ON DATABASE {staging} IS 'tenantd:{alpha_id}'"),
        "CREATE DATABASE leftover_copy".to_owned(),
        format!("COMMENT ON DATABASE leftover_copy IS 'tenantd:{stranger}'"),
        "CREATE ROLE leftover_role".to_owned(),
        format!("COMMENT ON ROLE leftover_role IS 'tenantd:{stranger}'"),
    ] {
        admin.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    app.catalog()
        .await
        .execute("UPDATE tenantd.tenants SET schema_version = 0 WHERE slug = 'alpha'", &[])
        .await
        .unwrap();

    // Found, each with its kind; nothing changed without --repair.
    let (code, report) = reconcile(&app, &[]).await;
    assert_eq!(code, 0, "{report:#}");
    let expected = |s: &[(&str, &str, &str)]| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = s.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
        v.sort();
        v
    };
    assert_eq!(
        kinds(&report),
        expected(&[
            ("database_missing", "gone", g_db),
            ("role_missing", "gone", g_role),
            ("lockdown_changed", "alpha", a_db),
            ("login_mismatch", "alpha", a_role),
            ("login_mismatch", "bravo", b_role),
            ("schema_version_mismatch", "alpha", a_db),
            ("stale_staging", "alpha", &staging),
            ("orphan_database", "-", "leftover_copy"),
            ("orphan_role", "-", "leftover_role"),
        ]),
        "{report:#}"
    );
    // The shape scripts read.
    let f = finding(&report, "lockdown_changed", a_db);
    assert_eq!(f["server"], "own");
    assert!(f["problem"].as_str().unwrap().contains("PUBLIC has CONNECT"), "{f}");
    assert_eq!(f["outcome"], "not repaired: run with --repair");
    assert!(f["repair"].as_str().unwrap().contains("lockdown"), "{f}");
    assert_eq!(
        finding(&report, "orphan_database", "leftover_copy")["outcome"],
        "left alone: needs --drop-orphans --yes"
    );
    assert_eq!((report["repair"].as_bool(), report["servers_checked"].as_u64()), (Some(false), Some(1)));
    assert_eq!(report["counts"]["login_mismatch"], 2);
    assert_eq!(report["counts"]["misplaced_database"], 0, "every kind is counted, zeros too");
    assert_eq!(report["errors"], json!([]));
    let (_, t) = app.get("/v1/tenants/gone").await;
    assert_eq!(t["status"], "READY", "nothing changes without --repair");
    let (_, events) = app.get("/v1/tenants/alpha/events").await;
    let drift: Vec<&Value> =
        events.as_array().unwrap().iter().filter(|e| e["kind"] == "reconcile.drift").collect();
    assert_eq!(drift.len(), 4, "one event per finding of alpha: {events:#}");
    let (status, last) = app.get("/v1/reconcile").await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(kinds(&last["report"]), kinds(&report));
    assert!(last["actor"].as_str().unwrap().starts_with("cli:"), "{last}");

    // --repair: the safe ones; orphans stay; a tenant another process holds is skipped.
    let catalog = app.catalog().await;
    catalog
        .execute(
            "UPDATE tenantd.tenants SET lease_owner = 'test-holder', lease_until = now() + interval '1 hour' \
             WHERE slug = 'bravo'",
            &[],
        )
        .await
        .unwrap();
    let (code, report) = reconcile(&app, &["--repair"]).await;
    assert_eq!(code, 0, "{report:#}");
    let held = finding(&report, "login_mismatch", b_role);
    assert_eq!(held["outcome"], "skipped: tenant held by test-holder", "{held}");
    assert!(held["problem"].as_str().unwrap().contains("held by test-holder"), "{held}");
    for (kind, object) in [
        ("lockdown_changed", a_db),
        ("login_mismatch", a_role),
        ("schema_version_mismatch", a_db),
        ("stale_staging", staging.as_str()),
        ("database_missing", g_db),
    ] {
        assert_eq!(finding(&report, kind, object)["outcome"], "repaired", "{kind} {object}: {report:#}");
    }
    let (_, t) = app.get("/v1/tenants/gone").await;
    assert_eq!(t["status"], "ERROR", "{t}");
    assert!(t["last_error"].as_str().unwrap().contains("is not on server own"), "{t}");
    let (_, t) = app.get("/v1/tenants/alpha").await;
    assert_eq!(t["schema_version"], tenantd::tenant_migrations::latest_version());
    let public_connect: bool = su
        .query_one(&format!("SELECT has_database_privilege('pg_monitor', '{a_db}', 'CONNECT')"), &[])
        .await
        .unwrap()
        .get(0);
    assert!(!public_connect, "PUBLIC's CONNECT is revoked again");

    // Once free, the held tenant is repaired too; then only the orphans are left, alone.
    catalog
        .execute(
            "UPDATE tenantd.tenants SET lease_owner = NULL, lease_until = NULL WHERE slug = 'bravo'",
            &[],
        )
        .await
        .unwrap();
    let (_, report) = reconcile(&app, &["--repair"]).await;
    assert_eq!(finding(&report, "login_mismatch", b_role)["outcome"], "repaired", "{report:#}");
    let (_, report) = reconcile(&app, &["--repair"]).await;
    assert_eq!(
        kinds(&report),
        expected(&[("orphan_database", "-", "leftover_copy"), ("orphan_role", "-", "leftover_role")]),
        "{report:#}"
    );
    let out = app.cli(&["reconcile", "--drop-orphans"]).await;
    assert_eq!(out.code, 2, "--drop-orphans needs --yes: {out:?}");
    assert!(out.stderr.contains("--yes"), "{out:?}");

    let (code, report) = reconcile(&app, &["--drop-orphans", "--yes"]).await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(finding(&report, "orphan_database", "leftover_copy")["outcome"], "repaired");
    let left: i64 = su
        .query_one(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = 'leftover_copy') \
             + (SELECT count(*) FROM pg_roles WHERE rolname = 'leftover_role')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    let (code, report) = reconcile(&app, &[]).await;
    assert_eq!((code, kinds(&report)), (0, vec![]), "{report:#}");
    let out = app.cli(&["reconcile"]).await;
    assert!(out.stdout.contains("no drift: 1 server(s), 2 tenant(s) compared"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_reconciles_on_its_interval_and_shows_the_drift_gauge() {
    let app =
        app().without_server().configure(|s| s.reconcile.interval = Duration::from_secs(1)).spawn().await;
    let last = wait_for("the daemon's first reconcile", Duration::from_secs(60), || async {
        let (status, body) = app.get("/v1/reconcile").await;
        (status == 200).then_some(body)
    })
    .await;
    assert!(!last["actor"].as_str().unwrap().starts_with("cli:"), "run by the daemon: {last}");
    assert_eq!(last["report"]["findings"], json!([]));
    assert_eq!(last["report"]["repair"], false, "the background check only reports by default");
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.as_str().unwrap().contains("tenantd_drift{kind=\"orphan_database\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_on_another_server_and_a_kept_source_past_its_time_are_reported_not_dropped() {
    let (own, other) = (TestCluster::start(), TestCluster::start());
    let mut app = app().without_server().configure(|s| s.reconcile.interval = Duration::ZERO).spawn().await;
    for (name, cluster) in [("own", &own), ("other", &other)] {
        let (status, body) =
            app.post("/v1/servers", &json!({ "name": name, "url": cluster.admin_url("postgres") })).await;
        assert_eq!(status, 201, "{body}");
    }
    let delta = ready_tenant(&app, "delta").await;
    // No daemon from here: its moves task would drop the kept database this test plants.
    app.stop().await;
    let (id, db) = (delta["id"].as_str().unwrap(), delta["database_name"].as_str().unwrap());
    let kept = format!("tenantd_moved_0badc0de_{}", id.replace('-', ""));
    let on_other = crate::common::connect(&other.admin_url("postgres")).await.unwrap();
    let on_own = crate::common::connect(&own.admin_url("postgres")).await.unwrap();
    for (client, sql) in [
        (&on_other, format!("CREATE DATABASE {db}")),
        (&on_other, format!("COMMENT ON DATABASE {db} IS 'tenantd:{id}'")),
        (&on_own, format!("CREATE DATABASE {kept}")),
        (&on_own, format!("COMMENT ON DATABASE {kept} IS 'tenantd:{id}'")),
    ] {
        client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    app.catalog()
        .await
        .execute(
            "INSERT INTO tenantd.operations (kind, tenant_id, server, target, step, state, kept_database, \
             drop_after, actor) VALUES ('move', $1::text::uuid, 'own', 'other', 'done', 'succeeded', $2, \
             now() - interval '2 hours', 'test')",
            &[&id, &kept],
        )
        .await
        .unwrap();

    let (code, report) = reconcile(&app, &["--repair"]).await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(
        kinds(&report),
        vec![
            ("misplaced_database".to_owned(), "delta".to_owned(), db.to_owned()),
            ("stale_moved_database".to_owned(), "delta".to_owned(), kept.clone()),
        ],
        "{report:#}"
    );
    assert_eq!(finding(&report, "misplaced_database", db)["server"], "other");
    for f in report["findings"].as_array().unwrap() {
        assert_eq!(f["outcome"], "not repaired: reconcile does not repair this", "{f}");
    }
    let su = own.superuser("postgres").await;
    let there: i64 =
        su.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&kept]).await.unwrap().get(0);
    assert_eq!(there, 1, "a kept source is the moves task's to drop");
}
