//! Outages on real clusters: the catalog, or a tenant server, stops and comes back. Meanwhile
//! the API answers 503 with `Retry-After` and a code that says what is down; afterwards the
//! same daemon carries on by itself, with no tenant lost or made twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tenantd::steps::{Fault, FaultHook, Phase, Step};

use crate::common::{ProcessDaemon, TestApp, TestCluster, app, shared_cluster, wait_for};

/// What a client sees of one request: status, `Retry-After` and the JSON body.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

async fn send(app: &TestApp, method: Method, path: &str, body: Option<&Value>, token: &str) -> Answer {
    let mut req = app.http.request(method, format!("{}{path}", app.base)).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(body);
    }
    let response = req.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().parse().unwrap());
    let text = response.text().await.expect("HTTP body");
    Answer { status, retry_after, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

/// Asserts a 503 with `Retry-After` and the given error code.
fn assert_unavailable(answer: &Answer, code: &str, what: &str) {
    assert_eq!(answer.status, 503, "{what}: {}", answer.body);
    assert_eq!(answer.body["error"]["code"], code, "{what}: {}", answer.body);
    assert!(answer.retry_after.is_some_and(|s| s >= 1), "{what}: 503 carries Retry-After");
}

/// A counter of a daemon process's `/metrics` (0 when it has not been counted yet).
async fn counter(daemon: &ProcessDaemon, series: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", daemon.base)).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

fn sql(statement: &str) -> Value {
    json!({ "sql": statement })
}

/// Creates a tenant and waits until it is READY; returns its token.
async fn ready_tenant(app: &TestApp, body: Value) -> String {
    let (status, created) = app.post("/v1/tenants?wait=30", &body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "READY", "{created}");
    created["token"].as_str().unwrap().to_owned()
}

/// Databases on the shared cluster whose name starts with `name`, and staging databases of
/// the tenant `id`.
async fn databases_of(name: &str, id: &str) -> (i64, i64) {
    let su = shared_cluster().superuser("postgres").await;
    let staging = format!("tenantd_staging_{}", id.replace('-', ""));
    let row = su
        .query_one(
            "SELECT count(*) FILTER (WHERE datname = $1), count(*) FILTER (WHERE datname = $2) FROM pg_database",
            &[&name, &staging],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_outage_answers_503_and_everything_resumes_by_itself() {
    let catalog_cluster = TestCluster::start_owned();
    let db = catalog_cluster.create_database("catalog").await;
    // "in-flight" is held mid-provisioning (after its role, before its database) while the
    // catalog goes away.
    let reached = Arc::new(AtomicBool::new(false));
    let flag = reached.clone();
    let hook: FaultHook = Arc::new(move |slug, step, phase| {
        (slug == "in-flight"
            && step == Step::Database
            && phase == Phase::Before
            && !flag.swap(true, Ordering::SeqCst))
        .then(|| Fault::Stall(Duration::from_secs(2)))
    });
    let app = app()
        .catalog_on(&catalog_cluster, &db)
        .faults(hook)
        .configure(|s| s.workers.lease = Duration::from_secs(3))
        .spawn()
        .await;
    let token = ready_tenant(&app, json!({ "slug": "steady" })).await;
    let (status, _) = app.post("/v1/tenants", &json!({ "slug": "in-flight" })).await;
    assert_eq!(status, 201);
    wait_for("in-flight to reach its database step", Duration::from_secs(30), || async {
        reached.load(Ordering::SeqCst).then_some(())
    })
    .await;
    // A second daemon, as a process whose log the test reads, with busy background tasks.
    let dir = crate::common::traversable_tempdir();
    let log = dir.path().join("daemon.log");
    let process =
        ProcessDaemon::start_logging(&app, &[("TENANTD_WORKERS_HEALTH_INTERVAL", "200ms")], &log).await;

    catalog_cluster.stop();
    let admin = app.admin_token.clone();
    // Cached lookups of the data plane last at most two seconds; then every route that needs
    // the catalog says so, at once: never a 500, never a hang until the request timeout.
    wait_for("lending to notice the catalog is gone", Duration::from_secs(10), || async {
        let answer = send(&app, Method::POST, "/v1/tenants/steady/sql", Some(&sql("SELECT 1")), &token).await;
        (answer.status == 503).then_some(())
    })
    .await;
    let create = json!({ "slug": "during" });
    let requests: [(Method, &str, Option<&Value>, &str); 7] = [
        (Method::GET, "/v1/tenants", None, &admin),
        (Method::GET, "/v1/tenants/steady", None, &admin),
        (Method::POST, "/v1/tenants", Some(&create), &admin),
        (Method::GET, "/v1/servers", None, &admin),
        (Method::POST, "/v1/tenants/steady/sql", Some(&sql("SELECT 1")), &admin),
        (Method::POST, "/v1/tenants/steady/sql", Some(&sql("SELECT 1")), &token),
        (Method::POST, "/v1/tenants/steady/handles", None, &token),
    ];
    for (method, path, body, token) in requests {
        let started = Instant::now();
        let answer = send(&app, method.clone(), path, body, token).await;
        assert_unavailable(&answer, "catalog_unavailable", &format!("{method} {path}"));
        assert!(started.elapsed() < Duration::from_secs(5), "{method} {path} answered at once");
    }
    let (status, ready) = app.get("/readyz").await;
    assert_eq!((status, &ready["error"]["code"]), (503, &json!("catalog_unavailable")), "{ready}");
    let (status, _) = app.get("/healthz").await;
    assert_eq!(status, 200, "the process itself is alive");
    // Background work keeps trying (counted), backing off...
    wait_for("the other daemon's tasks to retry a few times", Duration::from_secs(30), || async {
        let workers = counter(&process, "tenantd_catalog_errors_total{task=\"workers\"}").await;
        let health = counter(&process, "tenantd_catalog_errors_total{task=\"health\"}").await;
        (workers >= 12.0 && health >= 10.0).then_some(())
    })
    .await;

    // The catalog returns: the same daemon serves again, without a restart.
    catalog_cluster.restart();
    wait_for("the API to answer again", Duration::from_secs(30), || async {
        let (status, _) = app.get("/v1/tenants").await;
        (status == 200).then_some(())
    })
    .await;
    let answer =
        send(&app, Method::POST, "/v1/tenants/steady/sql", Some(&sql("SELECT 1 AS one")), &token).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // ...and the log says so once, not once per try: the outage, and its end.
    let read_log = || std::fs::read_to_string(&log).unwrap();
    wait_for("the other daemon to see the catalog again", Duration::from_secs(30), || async {
        read_log().contains("catalog reachable again").then_some(())
    })
    .await;
    let text = read_log();
    let lines = |what: &str| text.lines().filter(|l| l.contains(what)).count();
    assert_eq!(lines("tenantd::catalog: catalog unreachable"), 1, "{text}");
    assert_eq!(lines("tenantd::catalog: catalog reachable again"), 1, "{text}");
    let noisy: Vec<&str> = text
        .lines()
        .filter(|l| (l.contains(" WARN ") || l.contains("ERROR ")) && !l.contains("provision{"))
        .collect();
    assert!(noisy.len() <= 3, "warnings and errors outside provisioning: {noisy:#?}");
    // The workers resumed: the tenant caught mid-way finishes, a new one is made.
    let finished = app.wait_ready("in-flight").await;
    ready_tenant(&app, json!({ "slug": "after" })).await;
    let (_, list) = app.get("/v1/tenants").await;
    let slugs: Vec<&str> =
        list["tenants"].as_array().unwrap().iter().map(|t| t["slug"].as_str().unwrap()).collect();
    assert_eq!(slugs, ["after", "in-flight", "steady"], "nothing lost, nothing doubled");
    // Made exactly once: one database, no staging copy left, one `ready` event.
    let name = finished["database_name"].as_str().unwrap();
    let (databases, staging) = databases_of(name, finished["id"].as_str().unwrap()).await;
    assert_eq!((databases, staging), (1, 0), "{finished}");
    let (_, events) = app.get("/v1/tenants/in-flight/events").await;
    let readies = events.as_array().unwrap().iter().filter(|e| e["kind"] == "ready").count();
    assert_eq!(readies, 1, "{events}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_server_outage_is_503_for_its_tenants_only_and_heals_by_itself() {
    let second = Arc::new(TestCluster::start_owned());
    // "placed-there" is placed on pg2, and pg2 goes down right after: its provisioning must
    // wait for the server however long that takes, not give up after `max_attempts`.
    let cluster = second.clone();
    let hook: FaultHook = Arc::new(move |slug, step, phase| {
        if slug == "placed-there" && step == Step::Place && phase == Phase::After {
            cluster.stop();
        }
        None
    });
    let app = app().faults(hook).configure(|s| s.workers.max_attempts = 2).spawn().await;
    let (status, body) =
        app.post("/v1/servers", &json!({ "name": "pg2", "url": second.admin_url("postgres") })).await;
    assert_eq!(status, 201, "{body}");
    let on_pg2 = ready_tenant(&app, json!({ "slug": "on-pg2", "server": "pg2" })).await;
    let on_pg1 = ready_tenant(&app, json!({ "slug": "on-pg1", "server": "pg1" })).await;
    let answer = send(&app, Method::POST, "/v1/tenants/on-pg2/sql", Some(&sql("SELECT 1")), &on_pg2).await;
    assert_eq!(answer.status, 200, "a pooled connection to pg2: {}", answer.body);

    let (status, _) = app.post("/v1/tenants", &json!({ "slug": "placed-there", "server": "pg2" })).await;
    assert_eq!(status, 201);
    wait_for("the health check to mark pg2 unhealthy", Duration::from_secs(20), || async {
        let (_, server) = app.get("/v1/servers/pg2").await;
        (server["health"] == "unhealthy").then_some(())
    })
    .await;

    // pg2's tenants: 503 server_unavailable naming the server, for SQL and handles alike.
    let answer = send(&app, Method::POST, "/v1/tenants/on-pg2/sql", Some(&sql("SELECT 1")), &on_pg2).await;
    assert_unavailable(&answer, "server_unavailable", "SQL on pg2");
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("pg2"), "{}", answer.body);
    let answer = send(&app, Method::POST, "/v1/tenants/on-pg2/handles", None, &on_pg2).await;
    assert_unavailable(&answer, "server_unavailable", "a handle on pg2");
    // Connection details come from the catalog: still given.
    let answer = send(&app, Method::GET, "/v1/tenants/on-pg2/connection", None, &on_pg2).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    // Other servers' tenants are unaffected; new tenants go elsewhere.
    let answer = send(&app, Method::POST, "/v1/tenants/on-pg1/sql", Some(&sql("SELECT 1")), &on_pg1).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (_, elsewhere) = app.post("/v1/tenants?wait=30", &json!({ "slug": "elsewhere" })).await;
    assert_eq!((&elsewhere["status"], &elsewhere["server"]), (&json!("READY"), &json!("pg1")), "{elsewhere}");

    // The tenant placed on pg2 keeps retrying past max_attempts (2), and says why.
    let waiting = app
        .wait_tenant("placed-there", "retries past max_attempts", Duration::from_secs(30), |t| {
            t["attempts"].as_i64() > Some(3)
        })
        .await;
    assert_ne!(waiting["status"], "ERROR", "{waiting}");
    let reason = waiting["last_error"].as_str().unwrap();
    assert!(reason.contains("server pg2 unavailable"), "{waiting}");

    // pg2 returns: everything heals without anyone's help.
    second.restart();
    let placed = app.wait_ready("placed-there").await;
    assert_eq!(placed["server"], "pg2");
    let answer =
        send(&app, Method::POST, "/v1/tenants/on-pg2/sql", Some(&sql("SELECT 2 AS two")), &on_pg2).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["rows"][0]["two"], 2);
    wait_for("the health check to mark pg2 healthy", Duration::from_secs(20), || async {
        let (_, server) = app.get("/v1/servers/pg2").await;
        (server["health"] == "healthy").then_some(())
    })
    .await;
}
