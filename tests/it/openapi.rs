//! The API's contract: the OpenAPI document is served, matches the committed copy and the
//! router, and schemathesis finds no server error and no answer outside the schema.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{self, random_suffix};

/// The schemathesis version `.ci/run` installs (keep the two equal).
const SCHEMATHESIS_VERSION: &str = "4.32.5";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_document_matches_the_code() {
    let path = repo().join("docs/openapi.json");
    let generated = tenantd::api::openapi::document_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json differs from the API's document: review the API change, then regenerate it \
         with `cargo run -- openapi > docs/openapi.json` (or UPDATE_OPENAPI=1 cargo test openapi::committed)"
    );
}

/// `(METHOD, path)` of every route in `src/api/mod.rs`'s `routes()`.
fn routed() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(repo().join("src/api/mod.rs")).expect("read src/api/mod.rs");
    let start = source.find("pub fn routes()").expect("routes() in src/api/mod.rs");
    let body = &source[start..];
    let body = &body[..body.find("\n}\n").expect("end of routes()")];
    let mut routes = BTreeSet::new();
    for chunk in body.split(".route(\"").skip(1) {
        let (path, handlers) = chunk.split_once('"').expect("route path");
        for method in ["get", "post", "put", "patch", "delete"] {
            let needle = format!("{method}(");
            let found = handlers.match_indices(&needle).any(|(i, _)| {
                i == 0
                    || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric()
                        && handlers.as_bytes()[i - 1] != b'_'
            });
            if found {
                routes.insert((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    routes
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.insert((method.to_uppercase(), path.clone()));
        }
    }
    ops
}

#[test]
fn every_route_is_documented_and_every_operation_routed() {
    let doc: Value = serde_json::from_str(&tenantd::api::openapi::document_json()).unwrap();
    let (routes, ops) = (routed(), documented(&doc));
    assert!(routes.len() > 20, "parsed too few routes from src/api/mod.rs: {routes:?}");
    let undocumented: Vec<_> = routes.difference(&ops).collect();
    let unrouted: Vec<_> = ops.difference(&routes).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes without a #[utoipa::path] listed in src/api/openapi.rs: {undocumented:?}; \
         documented operations without a route: {unrouted:?}"
    );
    // Every operation says what its errors look like, and the secured ones how to authenticate.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("500"), "{method} {path} lacks 500");
            if op
                .get("security")
                .is_some_and(|s| s.as_array().is_some_and(|s| !s.iter().any(|r| r == &json!({}))))
            {
                assert!(responses.contains_key("401"), "{method} {path} lacks 401");
            }
        }
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["admin"]["scheme"], "bearer");
    assert_eq!(schemes["tenant"]["scheme"], "bearer");
    assert!(doc["components"]["schemas"]["ErrorBody"]["properties"]["error"].is_object());
}

#[tokio::test]
async fn the_document_is_served_without_a_token() {
    let app = common::spawn_app().await;
    let (status, body) = app.request_as(reqwest::Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["openapi"], "3.1.0");
    let generated: Value = serde_json::from_str(&tenantd::api::openapi::document_json()).unwrap();
    assert!(body == generated, "GET /openapi.json is not the generated document");
}

/// The `st` executable: `SCHEMATHESIS` names it, else the virtualenv `.ci/run` creates.
fn schemathesis() -> PathBuf {
    let st = std::env::var_os("SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/schemathesis-venv/bin/st"));
    assert!(
        st.exists(),
        "schemathesis is missing at {}: create it with\n  python3 -m venv target/schemathesis-venv && \
         target/schemathesis-venv/bin/pip install schemathesis=={SCHEMATHESIS_VERSION}\n(.ci/run does this)",
        st.display()
    );
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_schema() {
    let st = schemathesis();
    let app = common::app()
        .configure(|s| {
            // ?wait= is bounded by the request timeout: keep generated waits short.
            s.http.request_timeout = Duration::from_secs(10);
        })
        .spawn()
        .await;
    let slug = format!("st-{}", random_suffix());
    let (status, body) = app.post("/v1/tenants", &json!({ "slug": slug })).await;
    assert_eq!(status, 201, "{body}");
    app.wait_ready(&slug).await;
    let report = tempfile::tempdir().unwrap();
    // The data plane and the reading operations get the READY tenant's slug, so generated SQL
    // and handles reach a real tenant database (the rest see generated slugs: 404s).
    let config = report.path().join("schemathesis.toml");
    let reaches_the_tenant = r"^/v1/tenants/\\{slug\\}(/(sql|handles|connection|events))?$";
    std::fs::write(
        &config,
        format!(
            "[[operations]]\ninclude-path-regex = \"{reaches_the_tenant}\"\ninclude-method-regex = \"^(GET|POST)$\"\n\
             parameters = {{ \"path.slug\" = \"{slug}\" }}\n"
        ),
    )
    .unwrap();
    let output = tokio::process::Command::new(&st)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{}/openapi.json", app.base))
        .args(["--header", &format!("Authorization: Bearer {}", app.admin_token)])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "15", "--seed", "1", "--workers", "2", "--request-timeout", "20"])
        .args(["--suppress-health-check", "all"])
        .env("NO_COLOR", "1")
        .arg("--report-dir")
        .arg(report.path())
        // Its crash cache stays out of the work tree.
        .current_dir(report.path())
        .stdin(std::process::Stdio::null())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), output)
        .await
        .expect("schemathesis ran for more than 4 minutes")
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown with --nocapture: which operations ran, how many cases.
    println!("{stdout}");
    assert!(output.status.success(), "schemathesis found problems:\n{stdout}\n{stderr}");
    assert!(stdout.contains("passed"), "schemathesis ran no test:\n{stdout}\n{stderr}");
}

#[tokio::test]
async fn the_audit_trail_pages_through_every_tenant_and_filters() {
    let app = common::spawn_app().await;
    let (a, b) = (format!("ev-a-{}", random_suffix()), format!("ev-b-{}", random_suffix()));
    for slug in [&a, &b] {
        let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": slug })).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["status"], "READY", "{body}");
    }
    // Page through everything, two at a time: ids increase, both tenants appear, nothing twice.
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let (status, page) = app.get(&format!("/v1/events?after={after}&limit=2")).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            assert_eq!(page["next"], after, "an empty page hands the cursor back");
            break;
        }
        assert!(events.len() <= 2);
        for e in events {
            let id = e["id"].as_i64().unwrap();
            assert!(id > after, "ids increase: {id} after {after}");
            after = id;
            seen.push(e.clone());
        }
        assert_eq!(page["next"], after);
    }
    let ready: Vec<&str> =
        seen.iter().filter(|e| e["kind"] == "ready").map(|e| e["tenant"].as_str().unwrap()).collect();
    assert_eq!(ready, vec![a.as_str(), b.as_str()], "both tenants' ready events, in order");

    let (_, page) = app.get(&format!("/v1/events?tenant={b}&kind=ready")).await;
    let only: Vec<&Value> = page["events"].as_array().unwrap().iter().collect();
    assert_eq!(only.len(), 1, "{page}");
    assert_eq!(only[0]["tenant"], b.as_str());
    assert_eq!(only[0]["actor"].as_str().map(|s| !s.is_empty()), Some(true));

    // Bad input names the problem; the trail is the admin's.
    let (status, body) = app.get("/v1/events?kind=readyy").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("readyy"), "{body}");
    let (status, body) = app.get("/v1/events?limit=0").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_query")), "{body}");
    let (status, _) = app.get("/v1/events?tenant=no-such-tenant").await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/v1/events?colour=red").await;
    assert_eq!(status, 400);
    let (status, _) = app.request_as(reqwest::Method::GET, "/v1/events", None, Some("nope")).await;
    assert_eq!(status, 401);

    // The CLI reads the same trail: JSON lines, filtered.
    let out = app.cli(&["events", "--json", "--tenant", &a]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<Value> =
        out.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert!(lines.iter().all(|e| e["tenant"] == a.as_str()), "{}", out.stdout);
    assert!(lines.iter().any(|e| e["kind"] == "ready"), "{}", out.stdout);
    let out = app.cli(&["events", "--kind", "ready"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains(&a) && out.stdout.contains(&b), "{}", out.stdout);
    let out = app.cli(&["events", "--kind", "nonsense"]).await;
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(out.stderr.contains("unknown kind"), "{}", out.stderr);
}

#[tokio::test]
async fn events_follow_prints_new_events_as_they_come() {
    use tokio::io::AsyncBufReadExt;
    let app = common::spawn_app().await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantd"));
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENANTD_")) {
        cmd.env_remove(name);
    }
    let mut child = cmd
        .args(["events", "--follow", "--json", "--kind", "ready"])
        .envs(app.cli_env())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tenantd events --follow");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Give it time to start following, then create a tenant: its ready event must show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let slug = format!("follow-{}", random_suffix());
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": slug })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("no event within 20 s")
        .expect("read stdout")
        .expect("a line");
    let event: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!((event["tenant"].as_str(), event["kind"].as_str()), (Some(slug.as_str()), Some("ready")));
    child.kill().await.expect("stop follower");
}

#[tokio::test]
async fn completions_are_printed_for_bash_zsh_and_fish() {
    let env = Default::default();
    for (shell, marker) in
        [("bash", "_tenantd()"), ("zsh", "#compdef tenantd"), ("fish", "complete -c tenantd")]
    {
        let out = common::cli(&["completions", shell], &env, None).await;
        assert_eq!(out.code, 0, "{shell}: {}", out.stderr);
        assert!(out.stdout.contains(marker), "{shell}: {}", out.stdout);
        assert!(out.stdout.contains("events") && out.stdout.contains("--json"), "{shell} misses commands");
    }
    let out = common::cli(&["completions", "tcsh"], &env, None).await;
    assert_eq!(out.code, 2, "an unknown shell is a usage error: {}", out.stdout);
}
