//! Fleet operations on two real clusters: a tenant moves with its data, sequences, token and
//! credentials; a failure before the switch leaves it READY on its source with nothing on the
//! target; a daemon killed mid-move has the move resumed with no row lost; a drain empties a
//! server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tenantd::steps::{Fault, Phase, Step};

use crate::common::{ProcessDaemon, TestApp, TestCluster, app, wait_for};

/// Registers `cluster` as server `name`.
async fn add_server(app: &TestApp, name: &str, cluster: &TestCluster) {
    let (status, body) =
        app.post("/v1/servers", &json!({ "name": name, "url": cluster.admin_url("postgres") })).await;
    assert_eq!(status, 201, "{body}");
}

/// A READY tenant on `server` with 2,000 rows in `items` and a sequence at 41; its token.
async fn tenant_with_data(app: &TestApp, slug: &str, server: &str) -> String {
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": slug, "server": server })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let (status, body) = sql(
        app,
        &token,
        slug,
        json!({ "statements": [
            { "sql": "CREATE TABLE items (id bigserial PRIMARY KEY, note text NOT NULL)" },
            { "sql": "INSERT INTO items (note) SELECT 'note ' || g FROM generate_series(1, 2000) g" },
            { "sql": "CREATE SEQUENCE counter" },
            { "sql": "SELECT setval('counter', 41)" },
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    token
}

async fn sql(app: &TestApp, token: &str, slug: &str, body: Value) -> (u16, Value) {
    app.request_as(Method::POST, &format!("/v1/tenants/{slug}/sql"), Some(&body), Some(token)).await
}

/// Everything in `items` and the counter, as text, read as the superuser.
async fn contents(cluster: &TestCluster, db: &str) -> (String, i64) {
    let client = cluster.superuser(db).await;
    let rows: String = client
        .query_one("SELECT string_agg(i::text, '|' ORDER BY id) FROM items i", &[])
        .await
        .unwrap()
        .get(0);
    let counter: i64 = client.query_one("SELECT last_value FROM counter", &[]).await.unwrap().get(0);
    (rows, counter)
}

/// Databases and roles on `cluster` that carry a tenantd marker of tenant `id`.
async fn ours_on(cluster: &TestCluster, id: &str) -> Vec<String> {
    let client = cluster.superuser("postgres").await;
    let marker = format!("tenantd:{id}");
    let rows = client
        .query(
            "SELECT 'db ' || datname FROM pg_database WHERE shobj_description(oid, 'pg_database') = $1 \
             UNION ALL SELECT 'role ' || rolname FROM pg_roles WHERE shobj_description(oid, 'pg_authid') = $1 \
             ORDER BY 1",
            &[&marker],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn wait_operation(app: &TestApp, id: &str) -> Value {
    wait_for("the operation to end", Duration::from_secs(60), || async {
        let (status, op) = app.get(&format!("/v1/operations/{id}")).await;
        assert_eq!(status, 200, "{op}");
        (op["state"] != "running").then_some(op)
    })
    .await
}

#[tokio::test]
async fn a_tenant_moves_with_its_data_sequences_token_and_credentials() {
    let second = TestCluster::start();
    let app = app().spawn().await;
    add_server(&app, "pg2", &second).await;
    let token = tenant_with_data(&app, "mover", "pg1").await;
    let (_, before) = app.get("/v1/tenants/mover").await;
    let (_, details_before) =
        app.request_as(Method::GET, "/v1/tenants/mover/connection", None, Some(&token)).await;

    // A client polls the SQL endpoint every 50 ms throughout: the window it cannot write.
    let poller = {
        let (http, base, token) = (app.http.clone(), app.base.clone(), token.clone());
        tokio::spawn(async move {
            let (mut first_fail, mut last_fail, mut codes) = (None::<Instant>, None::<Instant>, Vec::new());
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                let response = http
                    .post(format!("{base}/v1/tenants/mover/sql"))
                    .bearer_auth(&token)
                    .json(&json!({ "sql": "SELECT count(*) AS n FROM items" }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                if status != 200 {
                    let retry_after = response.headers().get("retry-after").is_some();
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    codes.push((status, body["error"]["code"].clone(), retry_after));
                    first_fail.get_or_insert_with(Instant::now);
                    last_fail = Some(Instant::now());
                } else if last_fail.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (first_fail.zip(last_fail).map(|(a, b)| b - a), codes)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, op) = app.post("/v1/tenants/mover/move", &json!({ "to": "pg2" })).await;
    assert_eq!(status, 202, "{op}");
    assert_eq!((op["state"].as_str(), op["target"].as_str()), (Some("running"), Some("pg2")), "{op}");
    let op = wait_operation(&app, op["id"].as_str().unwrap()).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let (window, codes) = poller.await.unwrap();
    eprintln!("move: SQL endpoint unavailable for {window:?}; answers meanwhile {codes:?}; operation {op}");
    assert!(!codes.is_empty(), "the poller never saw the move");
    for (status, code, retry_after) in &codes {
        assert_eq!((*status, code.as_str(), *retry_after), (503, Some("tenant_moving"), true), "{codes:?}");
    }

    let moved = app.wait_ready("mover").await;
    assert_eq!(
        (moved["server"].as_str(), moved["id"].clone()),
        (Some("pg2"), before["id"].clone()),
        "{moved}"
    );
    let db = moved["database_name"].as_str().unwrap();
    // The data is identical on both sides (the source is kept under its marker).
    let kept = op["kept_database"].as_str().unwrap();
    assert_eq!(contents(&second, db).await, contents(app.cluster, kept).await);
    assert_eq!(contents(&second, db).await.1, 41);
    // Same token, same credentials; only the port changed.
    let (status, details) =
        app.request_as(Method::GET, "/v1/tenants/mover/connection", None, Some(&token)).await;
    assert_eq!(status, 200, "{details}");
    assert_eq!(details["port"], second.port, "{details}");
    for same in ["user", "password", "dbname"] {
        assert_eq!(details[same], details_before[same], "{same}");
    }
    let direct = crate::common::connect(details["url"].as_str().unwrap()).await.expect("tenant role logs in");
    let n: i64 = direct.query_one("SELECT count(*) FROM items", &[]).await.unwrap().get(0);
    assert_eq!(n, 2000);
    // Sequences continue: no duplicate ids.
    let (status, body) = sql(
        &app,
        &token,
        "mover",
        json!({ "statements": [
            { "sql": "INSERT INTO items (note) VALUES ('after the move') RETURNING id" },
            { "sql": "SELECT nextval('counter') AS v" },
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["rows"][0]["id"], "2001", "{body}");
    assert_eq!(body["results"][1]["rows"][0]["v"], "42", "{body}");
    // Logins are off on the source; its role and kept database carry the marker.
    let id = moved["id"].as_str().unwrap();
    let role = moved["role_name"].as_str().unwrap();
    let source = app.cluster.superuser("postgres").await;
    let can_login: bool = source
        .query_one("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .get(0);
    assert!(!can_login);
    assert_eq!(ours_on(app.cluster, id).await, vec![format!("db {kept}"), format!("role {role}")]);
    let (_, events) = app.get("/v1/tenants/mover/events").await;
    let kinds: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    for kind in ["move.started", "move.step", "move.switched", "move.finished"] {
        assert!(kinds.contains(&kind), "{kind} missing: {kinds:?}");
    }
}

#[tokio::test]
async fn a_failed_restore_leaves_the_tenant_ready_on_its_source_and_nothing_on_the_target() {
    let second = TestCluster::start();
    let hook: tenantd::steps::FaultHook = Arc::new(|slug, step, phase| match (slug, step, phase) {
        ("fragile", Step::MoveDump, Phase::Before) => Some(Fault::Stall(Duration::from_millis(500))),
        ("fragile", Step::MoveRestore, Phase::After) => Some(Fault::Fail("restore broke".into())),
        _ => None,
    });
    let app = app().faults(hook).spawn().await;
    add_server(&app, "pg2", &second).await;
    let token = tenant_with_data(&app, "fragile", "pg1").await;
    let (status, op) = app.post("/v1/tenants/fragile/move", &json!({ "to": "pg2" })).await;
    assert_eq!(status, 202, "{op}");
    // While it moves, lending answers 503 with Retry-After and says why.
    let (status, body) = sql(&app, &token, "fragile", json!({ "sql": "SELECT 1" })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("tenant_moving")), "{body}");
    let op = wait_operation(&app, op["id"].as_str().unwrap()).await;
    assert_eq!(op["state"], "failed", "{op}");
    let tenant = app.wait_ready("fragile").await;
    assert_eq!(tenant["server"], "pg1", "{tenant}");
    let last_error = tenant["last_error"].as_str().unwrap();
    assert!(last_error.contains("restore broke") && last_error.contains("pg2"), "{tenant}");
    assert_eq!(ours_on(&second, tenant["id"].as_str().unwrap()).await, Vec::<String>::new());
    let (status, body) =
        sql(&app, &token, "fragile", json!({ "sql": "SELECT count(*) AS n FROM items" })).await;
    assert_eq!((status, body["rows"][0]["n"].as_str()), (200, Some("2000")), "{body}");
    let (_, events) = app.get("/v1/tenants/fragile/events").await;
    assert!(events.as_array().unwrap().iter().any(|e| e["kind"] == "move.failed"), "{events}");
    // Bad requests are 4xx.
    let (status, body) = app.post("/v1/tenants/fragile/move", &json!({ "to": "nowhere" })).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app.post("/v1/tenants/fragile/move", &json!({ "to": "pg1" })).await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn a_daemon_killed_mid_move_has_the_move_resumed_with_no_row_lost() {
    let second = TestCluster::start();
    let app = app().configure(|s| s.workers.lease = Duration::from_secs(2)).spawn().await;
    add_server(&app, "pg2", &second).await;
    let token = tenant_with_data(&app, "survivor", "pg1").await;
    let mut daemon = ProcessDaemon::start(&app, &[("TENANTD_WORKERS_LEASE", "2s")]).await;
    let (status, op) =
        daemon.post(&app.admin_token, "/v1/tenants/survivor/move", &json!({ "to": "pg2" })).await;
    assert_eq!(status, 202, "{op}");
    tokio::time::sleep(Duration::from_millis(150)).await;
    daemon.kill().await;
    let (_, killed_at) = app.get(&format!("/v1/operations/{}", op["id"].as_str().unwrap())).await;
    eprintln!("killed at step {}", killed_at["step"]);
    // The in-process daemon resumes the move once the dead one's lease has run out.
    let op = wait_operation(&app, op["id"].as_str().unwrap()).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let tenant = app.wait_ready("survivor").await;
    assert_eq!(tenant["server"], "pg2", "{tenant}");
    let (status, body) =
        sql(&app, &token, "survivor", json!({ "sql": "SELECT count(*) AS n, max(id) AS m FROM items" }))
            .await;
    assert_eq!(status, 200, "{body}");
    let row = &body["rows"][0];
    assert_eq!((row["n"].as_str(), row["m"].as_str()), (Some("2000"), Some("2000")), "{body}");
    let id = tenant["id"].as_str().unwrap();
    let db = tenant["database_name"].as_str().unwrap();
    let role = tenant["role_name"].as_str().unwrap();
    // Nothing orphaned: the live database and role on the target, the kept copy on the source.
    assert_eq!(ours_on(&second, id).await, vec![format!("db {db}"), format!("role {role}")]);
    let kept = op["kept_database"].as_str().unwrap();
    assert_eq!(ours_on(app.cluster, id).await, vec![format!("db {kept}"), format!("role {role}")]);
}

#[tokio::test]
async fn a_drain_moves_every_tenant_off_a_server_which_can_then_be_removed() {
    let second = TestCluster::start();
    // Kept source databases go at once: the daemon's drop of kept sources is seen here.
    let app = app().configure(|s| s.moves.keep_source = Duration::ZERO).spawn().await;
    add_server(&app, "pg2", &second).await;
    let slugs = ["drain-a", "drain-b", "drain-c", "drain-d"];
    for slug in slugs {
        let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": slug, "server": "pg1" })).await;
        assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    }
    let (status, body) = app.request(Method::DELETE, "/v1/servers/pg1", None).await;
    assert_eq!(status, 409, "a server with tenants is not removed: {body}");
    // Rebalancing would even them out: two of the four to the empty server.
    let out = app.cli(&["rebalance", "--dry-run"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.lines().filter(|l| l.ends_with("pg1 -> pg2")).count(), 2, "{out:?}");
    let started = Instant::now();
    // The drain runs in the CLI process, which decides how long the sources it moves are kept.
    let mut env = app.cli_env();
    env.insert("TENANTD_MOVES_KEEP_SOURCE".into(), "0s".into());
    let out = crate::common::cli(&["server", "drain", "pg1", "--concurrency", "2"], &env, None).await;
    eprintln!("drain of 4 tenants: {:?}\n{}{}", started.elapsed(), out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("4 moved, 0 failed"), "{out:?}");
    for slug in slugs {
        let (_, t) = app.get(&format!("/v1/tenants/{slug}")).await;
        assert_eq!((t["status"].as_str(), t["server"].as_str()), (Some("READY"), Some("pg2")), "{t}");
    }
    // The daemon drops the kept source databases (and the roles) once their time is up.
    for slug in slugs {
        let (_, t) = app.get(&format!("/v1/tenants/{slug}")).await;
        let id = t["id"].as_str().unwrap().to_owned();
        wait_for("the kept source to be dropped", Duration::from_secs(20), || {
            let id = id.clone();
            async move { ours_on(app.cluster, &id).await.is_empty().then_some(()) }
        })
        .await;
    }
    // Draining: placement skips it.
    let (_, pg1) = app.get("/v1/servers/pg1").await;
    assert_eq!((pg1["status"].as_str(), pg1["tenants"].as_i64()), (Some("draining"), Some(0)), "{pg1}");
    let (_, fresh) = app.post("/v1/tenants?wait=30", &json!({ "slug": "newcomer" })).await;
    assert_eq!(fresh["server"], "pg2", "{fresh}");
    // Draining it again finds nothing to do; then it can be removed.
    let (status, op) = app.post("/v1/servers/pg1/drain", &json!({})).await;
    assert_eq!(status, 202, "{op}");
    let op = wait_operation(&app, op["id"].as_str().unwrap()).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let out = app.cli(&["server", "remove", "pg1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let (status, _) = app.get("/v1/servers/pg1").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_move_that_dies_at_any_step_is_resumed_to_the_end() {
    use std::sync::Mutex;
    let second = TestCluster::start();
    // Each tenant's mover "dies" once (nothing more written, lease left to expire) at its step.
    let cases = [
        ("crash-close", Step::MoveClose, Phase::After),
        ("crash-restore", Step::MoveRestore, Phase::After),
        ("crash-promote", Step::MovePromote, Phase::After),
        ("crash-switch", Step::MoveSwitch, Phase::After),
        ("crash-source", Step::MoveSource, Phase::After),
    ];
    type Crashes = Mutex<Vec<(&'static str, Step, Phase)>>;
    let pending: Arc<Crashes> = Arc::new(Mutex::new(cases.to_vec()));
    let hook: tenantd::steps::FaultHook = {
        let pending = pending.clone();
        Arc::new(move |slug, step, phase| {
            let mut pending = pending.lock().unwrap();
            let at = pending.iter().position(|c| *c == (slug, step, phase))?;
            pending.remove(at);
            Some(Fault::Crash)
        })
    };
    let app = app().faults(hook).configure(|s| s.workers.lease = Duration::from_secs(2)).spawn().await;
    add_server(&app, "pg2", &second).await;
    let mut ops = Vec::new();
    for (slug, _, _) in cases {
        tenant_with_data(&app, slug, "pg1").await;
        let (status, op) = app.post(&format!("/v1/tenants/{slug}/move"), &json!({ "to": "pg2" })).await;
        assert_eq!(status, 202, "{op}");
        ops.push((slug, op["id"].as_str().unwrap().to_owned()));
    }
    for (slug, id) in ops {
        let op = wait_operation(&app, &id).await;
        assert_eq!(op["state"], "succeeded", "{slug}: {op}");
        let t = app.wait_ready(slug).await;
        assert_eq!(t["server"], "pg2", "{t}");
        let (db, role, tid) = (
            t["database_name"].as_str().unwrap(),
            t["role_name"].as_str().unwrap(),
            t["id"].as_str().unwrap(),
        );
        let (rows, counter) = contents(&second, db).await;
        assert_eq!((rows.matches('|').count() + 1, counter), (2000, 41), "{slug}");
        assert_eq!(ours_on(&second, tid).await, vec![format!("db {db}"), format!("role {role}")], "{slug}");
        let kept = op["kept_database"].as_str().unwrap();
        assert_eq!(
            ours_on(app.cluster, tid).await,
            vec![format!("db {kept}"), format!("role {role}")],
            "{slug}"
        );
    }
    assert!(pending.lock().unwrap().is_empty(), "crashes that did not happen: {:?}", pending.lock().unwrap());
}

#[tokio::test]
async fn an_online_move_is_refused_with_every_missing_prerequisite_named() {
    let second = TestCluster::start();
    let app = app().spawn().await;
    add_server(&app, "pg2", &second).await;
    let token = tenant_with_data(&app, "online", "pg1").await;
    let (status, body) =
        sql(&app, &token, "online", json!({ "sql": "CREATE TABLE logbook (at timestamptz, line text)" }))
            .await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = app.post("/v1/tenants/online/move", &json!({ "to": "pg2", "online": true })).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("online_prerequisites_missing")),
        "{body}"
    );
    let missing: Vec<&str> =
        body["error"]["missing"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let names = |needle: &str| missing.iter().any(|m| m.contains(needle));
    // PostgreSQL 15 here: no pg_create_subscription; a default wal_level; a table with no key.
    assert!(names("target pg2: PostgreSQL 15"), "{missing:?}");
    assert!(names("pg_create_subscription"), "{missing:?}");
    assert!(names("source pg1: wal_level = replica"), "{missing:?}");
    assert!(names("table public.logbook has no replica identity"), "{missing:?}");
    assert!(!names("public.items"), "items has a primary key: {missing:?}");
    // Nothing happened: READY on its source, no operation started.
    let (_, t) = app.get("/v1/tenants/online").await;
    assert_eq!((t["status"].as_str(), t["server"].as_str()), (Some("READY"), Some("pg1")), "{t}");
    let (_, events) = app.get("/v1/tenants/online/events").await;
    assert!(!events.to_string().contains("move.started"), "{events}");

    // The CLI says the same and exits non-zero.
    let out = app.cli(&["tenant", "move", "online", "--to", "pg2", "--online"]).await;
    assert_ne!(out.code, 0, "{out:?}");
    for needle in ["online move refused", "wal_level = replica", "table public.logbook", "PostgreSQL 15"] {
        assert!(out.stderr.contains(needle), "{needle}: {out:?}");
    }
}

#[tokio::test]
async fn a_drain_of_ten_tenants_empties_the_server_and_placement_never_picks_it_meanwhile() {
    let second = TestCluster::start();
    let app = app().spawn().await;
    add_server(&app, "pg2", &second).await;
    let slugs: Vec<String> = (0..10).map(|i| format!("full-{i}")).collect();
    for slug in &slugs {
        let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": slug, "server": "pg1" })).await;
        assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    }
    let env = app.cli_env();
    let drain = tokio::spawn(async move {
        crate::common::cli(&["server", "drain", "pg1", "--concurrency", "3"], &env, None).await
    });
    wait_for("pg1 to be draining", Duration::from_secs(30), || async {
        let (_, pg1) = app.get("/v1/servers/pg1").await;
        (pg1["status"] == "draining").then_some(())
    })
    .await;
    // New tenants keep coming while the drain runs: none is placed on pg1.
    let mut newcomers = 0;
    while !drain.is_finished() {
        let slug = format!("new-{newcomers}");
        let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": slug })).await;
        assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
        assert_eq!(body["server"].as_str(), Some("pg2"), "placed on the draining server: {body}");
        newcomers += 1;
    }
    let out = drain.await.unwrap();
    eprintln!("drain of 10 tenants with {newcomers} created meanwhile:\n{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("10 moved, 0 failed"), "{out:?}");
    assert_eq!(out.stderr.matches(" -> pg2").count(), 10, "a progress line per tenant: {out:?}");
    assert!(newcomers > 0, "the drain ended before any tenant was created meanwhile");
    for slug in &slugs {
        let (_, t) = app.get(&format!("/v1/tenants/{slug}")).await;
        assert_eq!((t["status"].as_str(), t["server"].as_str()), (Some("READY"), Some("pg2")), "{t}");
    }
    let (_, pg1) = app.get("/v1/servers/pg1").await;
    assert_eq!((pg1["status"].as_str(), pg1["tenants"].as_i64()), (Some("draining"), Some(0)), "{pg1}");
}

#[tokio::test]
async fn a_drain_run_again_finishes_a_move_cut_short() {
    let second = TestCluster::start();
    // The daemon's mover "dies" in the middle of copying `cut-short`, every time it tries (its
    // lease is left each time): only another process can finish that move.
    let hook: tenantd::steps::FaultHook = Arc::new(|slug, step, phase| {
        (slug == "cut-short" && (step, phase) == (Step::MoveRestore, Phase::After)).then_some(Fault::Crash)
    });
    let app = app().faults(hook).configure(|s| s.workers.lease = Duration::from_secs(2)).spawn().await;
    add_server(&app, "pg2", &second).await;
    for slug in ["cut-short", "unharmed"] {
        tenant_with_data(&app, slug, "pg1").await;
    }
    let (status, first) = app.post("/v1/servers/pg1/drain", &json!({ "concurrency": 2 })).await;
    assert_eq!(status, 202, "{first}");
    let first = wait_operation(&app, first["id"].as_str().unwrap()).await;
    assert_eq!(first["state"], "failed", "{first}");
    assert!(first["detail"]["failed"].to_string().contains("cut-short"), "{first}");
    let (_, t) = app.get("/v1/tenants/cut-short").await;
    assert_eq!((t["status"].as_str(), t["server"].as_str()), (Some("MOVING"), Some("pg1")), "{t}");

    // Run again (here from the CLI): the move cut short is finished, nothing is left on pg1.
    let out = app.cli(&["server", "drain", "pg1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("1 moved, 0 failed"), "{out:?}");
    for slug in ["cut-short", "unharmed"] {
        let (_, t) = app.get(&format!("/v1/tenants/{slug}")).await;
        assert_eq!((t["status"].as_str(), t["server"].as_str()), (Some("READY"), Some("pg2")), "{t}");
        let (rows, counter) = contents(&second, t["database_name"].as_str().unwrap()).await;
        assert_eq!((rows.matches('|').count() + 1, counter), (2000, 41), "{slug}");
    }
    let (_, pg1) = app.get("/v1/servers/pg1").await;
    assert_eq!(pg1["tenants"], 0, "{pg1}");
}
