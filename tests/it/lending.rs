//! Lending: SQL over HTTP, handles, connection details and tokens — bounded, clean between
//! borrowers, and confined to each tenant's own database.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{TestApp, app, shared_cluster, spawn_app, wait_for};
use reqwest::Method;
use serde_json::{Value, json};

/// Creates a READY tenant; returns its token.
async fn ready_tenant(app: &TestApp, slug: &str) -> String {
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": slug })).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "READY", "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn sql_as(app: &TestApp, token: &str, slug: &str, body: Value) -> (u16, Value) {
    app.request_as(Method::POST, &format!("/v1/tenants/{slug}/sql"), Some(&body), Some(token)).await
}

#[tokio::test]
async fn sql_over_http_returns_typed_rows() {
    let app = spawn_app().await;
    let token = ready_tenant(&app, "shop").await;
    let (status, body) = sql_as(
        &app,
        &token,
        "shop",
        json!({
            "statements": [
                { "sql": "INSERT INTO products (sku, name, price, attributes) VALUES ($1, $2, $3, $4)",
                  "params": ["SKU-1", "Tea", "12.50", { "origin": "Assam" }] },
                { "sql": "SELECT id, sku, price, attributes, created_at, 9223372036854775807::int8 AS big, \
                          ARRAY[1,2] AS arr, '\\x0102'::bytea AS raw FROM products" }
            ]
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let insert = &body["results"][0];
    assert_eq!((insert["command"].as_str(), insert["row_count"].as_u64()), (Some("INSERT"), Some(1)));
    let select = &body["results"][1];
    let row = &select["rows"][0];
    assert_eq!(row["sku"], "SKU-1");
    assert_eq!(row["price"], "12.50", "numeric as a string");
    assert_eq!(row["big"], "9223372036854775807", "int8 as a string");
    assert_eq!(row["attributes"]["origin"], "Assam", "jsonb as JSON");
    assert_eq!(row["arr"], json!([1, 2]));
    assert_eq!(row["raw"], "\\x0102");
    assert!(chrono::DateTime::parse_from_rfc3339(row["created_at"].as_str().unwrap()).is_ok(), "{row}");
    let types: Vec<&str> =
        select["columns"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(&types[..4], ["int8", "text", "numeric", "jsonb"]);
}

#[tokio::test]
async fn sql_errors_are_client_errors_with_sqlstate() {
    let app = spawn_app().await;
    let token = ready_tenant(&app, "errs").await;
    let cases = [
        (json!({ "sql": "SELEC 1" }), 400, "42601"),
        (json!({ "sql": "INSERT INTO customers (email, name) VALUES ('a@b', '')" }), 409, "23514"),
        (json!({ "sql": "SELECT * FROM nowhere" }), 400, "42P01"),
        (json!({ "sql": "CREATE DATABASE escape" }), 403, "42501"),
    ];
    for (body, want_status, want_state) in cases {
        let (status, answer) = sql_as(&app, &token, "errs", body.clone()).await;
        assert_eq!(status, want_status, "{body}: {answer}");
        assert_eq!(answer["error"]["sqlstate"], want_state, "{answer}");
        assert_eq!(answer["error"]["code"], "sql_error");
    }
    let (_, syntax) = sql_as(&app, &token, "errs", json!({ "sql": "SELECT 1 FROM" })).await;
    assert!(syntax["error"]["position"].as_u64().is_some(), "{syntax}");
    let (status, dup) = sql_as(
        &app,
        &token,
        "errs",
        json!({ "statements": [
            { "sql": "INSERT INTO products (sku, name, price) VALUES ('x', 'x', 1)" },
            { "sql": "INSERT INTO products (sku, name, price) VALUES ('x', 'x', 1)" }
        ]}),
    )
    .await;
    assert_eq!((status, dup["error"]["sqlstate"].as_str()), (409, Some("23505")), "{dup}");
    assert!(dup["error"]["detail"].as_str().unwrap().contains("(sku)=(x)"), "{dup}");
    let (_, count) =
        sql_as(&app, &token, "errs", json!({ "sql": "SELECT count(*) AS n FROM products" })).await;
    assert_eq!(count["rows"][0]["n"], "0", "the list ran in one transaction: {count}");

    let bad = [
        json!({ "sql": "SELECT $1::int", "params": [] }),
        json!({ "sql": "SELECT $1::int", "params": ["nope"] }),
        json!({ "sql": "SELECT 1", "colour": "red" }),
        json!({ "statements": "SELECT 1" }),
    ];
    for body in bad {
        let (status, answer) = sql_as(&app, &token, "errs", body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
    }
    let (status, answer) = sql_as(&app, &token, "nobody", json!({ "sql": "SELECT 1" })).await;
    assert_eq!(status, 403, "a tenant token reaches only its own tenant: {answer}");
    let (status, _) = app.post("/v1/tenants/nobody/sql", &json!({ "sql": "SELECT 1" })).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn tenants_cannot_reach_each_other() {
    let app = spawn_app().await;
    let alpha = ready_tenant(&app, "alpha").await;
    let beta = ready_tenant(&app, "beta").await;
    let (status, body) = sql_as(&app, &alpha, "beta", json!({ "sql": "SELECT 1" })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, _) = app.request_as(Method::GET, "/v1/tenants/beta/connection", None, Some(&alpha)).await;
    assert_eq!(status, 403);
    let (status, _) = app.request_as(Method::GET, "/v1/tenants", None, Some(&alpha)).await;
    assert_eq!(status, 401, "a tenant token is not an admin token");

    // With its own credentials, alpha's role cannot even connect to beta's database.
    let (_, a) = app.request_as(Method::GET, "/v1/tenants/alpha/connection", None, Some(&alpha)).await;
    let (_, b) = app.request_as(Method::GET, "/v1/tenants/beta/connection", None, Some(&beta)).await;
    let own = crate::common::connect(a["url"].as_str().unwrap()).await.expect("own database");
    let n: i32 = own.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    let cross = shared_cluster().url(
        a["user"].as_str().unwrap(),
        a["password"].as_str().unwrap(),
        b["dbname"].as_str().unwrap(),
    );
    let refused = crate::common::connect(&cross).await.unwrap_err();
    assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{refused}");
    let maintenance =
        shared_cluster().url(a["user"].as_str().unwrap(), a["password"].as_str().unwrap(), "postgres");
    let refused = crate::common::connect(&maintenance).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "nor to the maintenance database: {refused}"
    );

    // The CLI gives the same details.
    let cli = app.cli(&["tenant", "connection", "alpha"]).await;
    assert_eq!(cli.code, 0, "{cli:?}");
    assert_eq!(cli.stdout.trim(), a["url"].as_str().unwrap());
}

#[tokio::test]
async fn a_handle_holds_a_transaction_invisible_to_others_until_commit() {
    let app = spawn_app().await;
    let token = ready_tenant(&app, "txn").await;
    let (status, opened) = app
        .request_as(
            Method::POST,
            "/v1/tenants/txn/handles",
            Some(&json!({ "ttl_seconds": 30 })),
            Some(&token),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    let handle = opened["handle"].as_str().unwrap();
    let on_handle = |sql: &'static str| {
        let path = format!("/v1/handles/{handle}/sql");
        let token = token.clone();
        let app = &app;
        async move { app.request_as(Method::POST, &path, Some(&json!({ "sql": sql })), Some(&token)).await }
    };
    assert_eq!(on_handle("BEGIN").await.0, 200);
    let (status, body) =
        on_handle("INSERT INTO customers (email, name) VALUES ('ann@example.com', 'Ann')").await;
    assert_eq!(status, 200, "{body}");
    let count = || sql_as(&app, &token, "txn", json!({ "sql": "SELECT count(*) AS n FROM customers" }));
    assert_eq!(count().await.1["rows"][0]["n"], "0", "not visible before COMMIT");
    assert_eq!(on_handle("COMMIT").await.0, 200);
    assert_eq!(count().await.1["rows"][0]["n"], "1", "visible after COMMIT");

    // Handles belong to the token that opened them.
    let (status, _) = app
        .request_as(
            Method::POST,
            &format!("/v1/handles/{handle}/sql"),
            Some(&json!({ "sql": "SELECT 1" })),
            Some(&app.admin_token),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) =
        app.request_as(Method::DELETE, &format!("/v1/handles/{handle}"), None, Some(&token)).await;
    assert_eq!(status, 204);
    let (status, body) = on_handle("SELECT 1").await;
    assert_eq!(status, 404, "closed handle: {body}");
    let (status, _) = app
        .request_as(
            Method::POST,
            "/v1/handles/h_unknown/sql",
            Some(&json!({ "sql": "SELECT 1" })),
            Some(&token),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn state_left_on_a_connection_never_reaches_the_next_borrower() {
    // One connection per tenant: the next borrower gets the very same session.
    let app = app().one_connection_per_tenant().spawn().await;
    let token = ready_tenant(&app, "clean").await;
    let (_, opened) = app.request_as(Method::POST, "/v1/tenants/clean/handles", None, Some(&token)).await;
    let handle = opened["handle"].as_str().unwrap().to_owned();
    let path = format!("/v1/handles/{handle}/sql");
    let pid = app
        .request_as(
            Method::POST,
            &path,
            Some(&json!({ "sql": "SELECT pg_backend_pid() AS pid" })),
            Some(&token),
        )
        .await
        .1["rows"][0]["pid"]
        .clone();
    for sql in [
        "SET search_path TO pg_catalog",
        "SET application_name TO 'dirty'",
        "CREATE TEMP TABLE scratch (x int)",
        "SELECT pg_advisory_lock(42)",
        "LISTEN gossip",
        "PREPARE leftover AS SELECT 1",
        "BEGIN",
        "INSERT INTO public.customers (email, name) VALUES ('ghost@example.com', 'Ghost')",
    ] {
        let (status, body) =
            app.request_as(Method::POST, &path, Some(&json!({ "sql": sql })), Some(&token)).await;
        assert_eq!(status, 200, "{sql}: {body}");
    }
    // Released with the transaction still open.
    app.request_as(Method::DELETE, &format!("/v1/handles/{handle}"), None, Some(&token)).await;

    let (status, body) = sql_as(
        &app,
        &token,
        "clean",
        json!({ "sql": "SELECT pg_backend_pid() AS pid, current_setting('search_path') AS path, \
                        current_setting('application_name') AS app, \
                        (SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't') AS temp, \
                        (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks, \
                        (SELECT count(*) FROM pg_listening_channels()) AS listening, \
                        (SELECT count(*) FROM pg_prepared_statements WHERE name = 'leftover') AS prepared, \
                        (SELECT count(*) FROM customers) AS customers" }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let row = &body["rows"][0];
    assert_eq!(row["pid"], pid, "same session reused (the test would prove nothing otherwise)");
    assert_eq!(row["path"], "\"$user\", public");
    assert_eq!(row["app"], "tenantd-lend");
    assert_eq!(row["temp"], "0");
    assert_eq!(row["locks"], "0");
    assert_eq!(row["listening"], "0");
    assert_eq!(row["prepared"], "0");
    assert_eq!(row["customers"], "0", "the open transaction was rolled back");
}

/// The SQL endpoint sends a connection's reset right behind a single statement, before its
/// answer is read. Whatever a single statement leaves on its session is gone at the next
/// request on that session, including what a kept statement did when it went stale and was
/// prepared and run again after the reset sent behind its first attempt.
#[tokio::test]
async fn state_left_by_single_statements_never_reaches_the_next_request() {
    let app = app().one_connection_per_tenant().spawn().await;
    let token = ready_tenant(&app, "behind").await;
    let probe = json!({ "sql": "SELECT pg_backend_pid() AS pid, current_setting('application_name') AS app, \
        current_setting('search_path') AS path, \
        (SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't') AS temp, \
        (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks, \
        (SELECT count(*) FROM pg_listening_channels()) AS listening, \
        (SELECT count(*) FROM pg_prepared_statements WHERE from_sql) AS prepared, \
        (SELECT count(*) FROM pg_cursors WHERE is_holdable) AS cursors" });
    let (status, first) = sql_as(&app, &token, "behind", probe.clone()).await;
    assert_eq!(status, 200, "{first}");
    let pid = first["rows"][0]["pid"].clone();
    let assert_clean = |body: &Value, after: &str| {
        let row = &body["rows"][0];
        assert_eq!(
            row["pid"], pid,
            "after {after}: same session reused (the test would prove nothing otherwise)"
        );
        let clean = json!({ "pid": pid, "app": "tenantd-lend", "path": "\"$user\", public", "temp": "0",
            "locks": "0", "listening": "0", "prepared": "0", "cursors": "0" });
        assert_eq!(row, &clean, "after {after}");
    };
    for sql in [
        "SELECT set_config('application_name', 'dirty', false)",
        "SET search_path TO pg_catalog",
        "CREATE TEMP TABLE scratch (x int)",
        "SELECT pg_advisory_lock(42)",
        "LISTEN gossip",
        "PREPARE leftover AS SELECT 1",
        "DECLARE kept_open CURSOR WITH HOLD FOR SELECT 1",
    ] {
        let (status, body) = sql_as(&app, &token, "behind", json!({ "sql": sql })).await;
        assert_eq!(status, 200, "{sql}: {body}");
        let (status, body) = sql_as(&app, &token, "behind", probe.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert_clean(&body, sql);
    }

    let (status, body) =
        sql_as(&app, &token, "behind", json!({ "sql": "CREATE TABLE shape AS SELECT 1 AS a" })).await;
    assert_eq!(status, 200, "{body}");
    // Prepares a statement under a new name each time it runs (SQL `PREPARE` through a function):
    // only the listing of the reset sent after the retry can find the one its retry makes.
    let function = "CREATE FUNCTION prepare_one() RETURNS int LANGUAGE plpgsql AS $$ BEGIN \
        EXECUTE format('PREPARE p%s AS SELECT 1', (SELECT count(*) FROM pg_prepared_statements)); \
        RETURN 1; END $$";
    let (status, body) = sql_as(&app, &token, "behind", json!({ "sql": function })).await;
    assert_eq!(status, 200, "{body}");
    let stale = json!({ "sql": "SELECT set_config('application_name', 'stale', false) AS app, \
        prepare_one() AS prepared, * FROM shape" });
    let (status, body) = sql_as(&app, &token, "behind", stale.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = sql_as(&app, &token, "behind", probe.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_clean(&body, "the statement kept");
    let (status, body) =
        sql_as(&app, &token, "behind", json!({ "sql": "ALTER TABLE shape ADD COLUMN b int" })).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = sql_as(&app, &token, "behind", stale).await;
    assert_eq!(status, 200, "{body}");
    let columns: Vec<&str> =
        body["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        columns,
        ["app", "prepared", "a", "b"],
        "the kept statement went stale and was prepared again: {body}"
    );
    assert_eq!(body["rows"][0]["app"], "stale", "{body}");
    let (status, body) = sql_as(&app, &token, "behind", probe).await;
    assert_eq!(status, 200, "{body}");
    assert_clean(&body, "a kept statement run again after going stale");
}

/// A client that gives up on a slow statement gets it cancelled on the server; the cancel
/// lands on that statement and never on the next request on the same connection, which runs
/// at once.
#[tokio::test]
async fn an_abandoned_request_is_cancelled_and_the_next_one_runs() {
    let app = app().one_connection_per_tenant().spawn().await;
    let token = ready_tenant(&app, "gone").await;
    let url = format!("{}/v1/tenants/gone/sql", app.base);
    let (status, first) =
        sql_as(&app, &token, "gone", json!({ "sql": "SELECT pg_backend_pid() AS pid" })).await;
    assert_eq!(status, 200, "{first}");
    for _ in 0..3 {
        let abandoned = app
            .http
            .post(&url)
            .bearer_auth(&token)
            .json(&json!({ "sql": "SELECT pg_sleep(30)" }))
            .timeout(std::time::Duration::from_millis(300))
            .send()
            .await;
        assert!(abandoned.is_err_and(|e| e.is_timeout()), "the client gave up");
        let started = std::time::Instant::now();
        let (status, body) = sql_as(
            &app,
            &token,
            "gone",
            json!({ "sql": "SELECT pg_backend_pid() AS pid, pg_sleep(0.2)::text AS slept, \
                (SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%') AS sleeping" }),
        )
        .await;
        assert_eq!(status, 200, "the next request is not hit by the cancel: {body}");
        assert_eq!(body["rows"][0]["pid"], first["rows"][0]["pid"], "on the same connection");
        assert_eq!(body["rows"][0]["sleeping"], "0", "the abandoned statement was cancelled");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    }
}

/// The SQL endpoint keeps statements prepared on its connections, and SQL `PREPARE` and
/// `DEALLOCATE` share the protocol's namespace. A tenant that drops a kept statement gets it
/// prepared again on the same connection; one that puts its own statement under a kept one's
/// name gets the connection replaced after that lending. Either way the next request runs
/// what it sent.
#[tokio::test]
async fn a_kept_statement_cannot_be_swapped_for_the_next_request() {
    let app = app().one_connection_per_tenant().spawn().await;
    let token = ready_tenant(&app, "swap").await;
    let genuine = json!({ "sql": "SELECT 'genuine' AS v, pg_backend_pid() AS pid" });
    let (status, first) = sql_as(&app, &token, "swap", genuine.clone()).await;
    assert_eq!((status, &first["rows"][0]["v"]), (200, &json!("genuine")), "{first}");
    let tamper = |forge: &str| {
        format!(
            r#"DO $$
            DECLARE kept text;
            BEGIN
                SELECT name INTO STRICT kept FROM pg_prepared_statements
                 WHERE statement = 'SELECT ''genuine'' AS v, pg_backend_pid() AS pid';
                EXECUTE format('DEALLOCATE %I', kept);
                {forge}
            END $$"#
        )
    };

    let (status, body) = sql_as(&app, &token, "swap", json!({ "sql": tamper("") })).await;
    assert_eq!(status, 200, "the tenant may do this to its own session: {body}");
    let (status, again) = sql_as(&app, &token, "swap", genuine.clone()).await;
    assert_eq!((status, &again["rows"][0]["v"]), (200, &json!("genuine")), "prepared again: {again}");
    assert_eq!(again["rows"][0]["pid"], first["rows"][0]["pid"], "on the same session");

    let forge =
        "EXECUTE format('PREPARE %I AS SELECT ''forged''::text AS v, pg_backend_pid() AS pid', kept);";
    let (status, body) = sql_as(&app, &token, "swap", json!({ "sql": tamper(forge) })).await;
    assert_eq!(status, 200, "{body}");
    let (status, last) = sql_as(&app, &token, "swap", genuine).await;
    assert_eq!((status, &last["rows"][0]["v"]), (200, &json!("genuine")), "{last}");
    assert_ne!(last["rows"][0]["pid"], first["rows"][0]["pid"], "the connection was replaced");
}

#[tokio::test]
async fn bounds_hold_under_a_burst() {
    let app = app()
        .configure(|s| {
            s.pools.per_tenant = 3;
            s.pools.per_server = 4;
            s.pools.acquire_timeout = Duration::from_millis(300);
        })
        .spawn()
        .await;
    let one = ready_tenant(&app, "burst-one").await;
    let two = ready_tenant(&app, "burst-two").await;
    let roles: Vec<String> = ["burst-one", "burst-two"]
        .iter()
        .map(|s| format!("{}{}", app.settings.names.prefix, s.replace('-', "_")))
        .collect();

    // Watch the server's sessions of both tenant roles while the burst runs.
    let peak = Arc::new(AtomicUsize::new(0));
    let peak_one = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (peak, peak_one, done, roles) = (peak.clone(), peak_one.clone(), done.clone(), roles.clone());
        tokio::spawn(async move {
            let su = shared_cluster().superuser("postgres").await;
            while !done.load(Ordering::SeqCst) {
                let rows = su
                    .query("SELECT usename::text FROM pg_stat_activity WHERE usename = ANY($1)", &[&roles])
                    .await
                    .unwrap();
                peak.fetch_max(rows.len(), Ordering::SeqCst);
                let ones = rows.iter().filter(|r| r.get::<_, String>(0) == roles[0]).count();
                peak_one.fetch_max(ones, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let requests = (0..50).map(|i| {
        let (slug, token) = if i % 2 == 0 { ("burst-one", one.clone()) } else { ("burst-two", two.clone()) };
        let app = &app;
        async move {
            let response = app
                .http
                .post(format!("{}/v1/tenants/{slug}/sql", app.base))
                .bearer_auth(token)
                .json(&json!({ "sql": "SELECT pg_sleep(0.05)" }))
                .send()
                .await
                .unwrap();
            let retry_after = response.headers().get("retry-after").is_some();
            (response.status().as_u16(), retry_after)
        }
    });
    let results = futures::future::join_all(requests).await;
    done.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let busy = results.iter().filter(|(s, _)| *s == 503).count();
    assert_eq!(ok + busy, 50, "only 200 or 503: {results:?}");
    assert!(ok > 0, "{results:?}");
    // (A burst may or may not spend the budget; `a_spent_server_budget_answers_503_with_retry_after`
    // spends it for certain.)
    assert!(results.iter().filter(|(s, _)| *s == 503).all(|(_, retry)| *retry), "503 carries Retry-After");
    assert!(peak.load(Ordering::SeqCst) <= 4, "server budget exceeded: {}", peak.load(Ordering::SeqCst));
    assert!(
        peak_one.load(Ordering::SeqCst) <= 3,
        "tenant bound exceeded: {}",
        peak_one.load(Ordering::SeqCst)
    );
    let pools = &app.daemon.as_ref().unwrap().app().pools;
    assert!(pools.server_connections("pg1") <= 4);
}

#[tokio::test]
async fn idle_pools_are_closed() {
    let app = app().configure(|s| s.pools.idle_timeout = Duration::from_millis(300)).spawn().await;
    let token = ready_tenant(&app, "sleepy").await;
    let (status, _) = sql_as(&app, &token, "sleepy", json!({ "sql": "SELECT 1" })).await;
    assert_eq!(status, 200);
    let daemon = app.daemon.as_ref().unwrap().app().clone();
    assert!(daemon.pools.tenant_status("sleepy").is_some_and(|s| s.size >= 1));
    let role = format!("{}sleepy", app.settings.names.prefix);
    crate::common::wait_for("idle pool closed", Duration::from_secs(10), || async {
        let su = shared_cluster().superuser("postgres").await;
        let n: i64 = su
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&role])
            .await
            .unwrap()
            .get(0);
        (daemon.pools.tenant_status("sleepy").is_none() && n == 0).then_some(())
    })
    .await;
    assert_eq!(daemon.pools.server_connections("pg1"), 0, "budget given back");
    // A new request simply opens a new pool.
    assert_eq!(sql_as(&app, &token, "sleepy", json!({ "sql": "SELECT 1" })).await.0, 200);
}

#[tokio::test]
async fn handles_expire_count_and_are_limited() {
    let app = app().configure(|s| s.pools.max_handles_per_tenant = 1).spawn().await;
    let token = ready_tenant(&app, "handy").await;
    let open = |ttl: Value| {
        let (app, token) = (&app, token.clone());
        async move { app.request_as(Method::POST, "/v1/tenants/handy/handles", Some(&ttl), Some(&token)).await }
    };
    let (status, first) = open(json!({ "ttl_seconds": 1 })).await;
    assert_eq!(status, 201);
    let (status, body) = open(json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("too_many_handles")), "{body}");
    for bad in [json!({ "ttl_seconds": 0 }), json!({ "ttl_seconds": 999_999 }), json!({ "ttl": 5 })] {
        assert_eq!(open(bad.clone()).await.0, 400, "{bad}");
    }
    let handle = first["handle"].as_str().unwrap().to_owned();
    // Once the unused handle expires it no longer counts (polling it would keep it alive).
    crate::common::wait_for("handle expired", Duration::from_secs(10), || async {
        let (status, _) = open(json!({})).await;
        (status == 201).then_some(())
    })
    .await;
    let path = format!("/v1/handles/{handle}/sql");
    let (status, _) =
        app.request_as(Method::POST, &path, Some(&json!({ "sql": "SELECT 1" })), Some(&token)).await;
    assert_eq!(status, 404, "the expired handle is gone");
}

#[tokio::test]
async fn token_rotation_and_secrets_at_rest() {
    let app = spawn_app().await;
    let old = ready_tenant(&app, "rotating").await;
    let (status, rotated) = app.post("/v1/tenants/rotating/tokens", &json!({})).await;
    assert_eq!(status, 201, "{rotated}");
    let new = rotated["token"].as_str().unwrap();
    assert_eq!(
        sql_as(&app, &old, "rotating", json!({ "sql": "SELECT 1" })).await.0,
        401,
        "old token revoked at once"
    );
    assert_eq!(sql_as(&app, new, "rotating", json!({ "sql": "SELECT 1" })).await.0, 200);
    let (status, _) =
        app.request_as(Method::POST, "/v1/tenants/rotating/tokens", Some(&json!({})), Some(new)).await;
    assert_eq!(status, 401, "rotation is admin-only");

    let (_, details) = app.request_as(Method::GET, "/v1/tenants/rotating/connection", None, Some(new)).await;
    let password = details["password"].as_str().unwrap();
    let catalog = app.catalog().await;
    let dump: String = catalog
        .query_one(
            "SELECT (SELECT string_agg(to_jsonb(t)::text, ' ') FROM tenantd.tenants t) || \
             (SELECT string_agg(to_jsonb(e)::text, ' ') FROM tenantd.tenant_events e)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for secret in [password, new, old.as_str()] {
        assert!(!dump.contains(secret), "secret in clear in the catalog");
    }
    assert!(dump.contains(&tenantd::crypto::token_hash(new)), "only the hash is stored");
}

#[tokio::test]
async fn lending_answers_clearly_for_tenants_that_are_not_ready() {
    let app = app().without_server().spawn().await;
    let (_, created) = app.post("/v1/tenants", &json!({ "slug": "unplaced" })).await;
    let token = created["token"].as_str().unwrap();
    let (status, body) = sql_as(&app, token, "unplaced", json!({ "sql": "SELECT 1" })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("tenant_not_ready")), "{body}");
    let catalog = app.catalog().await;
    catalog
        .execute("UPDATE tenantd.tenants SET status = 'SUSPENDED' WHERE slug = 'unplaced'", &[])
        .await
        .unwrap();
    let locked = crate::common::wait_for("suspension seen", Duration::from_secs(5), || async {
        let (status, body) = sql_as(&app, token, "unplaced", json!({ "sql": "SELECT 1" })).await;
        (status == 423).then_some(body)
    })
    .await;
    assert_eq!(locked["error"]["code"], "tenant_suspended");
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_and_the_daemon_lives_on() {
    let app = spawn_app().await;
    let state = app.daemon.as_ref().unwrap().app().clone();
    let routes = tenantd::api::routes().route(
        "/boom",
        axum::routing::get(|| async {
            if true {
                panic!("deliberate");
            }
            "unreachable"
        }),
    );
    let router = tenantd::api::layered(routes, state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let response = reqwest::get(format!("http://{addr}/boom")).await.unwrap();
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "internal");
    let after = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
    assert_eq!(after.status(), 200, "still serving");
}

/// Faster than this is the catalog's notification at work, not the resolver's cache running
/// out (its TTL is 2 s).
const BY_NOTIFICATION: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn a_token_rotated_on_one_daemon_is_refused_by_another_at_once() {
    let a = spawn_app().await;
    let b = app().same_catalog_as(&a).spawn().await;
    let old = ready_tenant(&a, "rotated").await;
    // The tenant's first use on daemon B puts it and its token into B's cache.
    let warmed = Instant::now();
    assert_eq!(sql_as(&b, &old, "rotated", json!({ "sql": "SELECT 1" })).await.0, 200);

    let (status, rotated) = a.post("/v1/tenants/rotated/tokens", &json!({})).await;
    assert_eq!(status, 201, "{rotated}");
    let new = rotated["token"].as_str().unwrap();
    wait_for("daemon B to refuse the old token", Duration::from_secs(5), || async {
        (sql_as(&b, &old, "rotated", json!({ "sql": "SELECT 1" })).await.0 == 401).then_some(())
    })
    .await;
    let refused = warmed.elapsed();
    wait_for("daemon B to accept the new token", Duration::from_secs(5), || async {
        (sql_as(&b, new, "rotated", json!({ "sql": "SELECT 1" })).await.0 == 200).then_some(())
    })
    .await;
    let accepted = warmed.elapsed();
    assert!(
        refused < BY_NOTIFICATION,
        "old token still accepted by B {refused:?} after its cache was filled"
    );
    assert!(accepted < BY_NOTIFICATION, "new token refused by B for {accepted:?} after its cache was filled");
    let (status, _) = a.request_as(Method::GET, "/v1/tenants/rotated/connection", None, Some(&old)).await;
    assert_eq!(status, 401, "and by the daemon that rotated it");
}

#[tokio::test]
async fn a_tenant_suspended_on_one_daemon_is_locked_on_another_at_once_handles_included() {
    let a = spawn_app().await;
    let b = app().same_catalog_as(&a).spawn().await;
    let token = ready_tenant(&a, "frozen").await;
    // On daemon B, the tenant is in use through a handle (and so in B's cache).
    let warmed = Instant::now();
    let (status, opened) = b
        .request_as(
            Method::POST,
            "/v1/tenants/frozen/handles",
            Some(&json!({ "ttl_seconds": 60 })),
            Some(&token),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    let on_handle = format!("/v1/handles/{}/sql", opened["handle"].as_str().unwrap());
    let select_one = json!({ "sql": "SELECT 1" });
    let handle_sql = || b.request_as(Method::POST, &on_handle, Some(&select_one), Some(&token));
    assert_eq!(handle_sql().await.0, 200);

    // Suspended through daemon A, while a client keeps using the tenant through B.
    let no_body = json!({});
    let suspend = a.post("/v1/tenants/frozen/suspend", &no_body);
    let locked = async {
        let body = wait_for("daemon B to answer 423", Duration::from_secs(5), || async {
            let (status, body) = sql_as(&b, &token, "frozen", json!({ "sql": "SELECT 1" })).await;
            (status == 423).then_some(body)
        })
        .await;
        (body, warmed.elapsed())
    };
    let ((status, suspended), (locked, elapsed)) = tokio::join!(suspend, locked);
    assert_eq!((status, suspended["status"].as_str()), (200, Some("SUSPENDED")), "{suspended}");
    assert_eq!(locked["error"]["code"], "tenant_suspended");
    assert!(
        elapsed < BY_NOTIFICATION,
        "B lent a suspended tenant for {elapsed:?} after its cache was filled"
    );
    // B closed the handle (a stale handle would answer 423 once the cache ran out, never 404)
    // and the tenant's pool.
    let (status, body) = wait_for("B to close the handle", Duration::from_secs(5), || async {
        let (status, body) = handle_sql().await;
        (status != 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 404, "the handle on B is closed: {body}");
    assert!(b.daemon.as_ref().unwrap().app().pools.tenant_status("frozen").is_none(), "B's pool is closed");
}

#[tokio::test]
async fn a_spent_server_budget_answers_503_with_retry_after() {
    let app = app()
        .configure(|s| {
            s.pools.per_tenant = 2;
            s.pools.per_server = 2;
            s.pools.max_handles_per_tenant = 2;
            s.pools.acquire_timeout = Duration::from_millis(300);
        })
        .spawn()
        .await;
    let hog = ready_tenant(&app, "hog").await;
    let starved = ready_tenant(&app, "starved").await;
    // Two handles of one tenant hold the server's whole budget.
    let mut handles = Vec::new();
    for _ in 0..2 {
        let (status, opened) =
            app.request_as(Method::POST, "/v1/tenants/hog/handles", None, Some(&hog)).await;
        assert_eq!(status, 201, "{opened}");
        handles.push(opened["handle"].as_str().unwrap().to_owned());
    }
    assert_eq!(app.daemon.as_ref().unwrap().app().pools.server_connections("pg1"), 2);

    let raw_sql = |slug: &'static str, token: String| {
        let app = &app;
        async move {
            let response = app
                .http
                .post(format!("{}/v1/tenants/{slug}/sql", app.base))
                .bearer_auth(token)
                .json(&json!({ "sql": "SELECT 1" }))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.expect("a JSON body");
            (status, retry_after, body)
        }
    };
    // Another tenant on that server: 503 with Retry-After once the acquire timeout is over.
    let (status, retry_after, body) = raw_sql("starved", starved.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("saturated")), "{body}");
    let seconds: u64 = retry_after.expect("Retry-After on 503").parse().expect("Retry-After in seconds");
    assert!(seconds >= 1, "{seconds}");
    // The tenant holding both: its own pool is full, same answer.
    let (status, retry_after, body) = raw_sql("hog", hog.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("tenant_busy")), "{body}");
    assert!(retry_after.is_some(), "Retry-After on 503");

    // One handle closed: its connection goes back idle, and is closed to make room.
    let (status, _) =
        app.request_as(Method::DELETE, &format!("/v1/handles/{}", handles[0]), None, Some(&hog)).await;
    assert_eq!(status, 204);
    wait_for("the starved tenant to be served", Duration::from_secs(10), || async {
        (raw_sql("starved", starved.clone()).await.0 == 200).then_some(())
    })
    .await;
    assert!(app.daemon.as_ref().unwrap().app().pools.server_connections("pg1") <= 2, "budget held");
}

#[tokio::test]
async fn each_use_of_a_handle_pushes_its_expiry_back() {
    let app = app().configure(|s| s.pools.max_handles_per_tenant = 1).spawn().await;
    let token = ready_tenant(&app, "kept").await;
    let (status, opened) = app
        .request_as(
            Method::POST,
            "/v1/tenants/kept/handles",
            Some(&json!({ "ttl_seconds": 2 })),
            Some(&token),
        )
        .await;
    assert_eq!(status, 201, "{opened}");
    let path = format!("/v1/handles/{}/sql", opened["handle"].as_str().unwrap());
    let parse =
        |v: &str| chrono::DateTime::parse_from_rfc3339(v).expect("RFC 3339").with_timezone(&chrono::Utc);
    let mut expires = parse(opened["expires_at"].as_str().unwrap());
    let opened_at = Instant::now();
    let ttl = chrono::Duration::seconds(2);
    // A client using the handle every half second, for longer than its TTL (the pauses are its
    // pace, not synchronisation).
    while opened_at.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let response = app
            .http
            .post(format!("{}{path}", app.base))
            .bearer_auth(&token)
            .json(&json!({ "sql": "SELECT 1" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "still open {:?} after opening", opened_at.elapsed());
        let header = response.headers().get("x-handle-expires-at").expect("X-Handle-Expires-At");
        let now = chrono::Utc::now();
        let until = parse(header.to_str().unwrap());
        assert!(until > expires, "each use pushes the expiry back: {until} after {expires}");
        assert!(until > now + ttl / 2 && until <= now + ttl, "one TTL from now: {until} at {now}");
        expires = until;
    }
    // Left alone, it expires when the last answer said: only then may another be opened.
    let reopened = wait_for("the handle to expire", Duration::from_secs(10), || async {
        let (status, _) = app.request_as(Method::POST, "/v1/tenants/kept/handles", None, Some(&token)).await;
        (status == 201).then(chrono::Utc::now)
    })
    .await;
    assert!(reopened >= expires, "expired at {reopened}, before {expires}");
    let (status, _) =
        app.request_as(Method::POST, &path, Some(&json!({ "sql": "SELECT 1" })), Some(&token)).await;
    assert_eq!(status, 404, "the expired handle is gone");
}

#[tokio::test]
async fn slow_statements_slow_requests_and_big_bodies_answer_json_errors() {
    let app = app()
        .configure(|s| {
            s.pools.statement_timeout = Duration::from_millis(500);
            s.pools.max_rows = 5;
            s.pools.per_tenant = 1;
            s.pools.max_handles_per_tenant = 1;
            s.pools.acquire_timeout = Duration::from_secs(6);
            s.http.body_limit_bytes = 4096;
            s.http.request_timeout = Duration::from_secs(3);
        })
        .spawn()
        .await;
    let (status, created) = app.post("/v1/tenants", &json!({ "slug": "limited" })).await;
    assert_eq!(status, 201, "{created}");
    let token = created["token"].as_str().unwrap().to_owned();
    app.wait_ready("limited").await;
    let send = |path: &str, body: Vec<u8>| {
        let request = app
            .http
            .post(format!("{}{path}", app.base))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let body: Value = response.json().await.expect("a JSON error body");
            (status, body, retry_after)
        }
    };
    let sql = |sql: &str| serde_json::to_vec(&json!({ "sql": sql })).unwrap();

    // 408: the statement ran past pools.statement_timeout.
    let (status, body, _) = send("/v1/tenants/limited/sql", sql("SELECT pg_sleep(5)")).await;
    assert_eq!((status, body["error"]["sqlstate"].as_str()), (408, Some("57014")), "{body}");
    assert_eq!(body["error"]["code"], "sql_error");
    // 413: more rows than pools.max_rows.
    let (status, body, _) = send("/v1/tenants/limited/sql", sql("SELECT generate_series(1, 100) AS n")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("result_too_large")), "{body}");
    // 413: a body over http.body_limit_bytes, on a JSON route and on the handle route.
    let big = format!("{{\"sql\": \"SELECT '{}'\"}}", "x".repeat(10_000)).into_bytes();
    let (status, body, _) = send("/v1/tenants/limited/sql", big.clone()).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("body_too_large")), "{body}");
    let (status, body, _) = send("/v1/tenants/limited/handles", big).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("body_too_large")), "{body}");

    // A tenant cannot lift the deadline: with statement_timeout switched off in its session,
    // a slow statement on a handle is cancelled on the server at pools.statement_timeout + 1 s
    // (408), and the handle goes on working.
    let (status, opened, _) = send("/v1/tenants/limited/handles", b"{}".to_vec()).await;
    assert_eq!(status, 201, "{opened}");
    let handle_id = opened["handle"].as_str().unwrap().to_owned();
    let handle = format!("/v1/handles/{handle_id}/sql");
    assert_eq!(send(&handle, sql("SET statement_timeout = 0")).await.0, 200);
    let started = Instant::now();
    let (status, body, _) = send(&handle, sql("SELECT pg_sleep(8)")).await;
    let took = started.elapsed();
    assert_eq!((status, body["error"]["code"].as_str()), (408, Some("statement_timeout")), "{body}");
    assert!(took < Duration::from_secs(7), "cancelled at the deadline, not when the sleep ended: {took:?}");
    let sleeping = || async {
        let su = shared_cluster().superuser("postgres").await;
        let n: i64 = su
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(8)%'", &[])
            .await
            .unwrap()
            .get(0);
        (n == 0).then_some(())
    };
    crate::common::wait_for("the cancelled sleep to end on the server", Duration::from_secs(3), sleeping)
        .await;
    let (status, body, _) = send(&handle, sql("SELECT 2 AS two")).await;
    assert_eq!((status, &body["rows"][0]["two"]), (200, &json!(2)), "{body}");

    // A request over http.request_timeout is answered (503, Retry-After) when the limit is up:
    // the handle holds the tenant's only connection, so this one waits for a connection
    // longer than the request may take.
    let started = Instant::now();
    let (status, body, retry_after) = send("/v1/tenants/limited/sql", sql("SELECT 1")).await;
    let took = started.elapsed();
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("timeout")), "{body}");
    assert!(retry_after, "Retry-After on 503");
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(5),
        "answered at the limit: {took:?}"
    );
    let closed = app
        .http
        .delete(format!("{}/v1/handles/{handle_id}", app.base))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(closed.status().as_u16(), 204);
    // The daemon serves the tenant on as before.
    let (status, body, _) = send("/v1/tenants/limited/sql", sql("SELECT 1 AS one")).await;
    assert_eq!((status, &body["rows"][0]["one"]), (200, &json!(1)), "{body}");
}

#[tokio::test]
async fn a_tenant_password_rotation_locks_out_the_old_password_and_lending_goes_on() {
    let app = spawn_app().await;
    let token = ready_tenant(&app, "rekeyed").await;
    let (_, old) = app.get("/v1/tenants/rekeyed/connection").await;
    // Warm the tenant's pool with the old password.
    assert_eq!(sql_as(&app, &token, "rekeyed", json!({ "sql": "SELECT 1" })).await.0, 200);
    let (status, fresh) = app.post("/v1/tenants/rekeyed/password", &json!({})).await;
    assert_eq!(status, 201, "{fresh}");
    assert_ne!(fresh["password"], old["password"]);
    assert_eq!(fresh["user"], old["user"]);
    let refused = crate::common::connect(old["url"].as_str().unwrap()).await.err().map(|e| e.to_string());
    assert!(refused.is_some(), "the old password no longer logs in");
    crate::common::connect(fresh["url"].as_str().unwrap()).await.expect("the new one does");
    // Lending reconnects with the new password, at once.
    assert_eq!(sql_as(&app, &token, "rekeyed", json!({ "sql": "SELECT 2" })).await.0, 200);
    let (_, shown) = app.get("/v1/tenants/rekeyed/connection").await;
    assert_eq!(shown["password"], fresh["password"]);
    // The CLI does the same; the event is recorded each time.
    let cli = app.cli(&["tenant", "rotate-password", "rekeyed"]).await;
    assert_eq!(cli.code, 0, "{cli:?}");
    crate::common::connect(cli.stdout.trim()).await.expect("the CLI's new password logs in");
    let (_, events) = app.get("/v1/tenants/rekeyed/events").await;
    let rotated = events.as_array().unwrap().iter().filter(|e| e["kind"] == "password.rotated").count();
    assert_eq!(rotated, 2, "{events}");
}
