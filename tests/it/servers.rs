//! Registering and managing database servers, over HTTP and the CLI, and the API's guard
//! rails: tokens, malformed input, limits, JSON errors everywhere.

use std::time::Duration;

use crate::common::{app, shared_cluster, spawn_app};
use reqwest::Method;
use serde_json::{Value, json};

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {body}"))
}

#[tokio::test]
async fn add_list_and_patch_a_server_over_http() {
    let app = app().without_server().spawn().await;
    let cluster = shared_cluster();
    let (status, body) = app
        .post(
            "/v1/servers",
            &json!({ "name": "eu-1", "url": cluster.admin_url("postgres"), "weight": 3, "region": "eu" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "eu-1");
    assert_eq!(body["health"], "healthy");
    assert_eq!(body["weight"], 3);
    assert!(body.get("admin_password_sealed").is_none());

    let (status, list) = app.get("/v1/servers").await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["region"], "eu");
    assert_eq!(list[0]["status"], "active");

    let (status, patched) =
        app.patch("/v1/servers/eu-1", &json!({ "status": "draining", "max_tenants": 10 })).await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["status"], "draining");
    assert_eq!(patched["max_tenants"], 10);
    assert_eq!(patched["weight"], 3, "fields not in the patch are kept");
    let (_, shown) = app.get("/v1/servers/eu-1").await;
    assert_eq!(shown["status"], "draining");
}

#[tokio::test]
async fn the_admin_password_is_never_stored_or_shown_in_clear() {
    let app = spawn_app().await;
    let password = shared_cluster().admin_password.clone();
    let password = secrecy::ExposeSecret::expose_secret(&password).to_owned();
    let (_, list) = app.get("/v1/servers").await;
    assert!(!list.to_string().contains(&password));
    let catalog = app.catalog().await;
    let dump: String = catalog
        .query_one("SELECT string_agg(to_jsonb(s)::text, ' ') FROM tenantd.servers s", &[])
        .await
        .unwrap()
        .get(0);
    assert!(dump.contains("v1."), "sealed envelope stored: {dump}");
    assert!(!dump.contains(&password), "password in clear in the catalog");
    let cli = app.cli(&["server", "list", "--json"]).await;
    assert_eq!(cli.code, 0, "{}", cli.stderr);
    assert!(!cli.stdout.contains(&password));
}

#[tokio::test]
async fn a_sealed_password_moved_to_another_row_does_not_open() {
    let app = spawn_app().await;
    let cluster = shared_cluster();
    let (status, _) =
        app.post("/v1/servers", &json!({ "name": "pg2", "url": cluster.admin_url("postgres") })).await;
    assert_eq!(status, 201);
    // Copy pg1's envelope onto pg2: AAD binds it to pg1, so pg2 must turn unhealthy.
    let catalog = app.catalog().await;
    catalog
        .execute(
            "UPDATE tenantd.servers SET admin_password_sealed = \
             (SELECT admin_password_sealed FROM tenantd.servers WHERE name = 'pg1') WHERE name = 'pg2'",
            &[],
        )
        .await
        .unwrap();
    let (status, body) = app.get("/readyz?deep=true").await;
    assert_eq!(status, 503, "{body}");
    let servers = body["servers"].as_array().unwrap();
    let pg2 = servers.iter().find(|s| s["name"] == "pg2").unwrap();
    assert_eq!(pg2["healthy"], false);
    assert!(pg2["error"].as_str().unwrap().contains("does not open"), "{pg2}");
    let pg1 = servers.iter().find(|s| s["name"] == "pg1").unwrap();
    assert_eq!(pg1["healthy"], true);
    assert!(pg1["latency_ms"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn bad_server_registrations_are_rejected_and_change_nothing() {
    let app = spawn_app().await;
    let cluster = shared_cluster();
    let unreachable = format!("postgres://x:y@127.0.0.1:{}/postgres", common_free_port());
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({ "name": "pg1", "url": cluster.admin_url("postgres") }), 409, "conflict"),
        (json!({ "name": "Bad Name", "url": cluster.admin_url("postgres") }), 400, "invalid"),
        (json!({ "name": "x1", "url": "not a url at all ::" }), 400, "invalid"),
        (json!({ "name": "x2", "url": "postgres://adm@127.0.0.1/postgres" }), 400, "invalid"),
        (json!({ "name": "x3", "url": unreachable }), 422, "server_unreachable"),
        (json!({ "name": "x4", "url": cluster.admin_url("postgres"), "weight": 0 }), 400, "invalid"),
        (json!({ "name": "x5" }), 400, "invalid_json"),
        (json!({ "name": "x6", "url": cluster.admin_url("postgres"), "colour": "red" }), 400, "invalid_json"),
    ];
    for (body, want_status, want_code) in cases {
        let (status, answer) = app.post("/v1/servers", &body).await;
        assert_eq!(status, want_status, "{body} -> {answer}");
        assert_eq!(error_code(&answer), want_code, "{body} -> {answer}");
        assert!(!answer.to_string().contains("y@"), "no password echoed: {answer}");
    }
    let (_, list) = app.get("/v1/servers").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "only the original server: {list}");
}

fn common_free_port() -> u16 {
    tenantd::pgcluster::free_port().unwrap()
}

#[tokio::test]
async fn a_role_without_createdb_is_refused_naming_what_is_missing() {
    let app = app().without_server().spawn().await;
    let cluster = shared_cluster();
    let role = format!("weak_{}", crate::common::random_suffix());
    cluster
        .superuser("postgres")
        .await
        .batch_execute(&format!("CREATE ROLE {role} LOGIN CREATEROLE PASSWORD 'weakpw'; GRANT CONNECT ON DATABASE postgres TO {role}"))
        .await
        .unwrap();
    let url = cluster.url(&role, "weakpw", "postgres");
    let (status, body) = app.post("/v1/servers", &json!({ "name": "weak", "url": url })).await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("CREATEDB") && !message.contains("CREATEROLE"), "{message}");
    assert!(!message.contains("weakpw"));

    let cli = app.cli(&["server", "add", "weak", "--url", &url]).await;
    assert_eq!(cli.code, 1, "{cli:?}");
    assert!(cli.stderr.contains("lacks CREATEDB"), "{}", cli.stderr);
}

#[tokio::test]
async fn invalid_patches_are_client_errors() {
    let app = spawn_app().await;
    let (status, body) = app.patch("/v1/servers/pg1", &json!({ "status": "sleeping" })).await;
    assert_eq!((status, error_code(&body)), (400, "invalid_json"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("sleeping"));
    let (status, body) = app.patch("/v1/servers/pg1", &json!({ "weight": -1 })).await;
    assert_eq!((status, error_code(&body)), (400, "invalid"));
    let (status, body) = app.patch("/v1/servers/nope", &json!({ "status": "active" })).await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (_, shown) = app.get("/v1/servers/pg1").await;
    assert_eq!(
        (shown["status"].as_str(), shown["weight"].as_i64()),
        (Some("active"), Some(100)),
        "unchanged"
    );
}

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let app = spawn_app().await;
    for token in [None, Some("wrong-token"), Some("")] {
        let (status, body) = app.request_as(Method::GET, "/v1/servers", None, token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(error_code(&body), "unauthorized");
    }
    let raw = app
        .http
        .get(format!("{}/v1/servers", app.base))
        .header("Authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 401);
    assert_eq!(raw.headers()["www-authenticate"], "Bearer");
    let (status, _) = app.request_as(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, 200, "liveness needs no token");
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_4xx_json() {
    let app = app().configure(|s| s.http.body_limit_bytes = 4096).spawn().await;
    let send = |body: Vec<u8>, content_type: &'static str| {
        app.http
            .post(format!("{}/v1/servers", app.base))
            .bearer_auth(&app.admin_token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases = [
        (send(b"{not json".to_vec(), "application/json").await.unwrap(), 400, "invalid_json"),
        (send(b"{}".to_vec(), "text/plain").await.unwrap(), 415, "unsupported_media_type"),
        (
            send(format!("{{\"name\":\"{}\"}}", "a".repeat(10_000)).into_bytes(), "application/json")
                .await
                .unwrap(),
            413,
            "body_too_large",
        ),
        (send(vec![b'"', 0xff, 0xfe, b'"'], "application/json").await.unwrap(), 400, "invalid_json"),
    ];
    for (response, want_status, want_code) in cases {
        assert_eq!(response.status().as_u16(), want_status);
        let body: Value = response.json().await.expect("JSON error body");
        assert_eq!(error_code(&body), want_code, "{body}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let (status, body) = app.get("/v1/nothing-here").await;
    assert_eq!((status, error_code(&body)), (404, "not_found"));
    let (status, body) = app.request(Method::DELETE, "/v1/servers", None).await;
    assert_eq!((status, error_code(&body)), (405, "method_not_allowed"));
    let (status, body) = app.get("/readyz?deep=maybe").await;
    assert_eq!((status, error_code(&body)), (400, "invalid_query"));
}

#[tokio::test]
async fn readiness_and_metrics() {
    let app = spawn_app().await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");
    let (status, body) = app.get("/readyz?deep=true").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["servers"][0]["name"], "pg1");
    let text = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("tenantd_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/readyz\""), "{text}");
    assert!(text.contains("tenantd_tenants{status=\"READY\"}"), "{text}");
}

#[tokio::test]
async fn servers_over_the_cli() {
    let app = app().without_server().spawn().await;
    let cluster = shared_cluster();
    // Password kept out of the URL: read from stdin-less env variable.
    let url = format!("postgres://{}@127.0.0.1:{}/postgres", crate::common::ADMIN_ROLE, cluster.port);
    let mut env = app.cli_env();
    env.insert(
        "TENANTD_SERVER_PASSWORD".into(),
        secrecy::ExposeSecret::expose_secret(&cluster.admin_password).to_owned(),
    );
    let added = crate::common::cli(
        &["server", "add", "db-a", "--url", &url, "--weight", "5", "--max-tenants", "50"],
        &env,
        None,
    )
    .await;
    assert_eq!(added.code, 0, "{added:?}");
    assert!(added.stdout.contains("server db-a added"), "{}", added.stdout);
    // The maintenance database is closed on test clusters (other tests may open databases of
    // their own to PUBLIC meanwhile: those are warned about, and are not this test's subject).
    assert!(
        !added.stderr.contains("maintenance database"),
        "postgres is locked down on test clusters: {}",
        added.stderr
    );

    // A maintenance database that PUBLIC may connect to (PostgreSQL's default) is refused with
    // the fix, unless the operator accepts the risk explicitly; then it is a warning.
    let open = cluster.create_database("open").await;
    cluster
        .superuser("postgres")
        .await
        .batch_execute(&format!("GRANT CONNECT ON DATABASE {open} TO PUBLIC"))
        .await
        .unwrap();
    let open_db = format!("postgres://{}@127.0.0.1:{}/{open}", crate::common::ADMIN_ROLE, cluster.port);
    let refused = crate::common::cli(&["server", "add", "db-b", "--url", &open_db], &env, None).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("PUBLIC may connect"), "{}", refused.stderr);
    assert!(refused.stderr.contains("REVOKE CONNECT ON DATABASE"), "{}", refused.stderr);
    assert!(refused.stderr.contains("--allow-public-maintenance-db"), "{}", refused.stderr);
    let warned = crate::common::cli(
        &["server", "add", "db-b", "--url", &open_db, "--allow-public-maintenance-db"],
        &env,
        None,
    )
    .await;
    assert_eq!(warned.code, 0, "{warned:?}");
    assert!(warned.stderr.contains("warning: maintenance database"), "{}", warned.stderr);
    assert!(warned.stderr.contains("PUBLIC may connect"), "{}", warned.stderr);

    let dup = crate::common::cli(&["server", "add", "db-a", "--url", &url], &env, None).await;
    assert_eq!(dup.code, 1);
    assert!(dup.stderr.contains("already exists"), "{}", dup.stderr);

    let set = app.cli(&["server", "set", "db-a", "--status", "maintenance"]).await;
    assert_eq!(set.code, 0, "{set:?}");
    let bad = app.cli(&["server", "set", "db-a", "--status", "asleep"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("asleep"));
    let nothing = app.cli(&["server", "set", "db-a"]).await;
    assert_eq!(nothing.code, 2);

    let list = app.cli(&["server", "list"]).await;
    assert_eq!(list.code, 0);
    let line = list.stdout.lines().find(|l| l.starts_with("db-a ")).expect("db-a listed");
    assert!(line.contains("maintenance") && line.contains("0/50"), "{line}");
    let json = app.cli(&["server", "list", "--json"]).await;
    let parsed: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(parsed[0]["weight"], 5);
    let (_, over_http) = app.get("/v1/servers/db-a").await;
    assert_eq!(over_http["status"], "maintenance", "CLI and HTTP share the catalog");
}

#[tokio::test]
async fn master_key_rotation_reseals_every_server_password() {
    let mut app = spawn_app().await;
    // A tenant's role password is sealed too: after the rotation it must still be lent.
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "keyed" })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    app.stop().await;
    let old_key = secrecy::ExposeSecret::expose_secret(&app.master_key).to_owned();
    let new_key = secrecy::ExposeSecret::expose_secret(&tenantd::crypto::generate_master_key()).to_owned();
    let mut env = app.cli_env();
    env.insert("TENANTD_MASTER_KEY".into(), new_key.clone());

    // With only the new key, the old envelope does not open: the check says which key is missing.
    let catalog = app.catalog().await;
    let before: String =
        catalog.query_one("SELECT admin_password_sealed FROM tenantd.servers", &[]).await.unwrap().get(0);
    let without_old = crate::common::cli(&["server", "rotate-key"], &env, None).await;
    assert_eq!(without_old.code, 2, "a missing key is a configuration error: {without_old:?}");
    assert!(without_old.stderr.contains("TENANTD_OLD_MASTER_KEYS"), "{}", without_old.stderr);
    assert!(
        without_old.stderr.contains("1 server password(s) and 1 tenant password(s)"),
        "names what the missing key seals: {}",
        without_old.stderr
    );
    // `keys status` says which key is missing, and fails.
    let status = crate::common::cli(&["keys", "status", "--json"], &env, None).await;
    assert_eq!(status.code, 1, "{status:?}");
    let keys: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 1, "{keys}");
    assert_eq!((keys[0]["servers"].as_i64(), keys[0]["tenants"].as_i64()), (Some(1), Some(1)), "{keys}");
    assert_eq!(keys[0]["configured"], false, "{keys}");
    // A daemon without the key refuses to start, naming it.
    let without = tenantd::config::Settings {
        master_key: Some(secrecy::SecretString::from(new_key.clone())),
        ..app.settings.clone()
    };
    let refused = tenantd::startup::Daemon::start(without).await.expect_err("started without a key in use");
    assert!(refused.to_string().contains(keys[0]["key_id"].as_str().unwrap()), "{refused}");

    env.insert("TENANTD_OLD_MASTER_KEYS".into(), old_key);
    let rotated = crate::common::cli(&["server", "rotate-key"], &env, None).await;
    assert_eq!(rotated.code, 0, "{rotated:?}");
    assert!(
        rotated.stdout.contains("re-sealed 1 server password(s) and 1 tenant password"),
        "{}",
        rotated.stdout
    );
    let after: String =
        catalog.query_one("SELECT admin_password_sealed FROM tenantd.servers", &[]).await.unwrap().get(0);
    assert_ne!(before, after);

    // A daemon with only the new key can use the server again.
    let settings = tenantd::config::Settings {
        master_key: Some(secrecy::SecretString::from(new_key)),
        ..app.settings.clone()
    };
    let daemon = tenantd::startup::Daemon::start(settings).await.unwrap();
    let http = reqwest::Client::new();
    let ready: Value = http
        .get(format!("http://{}/readyz?deep=true", daemon.local_addr()))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["servers"][0]["healthy"], true, "{ready}");
    let lent = http
        .post(format!("http://{}/v1/tenants/keyed/sql", daemon.local_addr()))
        .bearer_auth(&app.admin_token)
        .json(&json!({ "sql": "SELECT 1 AS one" }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        lent.status().as_u16(),
        200,
        "the tenant opens with only the new key: {}",
        lent.text().await.unwrap()
    );
    // Running it again (under its new name) finds nothing left under the old key, and the
    // status shows only the current key in use: the old one may go.
    let status = crate::common::cli(&["keys", "status"], &env, None).await;
    assert_eq!(status.code, 0, "{status:?}");
    assert!(status.stdout.contains("current") && !status.stdout.contains("old"), "{}", status.stdout);
    let again = crate::common::cli(&["keys", "rotate"], &env, None).await;
    assert!(
        again.stdout.contains("re-sealed 0 server password(s) and 0 tenant password"),
        "{}",
        again.stdout
    );
    daemon.stop().await;
}

#[tokio::test]
async fn an_internal_error_hides_its_detail_behind_the_request_id() {
    let app = spawn_app().await;
    let (status, created) = app.post("/v1/tenants?wait=30", &json!({ "slug": "broken-seal" })).await;
    assert_eq!((status, created["status"].as_str()), (201, Some("READY")), "{created}");
    // Someone edits the catalog by hand: the tenant's sealed role password no longer opens.
    app.catalog()
        .await
        .execute(
            "UPDATE tenantd.tenants SET role_password_sealed = 'v1.bogus.AAAA' WHERE slug = 'broken-seal'",
            &[],
        )
        .await
        .unwrap();
    let get = |request_id: Option<&'static str>| {
        let mut request = app
            .http
            .get(format!("{}/v1/tenants/broken-seal/connection", app.base))
            .bearer_auth(&app.admin_token);
        if let Some(id) = request_id {
            request = request.header("x-request-id", id);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let id = response.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_owned());
            let body: Value = response.json().await.expect("a JSON body");
            (status, id, body)
        }
    };
    let (id, body) = crate::common::wait_for("the 500", Duration::from_secs(10), || async {
        let (status, id, body) = get(None).await;
        (status == 500).then_some((id, body))
    })
    .await;
    let id = id.expect("x-request-id on the 500");
    assert_eq!(error_code(&body), "internal", "{body}");
    assert_eq!(body["error"]["request_id"], id.as_str(), "the body names the request: {body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&id), "{message}");
    let text = body.to_string().to_lowercase();
    for detail in ["bogus", "seal", "password", "open", "key", "broken-seal"] {
        assert!(!text.contains(detail), "{detail:?} leaked: {body}");
    }

    // A sane id sent by the client is the request's id, echoed in the header and the body.
    let (status, echoed, body) = get(Some("trace-42_abc")).await;
    assert_eq!(status, 500);
    assert_eq!(echoed.as_deref(), Some("trace-42_abc"));
    assert_eq!(body["error"]["request_id"], "trace-42_abc", "{body}");
    // An unreasonable one is replaced by a fresh id.
    let (_, replaced, body) = get(Some("<script>alert(1)</script>")).await;
    let replaced = replaced.expect("x-request-id");
    assert!(replaced.len() == 32 && replaced.bytes().all(|b| b.is_ascii_hexdigit()), "{replaced}");
    assert_eq!(body["error"]["request_id"], replaced.as_str());

    // Every response carries an id, whatever its status.
    for (path, token) in [
        ("/healthz", None),
        ("/v1/servers", Some(app.admin_token.as_str())),
        ("/v1/servers", None),
        ("/v1/nowhere", Some(app.admin_token.as_str())),
    ] {
        let mut request = app.http.get(format!("{}{path}", app.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert!(response.headers().contains_key("x-request-id"), "{path}: {}", response.status());
    }
}
