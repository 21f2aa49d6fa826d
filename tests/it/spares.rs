//! Warm spares: a new tenant is READY on a database provisioned ahead of need (the former
//! spare, working with the tenant's own credentials), spares refill, two daemons never hand
//! out one spare twice, a spare at an older version is never used, a crash in the middle of a
//! take loses neither the tenant nor the spare, and spares show in `GET /v1/servers` and count
//! against `max_tenants`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tenantd::steps::{Fault, FaultHook, Phase, Step};
use tenantd::tenant_migrations::MigrationSet;

use crate::common::{TestApp, app, connect, shared_cluster, wait_for};

/// The spares of the test's catalog: (id, database name, state, schema version).
async fn spares(app: &TestApp) -> Vec<(uuid::Uuid, String, String, i32)> {
    let c = connect(&app.catalog_url).await.unwrap();
    c.query("SELECT id, database_name, state, schema_version FROM tenantd.spares ORDER BY created_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// Waits until exactly `n` spares are ready (and none is in another state); returns them.
async fn ready_spares(app: &TestApp, n: usize) -> Vec<(uuid::Uuid, String, String, i32)> {
    wait_for(&format!("{n} ready spares"), Duration::from_secs(90), || async {
        let all = spares(app).await;
        (all.len() == n && all.iter().all(|s| s.2 == "ready")).then_some(all)
    })
    .await
}

/// The oid of a database on the shared cluster, if it exists.
async fn database_oid(name: &str) -> Option<u32> {
    let c = shared_cluster().superuser("postgres").await;
    c.query_opt("SELECT oid FROM pg_database WHERE datname = $1", &[&name]).await.unwrap().map(|r| r.get(0))
}

/// The spare a tenant took, from its `step.spare.taken` event.
async fn spare_taken(app: &TestApp, slug: &str) -> Option<uuid::Uuid> {
    let (_, events) = app.get(&format!("/v1/tenants/{slug}/events")).await;
    events
        .as_array()
        .unwrap_or_else(|| panic!("events of {slug}: {events}"))
        .iter()
        .find(|e| e["kind"] == "step.spare.taken")
        .map(|e| e["detail"]["spare"].as_str().unwrap().parse().unwrap())
}

fn server<'a>(servers: &'a Value, name: &str) -> &'a Value {
    servers["servers"]
        .as_array()
        .or(servers.as_array())
        .unwrap_or_else(|| panic!("servers: {servers}"))
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no server {name}: {servers}"))
}

/// Connects with the tenant's own connection details and runs a query on its migrated schema.
async fn works_with_its_credentials(app: &TestApp, slug: &str) -> String {
    let (status, details) = app.get(&format!("/v1/tenants/{slug}/connection")).await;
    assert_eq!(status, 200, "{details}");
    let client = connect(details["url"].as_str().unwrap()).await.expect("tenant credentials work");
    let row =
        client.query_one("SELECT current_user::text, (SELECT count(*) FROM customers)", &[]).await.unwrap();
    let n: i64 = row.get(1);
    assert_eq!(n, 0);
    client.batch_execute("INSERT INTO customers (name, email) VALUES ('a', 'a@example.com')").await.unwrap();
    let role: String = row.get(0);
    // Every table is the role's, and the admin (who migrated the spare acting as its role, in
    // that transaction only) holds none of the role's privileges.
    let admin = app.admin_user().await;
    let su = shared_cluster().superuser(details["dbname"].as_str().unwrap()).await;
    let row = su
        .query_one(
            "SELECT array_agg(DISTINCT pg_get_userbyid(c.relowner)::text), pg_has_role($1::text, $2::text, 'USAGE') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'",
            &[&admin, &role],
        )
        .await
        .unwrap();
    let (owners, admin_acts): (Vec<String>, bool) = (row.get(0), row.get(1));
    assert_eq!((owners, admin_acts), (vec![role.clone()], false), "owners of public, admin acts as the role");
    role
}

fn with_spares(n: usize) -> impl FnOnce(&mut tenantd::config::Settings) {
    move |s| s.spares.per_server = n
}

#[tokio::test]
async fn a_new_tenant_is_ready_on_a_warm_spare_and_the_spares_refill() {
    let app = app().configure(with_spares(2)).spawn().await;
    let before = ready_spares(&app, 2).await;
    let mut oids = Vec::new();
    for (_, name, _, _) in &before {
        oids.push(database_oid(name).await.expect("a spare is a real database"));
    }

    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "warm-one" })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    let taken = spare_taken(&app, "warm-one").await.expect("made from a spare");
    let spare = before.iter().find(|s| s.0 == taken).expect("one of the spares that were ready");
    // Its database is the former spare, under the tenant's name; the spare's name is gone.
    let database = body["database_name"].as_str().unwrap().to_owned();
    let oid = database_oid(&database).await.expect("the tenant's database exists");
    assert!(oids.contains(&oid), "the tenant's database is a former spare");
    assert_eq!(database_oid(&spare.1).await, None, "the spare's name is gone");
    assert_eq!(body["schema_version"], MigrationSet::embedded().latest_version());
    assert_eq!(works_with_its_credentials(&app, "warm-one").await, body["role_name"].as_str().unwrap());

    // The refill makes up for it; spares are not tenants.
    let after = ready_spares(&app, 2).await;
    assert!(after.iter().all(|s| s.0 != taken));
    let (_, servers) = app.get("/v1/servers").await;
    assert_eq!(
        (server(&servers, "pg1")["tenants"].as_i64(), server(&servers, "pg1")["spares"].as_i64()),
        (Some(1), Some(2))
    );
    let (_, tenants) = app.get("/v1/tenants").await;
    assert_eq!(tenants["tenants"].as_array().map(Vec::len), Some(1), "{tenants}");
    let out = app.cli(&["server", "list"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.lines().next().unwrap().contains("SPARES"), "{}", out.stdout);
    let metrics = app.http.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("tenantd_spares{server=\"pg1\"}"), "{metrics}");
}

#[tokio::test]
async fn two_daemons_taking_spares_at_once_never_hand_out_one_twice() {
    let a = app().configure(with_spares(6)).spawn().await;
    let b = app().same_catalog_as(&a).configure(with_spares(6)).spawn().await;
    ready_spares(&a, 6).await;
    let slugs: Vec<String> = (0..12).map(|i| format!("many-{i:02}")).collect();
    let posts = slugs.iter().enumerate().map(|(i, slug)| {
        let daemon = if i % 2 == 0 { &a } else { &b };
        async move { daemon.post("/v1/tenants", &json!({ "slug": slug })).await }
    });
    for (status, body) in futures::future::join_all(posts).await {
        assert_eq!(status, 201, "{body}");
    }
    let mut taken = Vec::new();
    let mut oids = Vec::new();
    for slug in &slugs {
        let tenant = a.wait_ready(slug).await;
        oids.push(database_oid(tenant["database_name"].as_str().unwrap()).await.unwrap());
        taken.extend(spare_taken(&a, slug).await);
    }
    assert!(taken.len() >= 6, "the 6 spares were taken: {taken:?}");
    let mut distinct = taken.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), taken.len(), "a spare was handed out twice: {taken:?}");
    oids.sort_unstable();
    oids.dedup();
    assert_eq!(oids.len(), slugs.len(), "every tenant has a database of its own");
    for slug in &slugs {
        works_with_its_credentials(&a, slug).await;
    }
    // Nothing half-taken; the pool is whole again.
    ready_spares(&a, 6).await;
}

/// "A newer build": the embedded migrations plus one more.
fn newer() -> MigrationSet {
    let next = MigrationSet::embedded().latest_version() + 1;
    MigrationSet::embedded().with(&format!("V{next}__invoices"), "CREATE TABLE invoices (id bigint)").unwrap()
}

#[tokio::test]
async fn a_spare_at_an_older_version_is_never_handed_out_and_is_replaced() {
    let mut old = app().configure(with_spares(1)).spawn().await;
    let old_spare = ready_spares(&old, 1).await.remove(0);
    old.stop().await;

    // The new build starts while another process holds the refill lease: nothing discards
    // the old spare, so only the take's own version check stands between it and a tenant.
    let catalog = connect(&old.catalog_url).await.unwrap();
    catalog
        .execute(
            // The old daemon, stopped mid-refill, may have left its own row.
            "INSERT INTO tenantd.spare_refills (server, lease_owner, lease_until) \
             VALUES ('pg1', 'someone-else', now() + interval '1 hour') \
             ON CONFLICT (server) DO UPDATE SET lease_owner = EXCLUDED.lease_owner, \
             lease_until = EXCLUDED.lease_until",
            &[],
        )
        .await
        .unwrap();
    let new = app().same_catalog_as(&old).migrations(newer()).configure(with_spares(1)).spawn().await;
    let (status, body) = new.post("/v1/tenants?wait=30", &json!({ "slug": "new-build" })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    assert_eq!(body["schema_version"], newer().latest_version());
    assert_eq!(spare_taken(&new, "new-build").await, None, "the old spare was not taken");
    assert_eq!(spares(&new).await, vec![old_spare.clone()], "the old spare is untouched");

    // Once the refill may run, the old spare is discarded and one at the new version made.
    catalog.execute("DELETE FROM tenantd.spare_refills", &[]).await.unwrap();
    let replaced = wait_for("the old spare replaced", Duration::from_secs(90), || async {
        let all = spares(&new).await;
        (all.len() == 1 && all[0].0 != old_spare.0 && all[0].2 == "ready").then(|| all[0].clone())
    })
    .await;
    assert_eq!(replaced.3, newer().latest_version());
    assert_eq!(database_oid(&old_spare.1).await, None, "the old spare's database is dropped");
    let (status, body) = new.post("/v1/tenants?wait=30", &json!({ "slug": "new-spare" })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    assert_eq!(spare_taken(&new, "new-spare").await, Some(replaced.0));
    let (status, rows) =
        new.post("/v1/tenants/new-spare/sql", &json!({ "sql": "SELECT count(*) FROM invoices" })).await;
    assert_eq!(status, 200, "{rows}");
}

#[tokio::test]
async fn a_crash_during_a_take_loses_neither_the_tenant_nor_the_spare() {
    // The first daemon "dies" at each point of the take, every time it gets there.
    let hook: FaultHook = Arc::new(|slug: &str, step: Step, phase: Phase| {
        let point = match slug {
            "crash-before" => Phase::Before,
            "crash-after" => Phase::After,
            _ => return None,
        };
        (step == Step::SpareTake && phase == point).then_some(Fault::Crash)
    });
    let short_lease = |s: &mut tenantd::config::Settings| s.workers.lease = Duration::from_secs(2);
    let mut first = app().configure(with_spares(2)).configure(short_lease).faults(hook).spawn().await;
    let before = ready_spares(&first, 2).await;
    let mut oids = Vec::new();
    for (_, name, _, _) in &before {
        oids.push(database_oid(name).await.unwrap());
    }
    for slug in ["crash-before", "crash-after"] {
        let (status, body) = first.post("/v1/tenants", &json!({ "slug": slug })).await;
        assert_eq!(status, 201, "{body}");
    }
    for slug in ["crash-before", "crash-after"] {
        wait_for(&format!("{slug} to take a spare"), Duration::from_secs(30), || async {
            spare_taken(&first, slug).await
        })
        .await;
    }
    first.stop().await;
    let after_crash: Vec<String> = spares(&first).await.into_iter().map(|s| s.2).collect();
    assert_eq!(
        after_crash.iter().filter(|s| *s == "taken").count(),
        2,
        "both takes stopped midway: {after_crash:?}"
    );

    let second = app().same_catalog_as(&first).configure(with_spares(2)).configure(short_lease).spawn().await;
    for slug in ["crash-before", "crash-after"] {
        let tenant = second.wait_ready(slug).await;
        let oid = database_oid(tenant["database_name"].as_str().unwrap()).await.unwrap();
        assert!(oids.contains(&oid), "{slug} finished on the spare it took");
        works_with_its_credentials(&second, slug).await;
    }
    for (_, name, _, _) in &before {
        assert_eq!(database_oid(name).await, None, "no spare left under its own name");
    }
    let now = ready_spares(&second, 2).await;
    assert!(now.iter().all(|s| before.iter().all(|b| b.0 != s.0)), "refilled with new spares");
}

#[tokio::test]
async fn spares_count_against_max_tenants_and_never_block_a_removal() {
    let mut app = app().configure(with_spares(2)).spawn().await;
    let (status, body) = app.patch("/v1/servers/pg1", &json!({ "max_tenants": 2 })).await;
    assert_eq!(status, 200, "{body}");
    ready_spares(&app, 2).await;
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "cap-one" })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    // One tenant and one spare fill the server: no refill beyond max_tenants.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, servers) = app.get("/v1/servers").await;
    let pg1 = server(&servers, "pg1");
    assert_eq!((pg1["tenants"].as_i64(), pg1["spares"].as_i64()), (Some(1), Some(1)), "{pg1}");
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "cap-two" })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    assert!(spare_taken(&app, "cap-two").await.is_some());
    let (status, body) = app.post("/v1/tenants?wait=2", &json!({ "slug": "cap-three" })).await;
    assert!(status == 201 || status == 202, "{status} {body}");
    let waiting = app
        .wait_tenant("cap-three", "waiting for room", Duration::from_secs(30), |t| {
            t["last_error"].as_str().is_some_and(|e| e.contains("full"))
        })
        .await;
    assert_eq!(waiting["status"], "PENDING", "{waiting}");
    assert_eq!(server(&app.get("/v1/servers").await.1, "pg1")["spares"], 0);

    // Room again: spares come back; delete the tenants and remove the server with the CLI
    // (no daemon running): its spares are dropped, they do not block the removal.
    let (status, body) = app.patch("/v1/servers/pg1", &json!({ "max_tenants": 10 })).await;
    assert_eq!(status, 200, "{body}");
    app.wait_ready("cap-three").await;
    let kept = ready_spares(&app, 2).await;
    for slug in ["cap-one", "cap-two", "cap-three"] {
        let (status, body) = app.request(reqwest::Method::DELETE, &format!("/v1/tenants/{slug}"), None).await;
        assert_eq!(status, 202, "{body}");
        app.wait_tenant(slug, "DELETED", Duration::from_secs(30), |t| t["status"] == "DELETED").await;
    }
    app.stop().await;
    let out = app.cli(&["server", "remove", "pg1"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    for (_, name, _, _) in spares(&app).await.iter().chain(&kept) {
        assert_eq!(database_oid(name).await, None, "spare {name} dropped with its server");
    }
    assert!(spares(&app).await.is_empty());
}

#[tokio::test]
async fn a_draining_server_loses_its_spares() {
    let app = app().configure(with_spares(2)).spawn().await;
    let before = ready_spares(&app, 2).await;
    let (status, body) = app.patch("/v1/servers/pg1", &json!({ "status": "draining" })).await;
    assert_eq!(status, 200, "{body}");
    ready_spares(&app, 0).await;
    for (_, name, _, _) in &before {
        assert_eq!(database_oid(name).await, None, "spare {name} dropped");
    }
    assert_eq!(server(&app.get("/v1/servers").await.1, "pg1")["spares"], 0);
    // Active again: it gets its spares back.
    let (status, body) = app.patch("/v1/servers/pg1", &json!({ "status": "active" })).await;
    assert_eq!(status, 200, "{body}");
    ready_spares(&app, 2).await;
}
