//! Hostile tenants: each test plays a tenant that attacks with nothing but its own
//! credentials (direct connections and the HTTP API), and checks that the attack fails while
//! the other tenants keep being served. Older-server defaults (PostgreSQL 13/14: PUBLIC may
//! create in `public`) are emulated by granting PUBLIC what those versions grant.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tenantd::steps::{Fault, FaultHook, Phase, Step};

use crate::common::{ProcessDaemon, TestApp, app, shared_cluster, wait_for};

/// Creates a READY tenant; returns its token and its connection details.
async fn tenant(app: &TestApp, slug: &str) -> (String, Value) {
    let (status, body) = app.post("/v1/tenants?wait=50", &json!({ "slug": slug })).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "READY", "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let (status, details) = app.get(&format!("/v1/tenants/{slug}/connection")).await;
    assert_eq!(status, 200, "{details}");
    (token, details)
}

/// A direct connection as the tenant's role to `db` (its own database unless given).
async fn connect_as(
    details: &Value,
    db: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let cluster = shared_cluster();
    let url = cluster.url(
        details["user"].as_str().unwrap(),
        details["password"].as_str().unwrap(),
        db.unwrap_or(details["dbname"].as_str().unwrap()),
    );
    crate::common::connect(&url).await
}

/// SQL over HTTP as a tenant.
async fn sql(app: &TestApp, token: &str, slug: &str, body: Value) -> (u16, Value) {
    app.request_as(reqwest::Method::POST, &format!("/v1/tenants/{slug}/sql"), Some(&body), Some(token)).await
}

/// The other tenant is still served: a query over HTTP answers.
async fn still_served(app: &TestApp, token: &str, slug: &str) {
    let (status, body) = sql(app, token, slug, json!({ "sql": "SELECT 41 + 1 AS answer" })).await;
    assert_eq!((status, &body["rows"][0]["answer"]), (200, &json!(42)), "{slug} not served: {body}");
}

#[tokio::test]
async fn functions_planted_in_an_open_maintenance_database_never_run_as_the_admin() {
    let cluster = shared_cluster();
    // A maintenance database with the PostgreSQL 13/14 defaults: PUBLIC may connect and create.
    let maint = cluster.create_database("maint").await;
    let su = cluster.superuser(&maint).await;
    su.batch_execute(&format!(
        "GRANT CONNECT ON DATABASE {maint} TO PUBLIC; GRANT CREATE ON SCHEMA public TO PUBLIC; \
         CREATE TABLE public.pwned (who text, what text); GRANT INSERT, SELECT ON public.pwned TO PUBLIC"
    ))
    .await
    .unwrap();
    let app = app().without_server().spawn().await;
    let url = cluster.admin_url(&maint);
    // Refused unless the operator accepts the risk.
    let (status, body) = app.post("/v1/servers", &json!({ "name": "open", "url": url })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("server_unsafe")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("REVOKE CREATE ON SCHEMA"), "{body}");
    let (status, body) = app
        .post("/v1/servers", &json!({ "name": "open", "url": url, "allow_public_maintenance_db": true }))
        .await;
    assert_eq!(status, 201, "{body}");

    // Mallory plants look-alikes of every catalog function the daemon calls, in `public`,
    // taking `text` where PostgreSQL's take `name`, so that they win overload resolution
    // for a quoted literal. Each one records who called it.
    let (_, details) = tenant(&app, "mallory").await;
    let mallory = connect_as(&details, Some(&maint)).await.expect("PUBLIC may connect here");
    let record = "INSERT INTO public.pwned VALUES (current_user, '{name}'); ";
    let mut plant = String::new();
    for (name, args, returns, value) in [
        ("shobj_description", "oid, text", "text", "NULL"),
        ("has_database_privilege", "text, text, text", "boolean", "false"),
        ("has_schema_privilege", "text, text, text", "boolean", "true"),
        ("current_setting", "text", "text", "'150000'"),
        ("pg_terminate_backend", "integer", "boolean", "false"),
        ("pg_has_role", "name, oid, text", "boolean", "true"),
    ] {
        plant.push_str(&format!(
            "CREATE FUNCTION public.{name}({args}) RETURNS {returns} LANGUAGE sql AS $f$ {} SELECT {value} $f$; ",
            record.replace("{name}", name)
        ));
    }
    mallory.batch_execute(&plant).await.expect("plant functions");

    // Everything the daemon does as the admin on that server.
    let (victim_token, _) = tenant(&app, "victim").await;
    for action in ["suspend", "resume"] {
        let (status, body) = app.post(&format!("/v1/tenants/victim/{action}"), &json!({})).await;
        assert_eq!(status, 200, "{action}: {body}");
    }
    still_served(&app, &victim_token, "victim").await;
    let (status, _) = app.request(reqwest::Method::POST, "/v1/tenants/victim/dumps", None).await;
    assert_eq!(status, 200);
    let (status, body) = app.request(reqwest::Method::DELETE, "/v1/tenants/mallory", None).await;
    assert!(status == 202 || status == 422, "{body}");
    let (status, body) = app.patch("/v1/tenants/victim", &json!({ "limits": { "connections": 7 } })).await;
    assert_eq!(status, 200, "{body}");

    let calls: Vec<(String, String)> = su
        .query("SELECT who, what FROM public.pwned", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(calls.is_empty(), "planted functions ran: {calls:?}");
}

#[tokio::test]
async fn a_neighbour_cannot_connect_to_a_database_before_its_lockdown() {
    // The staging database of "newbie" exists for a few seconds before its lockdown.
    let stalled: FaultHook = std::sync::Arc::new(|slug: &str, step: Step, phase: Phase| {
        (slug == "newbie" && step == Step::Database && phase == Phase::After)
            .then(|| Fault::Stall(Duration::from_secs(4)))
    });
    let app = app().faults(stalled).spawn().await;
    let (_, nosy) = tenant(&app, "nosy").await;
    let (status, _) = app.post("/v1/tenants", &json!({ "slug": "newbie" })).await;
    assert_eq!(status, 201);
    let staging = wait_for("the staging database", Duration::from_secs(20), || async {
        let su = shared_cluster().superuser("postgres").await;
        let id: Option<uuid::Uuid> = app
            .catalog()
            .await
            .query_opt("SELECT id FROM tenantd.tenants WHERE slug = 'newbie'", &[])
            .await
            .unwrap()
            .map(|r| r.get(0));
        let name = format!("tenantd_staging_{}", id?.simple());
        let exists = su.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await.unwrap();
        exists.map(|_| name)
    })
    .await;
    let Err(refused) = connect_as(&nosy, Some(&staging)).await else {
        panic!("a neighbour connected to a database being made");
    };
    let message =
        refused.as_db_error().map(|e| e.message().to_owned()).unwrap_or_else(|| refused.to_string());
    assert!(
        message.contains("not currently accepting connections") || message.contains("permission denied"),
        "{message}"
    );
    app.wait_ready("newbie").await;
    // Its final database is closed to the neighbour as well.
    let (_, newbie) = tenant_details(&app, "newbie").await;
    assert!(connect_as(&nosy, Some(newbie["dbname"].as_str().unwrap())).await.is_err());
}

async fn tenant_details(app: &TestApp, slug: &str) -> (u16, Value) {
    app.get(&format!("/v1/tenants/{slug}/connection")).await
}

#[tokio::test]
async fn one_tenant_cannot_take_every_connection_of_the_server() {
    let app = app()
        .configure(|s| {
            s.pools.per_tenant = 2;
            s.pools.max_handles_per_tenant = 1;
            s.limits.connections_per_tenant = 4;
        })
        .spawn()
        .await;
    let (_, hog) = tenant(&app, "hog").await;
    let (calm_token, _) = tenant(&app, "calm").await;
    let mut held = Vec::new();
    let refused = loop {
        match connect_as(&hog, None).await {
            Ok(client) => held.push(client),
            Err(e) => break e,
        }
        assert!(held.len() <= 4, "the connection limit did not hold");
    };
    assert_eq!(held.len(), 4, "exactly the limit");
    let message = refused.as_db_error().map_or_else(|| refused.to_string(), |e| e.message().to_owned());
    assert!(message.contains("too many connections for role"), "{message}");
    still_served(&app, &calm_token, "calm").await;

    // A per-tenant override, applied to the role at once (and visible in the catalog).
    drop(held);
    let (status, body) = app.patch("/v1/tenants/hog", &json!({ "limits": { "connections": 2 } })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["limits_applied"]["connections"], 2, "{body}");
    let su = shared_cluster().superuser("postgres").await;
    let limit: i32 = su
        .query_one("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", &[&hog["user"].as_str().unwrap()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(limit, 2);
    let (status, body) = app.patch("/v1/tenants/hog", &json!({ "limits": { "connections": 0 } })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid")), "{body}");
    let cli = app.cli(&["tenant", "set", "hog", "--connections", "3", "--statement-timeout", "5s"]).await;
    assert_eq!(cli.code, 0, "{cli:?}");
    let (limit, timeout): (i32, Vec<String>) = {
        let row = su
            .query_one(
                "SELECT r.rolconnlimit, coalesce(s.setconfig, '{}') FROM pg_roles r \
                 LEFT JOIN pg_db_role_setting s ON s.setrole = r.oid AND s.setdatabase = 0 WHERE r.rolname = $1",
                &[&hog["user"].as_str().unwrap()],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(limit, 3);
    assert!(timeout.contains(&"statement_timeout=5000".to_owned()), "{timeout:?}");
}

#[tokio::test]
async fn a_tenant_holding_its_own_role_row_cannot_stop_a_suspension_or_a_deletion() {
    let app = crate::common::spawn_app().await;
    let (_, stubborn) = tenant(&app, "stubborn").await;
    let (calm_token, _) = tenant(&app, "calm2").await;
    for finish in ["suspend", "delete"] {
        if finish == "delete" {
            let (status, body) = app.post("/v1/tenants/stubborn/resume", &json!({})).await;
            assert_eq!(status, 200, "{body}");
        }
        // An open transaction that holds the role's row: NOLOGIN would wait on it for ever.
        let holder = connect_as(&stubborn, None).await.unwrap();
        holder.batch_execute("BEGIN; ALTER ROLE CURRENT_USER PASSWORD 'mine-now'").await.unwrap();
        let started = Instant::now();
        let (status, body) = if finish == "suspend" {
            app.post("/v1/tenants/stubborn/suspend", &json!({})).await
        } else {
            app.request(reqwest::Method::DELETE, "/v1/tenants/stubborn", None).await
        };
        assert!(status == 200 || status == 202, "{finish}: {body}");
        let goal = if finish == "suspend" { "SUSPENDED" } else { "DELETED" };
        app.wait_tenant("stubborn", goal, Duration::from_secs(30), |t| t["status"] == goal).await;
        assert!(started.elapsed() < Duration::from_secs(25), "{finish} took {:?}", started.elapsed());
        assert!(holder.simple_query("SELECT 1").await.is_err(), "the holding session was ended");
        // The admin's pooled connections are not stuck behind it: provisioning goes on.
        let slug = format!("after-{finish}");
        tenant(&app, &slug).await;
        still_served(&app, &calm_token, "calm2").await;
    }
}

#[tokio::test]
async fn a_tenant_cannot_lift_the_deadline_of_sql_over_http() {
    let app = app().configure(|s| s.pools.statement_timeout = Duration::from_secs(1)).spawn().await;
    let (token, _) = tenant(&app, "sleeper").await;
    let started = Instant::now();
    let (status, body) = sql(
        &app,
        &token,
        "sleeper",
        json!({ "statements": [{ "sql": "SET LOCAL statement_timeout = 0" }, { "sql": "SELECT pg_sleep(10)" }] }),
    )
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (408, Some("statement_timeout")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(8), "cancelled at the deadline: {:?}", started.elapsed());
    still_served(&app, &token, "sleeper").await;
}

#[tokio::test]
async fn huge_values_are_refused_before_they_are_read_into_memory() {
    let builder = app().without_server();
    let app = builder.spawn().await;
    // The ten requests share the tenant's five connections: the later ones wait their turn
    // (on a busy machine a turn can take seconds).
    let daemon = ProcessDaemon::start(&app, &[("TENANTD_POOLS_ACQUIRE_TIMEOUT", "50s")]).await;
    let admin_token = app.admin_token.clone();
    let (status, body) = daemon
        .post(
            &admin_token,
            "/v1/servers",
            &json!({ "name": "pg1", "url": shared_cluster().admin_url("postgres") }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, created) =
        daemon.post(&admin_token, "/v1/tenants?wait=50", &json!({ "slug": "greedy" })).await;
    assert_eq!(created["status"], "READY", "{status} {created}");
    let token = created["token"].as_str().unwrap().to_owned();
    let memory = |field: &str| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    // Warm up: a normal query, so pools and buffers exist before the baseline.
    let (status, _) = daemon.post(&token, "/v1/tenants/greedy/sql", &json!({ "sql": "SELECT 1" })).await;
    assert_eq!(status, 200);
    let idle = memory("VmRSS:");
    let greedy = json!({ "sql": "SELECT repeat('x', 300000000) AS big" });
    let requests = (0..10).map(|_| daemon.post(&token, "/v1/tenants/greedy/sql", &greedy));
    for (status, body) in futures::future::join_all(requests).await {
        assert_eq!((status, body["error"]["code"].as_str()), (413, Some("result_too_large")), "{body}");
    }
    let peak = memory("VmHWM:");
    assert!(
        peak < idle + 256 * 1024 * 1024,
        "peak RSS {} MiB over an idle {} MiB",
        peak / (1 << 20),
        idle / (1 << 20)
    );
    let (status, body) =
        daemon.post(&token, "/v1/tenants/greedy/sql", &json!({ "sql": "SELECT 2 AS two" })).await;
    assert_eq!((status, &body["rows"][0]["two"]), (200, &json!(2)), "{body}");
}

#[tokio::test]
async fn the_reset_between_borrowers_keeps_the_drivers_type_lookups_working() {
    let app = app().one_connection_per_tenant().spawn().await;
    let (token, _) = tenant(&app, "enums").await;
    for ddl in ["CREATE TYPE e1 AS ENUM ('a')", "CREATE TYPE e2 AS ENUM ('b')"] {
        let (status, body) = sql(&app, &token, "enums", json!({ "sql": ddl })).await;
        assert_eq!(status, 200, "{body}");
    }
    // The same (only) connection each time: the first lookup prepares the driver's type query,
    // the reset runs between the requests, the second lookup uses that query again.
    let (status, body) = sql(&app, &token, "enums", json!({ "sql": "SELECT 'a'::e1 AS v" })).await;
    assert_eq!((status, &body["rows"][0]["v"]), (200, &json!("a")), "{body}");
    let (status, body) = sql(&app, &token, "enums", json!({ "sql": "SELECT 'b'::e2 AS v" })).await;
    assert_eq!((status, &body["rows"][0]["v"]), (200, &json!("b")), "{body}");
    // What one borrower prepared is gone for the next.
    let (status, _) = sql(&app, &token, "enums", json!({ "sql": "PREPARE mine AS SELECT 1" })).await;
    assert_eq!(status, 200);
    let (status, body) = sql(&app, &token, "enums", json!({ "sql": "EXECUTE mine" })).await;
    assert_eq!((status, body["error"]["sqlstate"].as_str()), (400, Some("26000")), "{body}");

    // (That 26000 replaced the connection too: the missing statement might have been the
    // driver's.) The tenant drops every prepared statement of its session, the driver's type
    // lookup included. The driver never prepares it again, so the next lookup of a type fails
    // once; the connection is then replaced, and the request after that works.
    let pid = async || {
        let (status, body) =
            sql(&app, &token, "enums", json!({ "sql": "SELECT pg_backend_pid() AS pid" })).await;
        assert_eq!(status, 200, "{body}");
        body["rows"][0]["pid"].clone()
    };
    let before = pid().await;
    for step in ["SELECT 'a'::e1 AS v", "DEALLOCATE ALL", "CREATE TYPE e3 AS ENUM ('c')"] {
        let (status, body) = sql(&app, &token, "enums", json!({ "sql": step })).await;
        assert_eq!(status, 200, "{step}: {body}");
    }
    let (status, body) = sql(&app, &token, "enums", json!({ "sql": "SELECT 'c'::e3 AS v" })).await;
    assert_eq!((status, body["error"]["sqlstate"].as_str()), (400, Some("26000")), "{body}");
    let (status, body) = sql(&app, &token, "enums", json!({ "sql": "SELECT 'c'::e3 AS v" })).await;
    assert_eq!((status, &body["rows"][0]["v"]), (200, &json!("c")), "a fresh connection: {body}");
    let replaced = pid().await;
    assert_ne!(replaced, before, "the connection was replaced");

    // A statement under a name of the driver's kind may have stood in for one of its type
    // lookups, whose answers the driver keeps: the connection is replaced after that lending.
    let (status, body) = sql(&app, &token, "enums", json!({ "sql": "PREPARE s99 AS SELECT 1" })).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(pid().await, replaced, "replaced again");
}

#[tokio::test]
async fn a_tenant_holding_locks_fails_its_own_dump_and_upgrade_and_the_fleet_goes_on() {
    let newer = tenantd::tenant_migrations::MigrationSet::embedded()
        .with(
            &format!("V{}__note", tenantd::tenant_migrations::latest_version() + 1),
            "ALTER TABLE customers ADD COLUMN note text",
        )
        .unwrap();
    // Tenants made by this build, then a newer build's daemon upgrades them.
    let old = crate::common::spawn_app().await;
    let (_, locker) = tenant(&old, "locker").await;
    let (others_token, _) = tenant(&old, "others").await;
    let app = app().same_catalog_as(&old).migrations(newer).spawn().await;
    let holder = connect_as(&locker, None).await.unwrap();
    holder.batch_execute("BEGIN; LOCK TABLE customers IN ACCESS EXCLUSIVE MODE").await.unwrap();

    let started = Instant::now();
    let (status, body) = app.request(reqwest::Method::POST, "/v1/tenants/locker/dumps", None).await;
    assert!(status >= 400, "the dump cannot succeed while the tenant holds the lock: {body}");
    assert!(started.elapsed() < Duration::from_secs(30), "bounded wait: {:?}", started.elapsed());

    let (status, run) = app.post("/v1/migrations", &json!({ "all": true, "concurrency": 2 })).await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().unwrap().to_owned();
    let finished = wait_for("the upgrade run", Duration::from_secs(60), || async {
        let (_, body) = app.get(&format!("/v1/migrations/{id}")).await;
        (body["run"]["status"] != "running").then_some(body)
    })
    .await;
    let outcome = |slug: &str| {
        finished["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["slug"] == slug)
            .cloned()
            .unwrap_or_else(|| panic!("no result for {slug}: {finished}"))
    };
    assert_eq!(outcome("others")["outcome"], "upgraded", "{finished}");
    let failed = outcome("locker");
    assert_eq!(failed["outcome"], "failed", "{finished}");
    assert!(failed["detail"].as_str().unwrap().contains("lock"), "a clear reason: {failed}");
    still_served(&app, &others_token, "others").await;
    holder.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn forged_notifications_do_not_close_another_tenants_connections() {
    let app = crate::common::spawn_app().await;
    // A catalog that PUBLIC may connect to (co-located with the tenants, default grants).
    shared_cluster()
        .superuser("postgres")
        .await
        .batch_execute(&format!("GRANT CONNECT ON DATABASE {} TO PUBLIC", app.catalog_db))
        .await
        .unwrap();
    let (_, forger) = tenant(&app, "forger").await;
    let (token, _) = tenant(&app, "target").await;
    let (status, opened) = app
        .request_as(reqwest::Method::POST, "/v1/tenants/target/handles", Some(&json!({})), Some(&token))
        .await;
    assert_eq!(status, 201, "{opened}");
    let handle = format!("/v1/handles/{}/sql", opened["handle"].as_str().unwrap());
    let notifier =
        connect_as(&forger, Some(&app.catalog_db)).await.expect("PUBLIC may connect to this catalog");
    let payload = json!({ "table": "tenants", "op": "UPDATE", "key": "target", "status": "SUSPENDED" });
    notifier.execute("SELECT pg_notify('tenantd', $1)", &[&payload.to_string()]).await.unwrap();
    // The watcher re-reads the catalog: the tenant is READY, so nothing is closed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = app
        .request_as(reqwest::Method::POST, &handle, Some(&json!({ "sql": "SELECT 1 AS one" })), Some(&token))
        .await;
    assert_eq!(status, 200, "the handle was closed by a forged notification: {body}");
}

#[tokio::test]
async fn a_database_name_written_into_the_catalog_is_never_used_as_a_connection_string() {
    let app = crate::common::spawn_app().await;
    let prefix = app.settings.names.prefix.clone();
    let role = format!("{prefix}evil");
    app.catalog()
        .await
        .execute(
            "INSERT INTO tenantd.tenants (slug, database_name, role_name) VALUES ('evil', $1, $2)",
            &[&"host=127.0.0.1 port=1 dbname=postgres", &role],
        )
        .await
        .unwrap();
    let tenant = app.wait_tenant("evil", "ERROR", Duration::from_secs(30), |t| t["status"] == "ERROR").await;
    let error = tenant["last_error"].as_str().unwrap();
    assert!(error.contains("database_name"), "{error}");
    let su = shared_cluster().superuser("postgres").await;
    let made = su.query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role]).await.unwrap();
    assert!(made.is_none(), "nothing was created for a bad row");
}

#[tokio::test]
async fn a_chain_of_thousands_of_domains_is_refused_and_the_daemon_stays_up() {
    let app = crate::common::spawn_app().await;
    let (token, details) = tenant(&app, "deep").await;
    let (other, _) = tenant(&app, "shallow").await;
    let direct = connect_as(&details, None).await.unwrap();
    direct
        .batch_execute(
            "DO $$ BEGIN CREATE DOMAIN d0 AS int; \
             FOR i IN 1..3000 LOOP EXECUTE format('CREATE DOMAIN d%s AS d%s', i, i - 1); END LOOP; END $$",
        )
        .await
        .unwrap();
    let (status, body) =
        sql(&app, &token, "deep", json!({ "sql": "SELECT $1::d3000 AS v", "params": [5] })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_sql_request")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("nested"), "{body}");
    // Anonymous records nested in the select list are refused at a fixed depth too.
    let deep_row = format!("SELECT {}1{} AS v", "row(".repeat(500), ")".repeat(500));
    let (status, body) = sql(&app, &token, "deep", json!({ "sql": deep_row })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_sql_request")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("nested"), "{body}");
    // Shallow domains still work, for this tenant and the others.
    let (status, body) =
        sql(&app, &token, "deep", json!({ "sql": "SELECT $1::d3 AS v", "params": [5] })).await;
    assert_eq!((status, &body["rows"][0]["v"]), (200, &json!(5)), "{body}");
    still_served(&app, &other, "shallow").await;
}

#[tokio::test]
async fn a_signup_role_may_ask_for_tenants_and_do_nothing_else() {
    let app = crate::common::spawn_app().await;
    let role = format!("signup_{}", crate::common::random_suffix());
    let su = shared_cluster().superuser(&app.catalog_db).await;
    // README's grants, as the operator would run them.
    su.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'signup-pw'; GRANT CONNECT ON DATABASE {db} TO {role}; \
         GRANT USAGE ON SCHEMA tenantd TO {role}; \
         GRANT INSERT (slug, labels, requested_server, requested_region) ON tenantd.tenants TO {role}",
        db = app.catalog_db
    ))
    .await
    .unwrap();
    let signup =
        crate::common::connect(&shared_cluster().url(&role, "signup-pw", &app.catalog_db)).await.unwrap();
    signup
        .execute(
            "INSERT INTO tenantd.tenants (slug, labels) VALUES ('from-signup', '{\"plan\": \"pro\"}')",
            &[],
        )
        .await
        .expect("a sign-up system may ask for a tenant");
    app.wait_ready("from-signup").await;
    for forbidden in [
        "SELECT role_password_sealed FROM tenantd.tenants",
        "UPDATE tenantd.tenants SET status = 'DELETING'",
        "INSERT INTO tenantd.tenants (slug, database_name) VALUES ('sneaky', 'postgres')",
        "SELECT * FROM tenantd.servers",
    ] {
        let refused = signup.batch_execute(forbidden).await.expect_err(forbidden);
        assert_eq!(
            refused.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{forbidden}"
        );
    }
}

#[tokio::test]
async fn a_tenant_over_its_storage_quota_is_read_only_until_it_is_under_again() {
    let app = app()
        .configure(|s| {
            s.limits.max_database_bytes = 1 << 30;
            s.limits.quota_check_interval = Duration::from_millis(300);
        })
        .spawn()
        .await;
    let (token, details) = tenant(&app, "hoarder").await;
    let (calm, _) = tenant(&app, "frugal").await;
    let direct = connect_as(&details, None).await.unwrap();
    direct
        .batch_execute(
            "CREATE TABLE big AS SELECT g, md5(g::text) || md5((g + 1)::text) AS v FROM generate_series(1, 100000) g",
        )
        .await
        .unwrap();
    // Its quota becomes smaller than what it holds (as a growing tenant would cross it).
    let (status, body) =
        app.patch("/v1/tenants/hoarder", &json!({ "limits": { "max_database_bytes": 12 << 20 } })).await;
    assert_eq!(status, 200, "{body}");
    let over =
        app.wait_tenant("hoarder", "over quota", Duration::from_secs(30), |t| t["over_quota"] == true).await;
    assert!(over["database_bytes"].as_i64().unwrap() > 12 << 20, "{over}");
    // Writes are refused with a clear code; reads go on; neighbours are untouched.
    let (status, body) =
        sql(&app, &token, "hoarder", json!({ "sql": "INSERT INTO big VALUES (0, 'x')" })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (507, Some("over_quota")), "{body}");
    let (status, body) =
        sql(&app, &token, "hoarder", json!({ "sql": "SELECT count(*) AS n FROM big" })).await;
    assert_eq!((status, &body["rows"][0]["n"]), (200, &json!("100000")), "{body}");
    still_served(&app, &calm, "frugal").await;
    // The direct session was ended; a new one starts read-only.
    assert!(direct.simple_query("SELECT 1").await.is_err(), "the session from before was ended");
    let again = connect_as(&details, None).await.unwrap();
    let refused = again.batch_execute("INSERT INTO big VALUES (0, 'x')").await.expect_err("read-only");
    assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION));
    // A larger quota for this tenant: writable again, and each transition recorded once.
    let (status, body) =
        app.patch("/v1/tenants/hoarder", &json!({ "limits": { "max_database_bytes": 1u64 << 30 } })).await;
    assert_eq!(status, 200, "{body}");
    app.wait_tenant("hoarder", "under quota", Duration::from_secs(30), |t| t["over_quota"] == false).await;
    let (status, body) =
        sql(&app, &token, "hoarder", json!({ "sql": "INSERT INTO big VALUES (0, 'x')" })).await;
    assert_eq!(status, 200, "{body}");
    let (_, events) = app.get("/v1/tenants/hoarder/events").await;
    let kinds: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "quota.exceeded").count(), 1, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "quota.ok").count(), 1, "{kinds:?}");
}

#[tokio::test]
async fn a_flood_of_requests_is_turned_away_while_probes_still_answer() {
    let app = app()
        .configure(|s| {
            s.http.max_concurrent_requests = 2;
            s.pools.per_tenant = 5;
        })
        .spawn()
        .await;
    let (token, _) = tenant(&app, "flooder").await;
    let slow = json!({ "sql": "SELECT pg_sleep(1)" });
    let flood = (0..6).map(|_| sql(&app, &token, "flooder", slow.clone()));
    let (answers, probe) = tokio::join!(futures::future::join_all(flood), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.get("/healthz").await
    });
    let busy =
        answers.iter().filter(|(status, body)| *status == 503 && body["error"]["code"] == "busy").count();
    let served = answers.iter().filter(|(status, _)| *status == 200).count();
    assert!(busy >= 4 && served >= 1, "{answers:?}");
    assert_eq!(probe.0, 200, "probes answer under load");
}

#[tokio::test]
async fn handles_opened_with_a_replaced_token_close_with_it() {
    let app = app().configure(|s| s.pools.max_handles_per_tenant = 1).spawn().await;
    let (old_token, _) = tenant(&app, "rotated").await;
    let (status, opened) = app
        .request_as(reqwest::Method::POST, "/v1/tenants/rotated/handles", Some(&json!({})), Some(&old_token))
        .await;
    assert_eq!(status, 201, "{opened}");
    let handle = format!("/v1/handles/{}/sql", opened["handle"].as_str().unwrap());
    let (status, rotated) = app.post("/v1/tenants/rotated/tokens", &json!({})).await;
    assert_eq!(status, 201, "{rotated}");
    let new_token = rotated["token"].as_str().unwrap().to_owned();
    // The old handle is gone (even for the admin), and does not hold the tenant's one handle.
    let (status, _) = app.request(reqwest::Method::POST, &handle, Some(&json!({ "sql": "SELECT 1" }))).await;
    assert_eq!(status, 404);
    let (status, body) = app
        .request_as(reqwest::Method::POST, "/v1/tenants/rotated/handles", Some(&json!({})), Some(&new_token))
        .await;
    assert_eq!(status, 201, "the new token gets the tenant's handle: {body}");
    // The admin may close a tenant's handle.
    let id = body["handle"].as_str().unwrap();
    let (status, _) = app.request(reqwest::Method::DELETE, &format!("/v1/handles/{id}"), None).await;
    assert_eq!(status, 204);
}

#[tokio::test]
async fn a_statement_that_swallows_its_cancel_is_ended_on_the_server() {
    let app = app().configure(|s| s.pools.statement_timeout = Duration::from_secs(1)).spawn().await;
    let (token, details) = tenant(&app, "swallower").await;
    let direct = connect_as(&details, None).await.unwrap();
    direct
        .batch_execute(
            "CREATE FUNCTION stubborn() RETURNS void LANGUAGE plpgsql AS $$ BEGIN LOOP \
               BEGIN PERFORM pg_sleep(0.1); EXCEPTION WHEN query_canceled THEN NULL; END; \
             END LOOP; END $$",
        )
        .await
        .unwrap();
    drop(direct);
    let started = Instant::now();
    let (status, body) = sql(&app, &token, "swallower", json!({ "sql": "SELECT stubborn()" })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (408, Some("statement_timeout")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered at the deadline: {:?}", started.elapsed());
    // The cancel request is swallowed; the backend is ended on the server shortly after.
    let role = details["user"].as_str().unwrap().to_owned();
    wait_for("the stubborn backend to be ended", Duration::from_secs(20), || {
        let role = role.clone();
        async move {
            let su = shared_cluster().superuser("postgres").await;
            let n: i64 = su
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'active' \
                     AND query LIKE 'SELECT stubborn()%'",
                    &[&role],
                )
                .await
                .unwrap()
                .get(0);
            (n == 0).then_some(())
        }
    })
    .await;
    still_served(&app, &token, "swallower").await;
}

#[tokio::test]
async fn tenants_made_before_their_limits_get_them_from_a_daemon() {
    let first = crate::common::spawn_app().await;
    let (_, details) = tenant(&first, "elder").await;
    let role = details["user"].as_str().unwrap().to_owned();
    // As if made by a build without limits: no connection limit, nothing applied.
    let su = shared_cluster().superuser("postgres").await;
    su.batch_execute(&format!("ALTER ROLE \"{role}\" CONNECTION LIMIT -1")).await.unwrap();
    first.catalog().await.execute("UPDATE tenantd.tenants SET limits_applied = NULL", &[]).await.unwrap();
    // A daemon that starts brings the role in line at once.
    let _second =
        app().same_catalog_as(&first).configure(|s| s.limits.connections_per_tenant = 9).spawn().await;
    // The role first, then the catalog's record of it (a moment later on a busy machine).
    wait_for("the limits to be applied and recorded", Duration::from_secs(20), || async {
        let limit: i32 = su
            .query_one("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .unwrap()
            .get(0);
        let (_, elder) = first.get("/v1/tenants/elder").await;
        (limit == 9 && elder["limits_applied"]["connections"] == 9).then_some(())
    })
    .await;
}

#[tokio::test]
async fn odd_methods_and_unknown_routes_do_not_make_new_metric_series() {
    let app = crate::common::spawn_app().await;
    for method in ["FOOBAR", "BREW", "X-SERIES-7"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = app
            .http
            .request(method, format!("{}/v1/nothing-{}", app.base, crate::common::random_suffix()))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_client_error());
    }
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(
        !metrics.contains("FOOBAR") && !metrics.contains("BREW") && !metrics.contains("nothing-"),
        "{metrics}"
    );
    assert!(metrics.contains("method=\"other\""), "odd methods fold into one label");
}
