//! Provisioning: every new tenant becomes a READY database — over HTTP, the CLI or a plain
//! INSERT — locked down, crash-safe at every step, never done twice, and never touching what
//! is not tenantd's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{ProcessDaemon, TestApp, app, shared_cluster, spawn_app, wait_for};
use serde_json::{Value, json};
use tenantd::steps::{Fault, FaultHook, Phase, Step};

fn db_name(app: &TestApp, slug: &str) -> String {
    format!("{}{}", app.settings.names.prefix, slug.replace('-', "_"))
}

async fn events(app: &TestApp, slug: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/v1/tenants/{slug}/events")).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["kind"].as_str().unwrap().to_owned()).collect()
}

/// The daemon that wrote an event (actors are `<daemon instance>/<claim>`).
fn instance_of(event: &Value) -> &str {
    event["actor"].as_str().unwrap().split('/').next().unwrap()
}

/// Databases and roles on the shared cluster whose names start with this app's prefix, and
/// any staging database left behind.
async fn server_objects(app: &TestApp) -> (Vec<String>, Vec<String>, Vec<String>) {
    let su = shared_cluster().superuser("postgres").await;
    let prefix = format!("{}%", app.settings.names.prefix.replace('_', "\\_"));
    let list = |sql: &'static str| {
        let su = &su;
        let prefix = prefix.clone();
        async move {
            su.query(sql, &[&prefix]).await.unwrap().iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()
        }
    };
    let dbs = list("SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1").await;
    let roles = list("SELECT rolname FROM pg_roles WHERE rolname LIKE $1 ORDER BY 1").await;
    let catalog = app.catalog().await;
    let ids: Vec<String> = catalog
        .query("SELECT replace(id::text, '-', '') FROM tenantd.tenants", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let staging: Vec<String> = su
        .query("SELECT datname FROM pg_database WHERE datname LIKE 'tenantd\\_staging\\_%'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|name| ids.iter().any(|id| name.ends_with(id.as_str())))
        .collect();
    (dbs, roles, staging)
}

/// Exactly one database and one role per tenant of `slugs` on the server, no staging left.
async fn assert_one_of_each(app: &TestApp, slugs: &[String]) {
    let (dbs, roles, staging) = server_objects(app).await;
    let mut expected: Vec<String> = slugs.iter().map(|s| db_name(app, s)).collect();
    expected.sort();
    assert_eq!(dbs, expected, "exactly one database per tenant");
    assert_eq!(roles, expected, "exactly one role per tenant");
    assert!(staging.is_empty(), "no orphan staging databases: {staging:?}");
    for db in &expected {
        assert_locked_down(app, db).await;
    }
}

/// What provisioning leaves on a tenant's database, whichever way it went: the tenant role may
/// connect and make temporary tables, PUBLIC may not connect, and the admin holds no privileges
/// of the tenant role (a first run acts as the role inside its transaction only).
async fn assert_locked_down(app: &TestApp, db: &str) {
    let su = shared_cluster().superuser("postgres").await;
    let admin = app.admin_user().await;
    let row = su
        .query_one(
            "SELECT has_database_privilege($1::text, $1::text, 'CONNECT'), \
                    has_database_privilege($1::text, $1::text, 'TEMPORARY'), \
                    has_database_privilege('public', $1::text, 'CONNECT'), pg_has_role($2::text, $1::text, 'USAGE')",
            &[&db, &admin],
        )
        .await
        .unwrap();
    let found: (bool, bool, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        found,
        (true, true, false, false),
        "{db}: (role CONNECT, role TEMP, PUBLIC CONNECT, admin acts as role)"
    );
}

#[tokio::test]
async fn a_new_tenant_becomes_a_locked_down_ready_database() {
    let app = spawn_app().await;
    let (status, body) =
        app.post("/v1/tenants?wait=30", &json!({ "slug": "acme-corp", "labels": { "plan": "pro" } })).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "READY", "{body}");
    assert_eq!(body["server"], "pg1");
    assert_eq!(body["labels"]["plan"], "pro");
    assert!(body["token"].as_str().unwrap().starts_with("tdt_"), "token shown once on creation");
    assert!(body["ready_at"].is_string());
    let db = db_name(&app, "acme-corp");
    assert_eq!(body["database_name"], db.as_str());
    assert_eq!(body["schema_version"].as_i64().unwrap(), tenantd::tenant_migrations::latest_version() as i64);

    // The same request again (a hook retrying): 200, same tenant, no token.
    let (status, again) = app.post("/v1/tenants", &json!({ "slug": "acme-corp" })).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], body["id"]);
    assert!(again.get("token").is_none());

    let cluster = shared_cluster();
    let su = cluster.superuser(&db).await;
    let owners: Vec<(String, String)> = su
        .query(
            "SELECT c.relname::text, pg_get_userbyid(c.relowner)::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let tables: Vec<&str> = owners.iter().map(|(t, _)| t.as_str()).collect();
    for table in ["customers", "order_items", "orders", "products", "tenantd_schema_history"] {
        assert!(tables.contains(&table), "{table} missing: {tables:?}");
    }
    assert!(owners.iter().all(|(_, owner)| owner == &db), "every table owned by the tenant role: {owners:?}");
    let public_connect: bool = su
        .query_one("SELECT has_database_privilege('public', current_database(), 'CONNECT')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!public_connect, "PUBLIC may not connect");
    let row = su
        .query_one("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = $1", &[&db])
        .await
        .unwrap();
    let role: (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(role, (false, false, false), "tenant role is plain LOGIN");

    // Another role cannot connect: PostgreSQL refuses because of how the database was made.
    let outsider = format!("outsider_{}", crate::common::random_suffix());
    cluster
        .superuser("postgres")
        .await
        .batch_execute(&format!("CREATE ROLE {outsider} LOGIN PASSWORD 'pw'"))
        .await
        .unwrap();
    let refused = crate::common::connect(&cluster.url(&outsider, "pw", &db)).await.unwrap_err();
    assert_eq!(refused.code(), Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE), "{refused}");

    assert_locked_down(&app, &db).await;

    let kinds = kinds(&events(&app, "acme-corp").await);
    assert_eq!(
        kinds,
        [
            "step.placed",
            "step.role.created",
            "step.database.created",
            "step.lockdown",
            "step.migrated",
            "step.renamed",
            "ready"
        ],
    );
}

/// A first run applies the migrations on the admin's session acting as the tenant role; a run
/// that resumes applies them on the tenant role's own session. A migration sees the same either
/// way: the tenant role as `current_user` (and owner), its statement timeout, the default
/// search path, the bounded lock wait.
#[tokio::test]
async fn the_migrations_see_the_same_session_on_a_first_run_and_on_a_resumed_one() {
    let set = tenantd::tenant_migrations::MigrationSet::embedded();
    let next = set.latest_version() + 1;
    let set = set
        .with(
            &format!("V{next}__whoami"),
            "CREATE TEMP TABLE scratch (i int); \
             CREATE TABLE at_commit (who text); \
             CREATE FUNCTION note_who() RETURNS int LANGUAGE sql AS \
               $$ INSERT INTO at_commit VALUES (current_user::text) RETURNING 1 $$; \
             DECLARE held CURSOR WITH HOLD FOR SELECT note_who(); \
             CREATE TABLE whoami AS SELECT current_user::text AS acting, \
                    current_setting('statement_timeout') AS statement_timeout, \
                    current_setting('search_path') AS search_path, current_setting('lock_timeout') AS lock_timeout, \
                    current_setting('transaction_read_only') AS read_only",
        )
        .unwrap();
    let failed_once = Arc::new(AtomicBool::new(false));
    let hook: FaultHook = Arc::new(move |slug, step, phase| {
        let first = slug == "resumed" && step == Step::Migrate && phase == Phase::Before;
        (first && !failed_once.swap(true, Ordering::SeqCst)).then(|| Fault::Fail("once".into()))
    });
    let app = app().migrations(set).faults(hook).spawn().await;
    let mut seen = Vec::new();
    for slug in ["first", "resumed"] {
        let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": slug })).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["status"], "READY", "{body}");
        let failures = kinds(&events(&app, slug).await).iter().filter(|k| *k == "attempt.failed").count();
        assert_eq!(failures, usize::from(slug == "resumed"), "{slug}: {:?}", events(&app, slug).await);
        let db = db_name(&app, slug);
        let su = shared_cluster().superuser(&db).await;
        let row = su
            .query_one(
                "SELECT acting, statement_timeout, search_path, lock_timeout, read_only, \
                        pg_get_userbyid((SELECT relowner FROM pg_class WHERE relname = 'whoami'))::text \
                 FROM whoami",
                &[],
            )
            .await
            .unwrap();
        let acting: String = row.get(0);
        let owner: String = row.get(5);
        assert_eq!((acting.as_str(), owner.as_str()), (db.as_str(), db.as_str()), "{slug}");
        let session: Vec<String> = (1..5).map(|i| row.get(i)).collect();
        // A WITH HOLD cursor's query runs at the commit: as the tenant role too.
        let at_commit: Vec<String> =
            su.query("SELECT who FROM at_commit", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(at_commit, [db.as_str()], "{slug}: what runs at commit");
        seen.push(session);
        assert_locked_down(&app, &db).await;
    }
    assert_eq!(seen[0], seen[1], "the first run and the resumed one");
    assert_eq!(seen[0], ["1min", "\"$user\",public", "5s", "off"], "the tenant role's own settings");
}

/// A migration that stops acting as the tenant role (`RESET ROLE`) on a first run, where the
/// session is the admin's, is refused before anything commits, and the resumed run applies it
/// on the role's own session: nothing is the admin's.
#[tokio::test]
async fn a_first_run_that_stops_acting_as_the_tenant_role_is_refused() {
    let set = tenantd::tenant_migrations::MigrationSet::embedded();
    let next = set.latest_version() + 1;
    let set = set
        .with(&format!("V{next}__reset_role"), "RESET ROLE; CREATE TABLE made_after_reset (i int)")
        .unwrap();
    let app = app().migrations(set).spawn().await;
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "resetter" })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    let events = events(&app, "resetter").await;
    let failed: Vec<&Value> = events.iter().filter(|e| e["kind"] == "attempt.failed").collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert!(failed[0]["detail"]["error"].as_str().unwrap().contains("changed the role"), "{failed:?}");
    let db = db_name(&app, "resetter");
    let su = shared_cluster().superuser(&db).await;
    let owners: Vec<String> = su
        .query("SELECT DISTINCT pg_get_userbyid(relowner)::text FROM pg_class WHERE relnamespace = 'public'::regnamespace", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, vec![db.as_str()], "everything in public is the tenant role's");
    assert_locked_down(&app, &db).await;
}

#[tokio::test]
async fn a_plain_insert_is_picked_up_even_without_its_notification() {
    let app = spawn_app().await;
    let catalog = app.catalog().await;
    catalog.execute("INSERT INTO tenantd.tenants (slug) VALUES ('plain-sql')", &[]).await.unwrap();
    let ready = app.wait_ready("plain-sql").await;
    assert_eq!(ready["database_name"], db_name(&app, "plain-sql").as_str(), "names derived by the daemon");

    // Lose the notification: the poll (500 ms in tests) still finds the tenant.
    catalog.batch_execute("ALTER TABLE tenantd.tenants DISABLE TRIGGER tenants_notify_insert").await.unwrap();
    catalog.execute("INSERT INTO tenantd.tenants (slug) VALUES ('silent-one')", &[]).await.unwrap();
    app.wait_ready("silent-one").await;
}

#[tokio::test]
async fn hostile_slugs_and_unknown_placements_are_rejected_and_create_nothing() {
    let app = spawn_app().await;
    let long = "a".repeat(64);
    for slug in [
        "Acme",
        "ac",
        "acme\"; DROP DATABASE postgres; --",
        "acme'x",
        "ac me",
        "tenant\n",
        "écume",
        &long,
        "template0",
        "postgres",
        "pg_x",
        "",
    ] {
        let (status, body) = app.post("/v1/tenants", &json!({ "slug": slug })).await;
        assert_eq!(status, 400, "{slug:?}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("slug"), "{body}");
    }
    let (status, body) = app.post("/v1/tenants", &json!({ "slug": "fine-slug", "server": "nope" })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = app.post("/v1/tenants", &json!({ "slug": "fine-slug", "region": "mars" })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("unknown_region")), "{body}");
    let (status, body) = app.post("/v1/tenants", &json!({ "slug": "fine-slug", "labels": [1, 2] })).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app.post("/v1/tenants?wait=-1", &json!({ "slug": "fine-slug" })).await;
    assert_eq!(status, 400, "{body}");
    let (_, list) = app.get("/v1/tenants").await;
    assert_eq!(list["tenants"], json!([]), "nothing created: {list}");

    // Two slugs that derive the same database name: the second is a conflict, not a truncation.
    let (status, _) = app.post("/v1/tenants", &json!({ "slug": "same-name" })).await;
    assert_eq!(status, 201);
    let (status, body) = app.post("/v1/tenants", &json!({ "slug": "same_name" })).await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");
    // Same slug, different placement request: conflict, not silently ignored.
    let (status, _) = app.post("/v1/tenants", &json!({ "slug": "same-name", "server": "pg1" })).await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn a_foreign_database_with_the_tenants_name_is_never_touched() {
    let app = spawn_app().await;
    let cluster = shared_cluster();
    let db = db_name(&app, "taken");
    let su = cluster.superuser("postgres").await;
    su.batch_execute(&format!("CREATE DATABASE {db}")).await.unwrap();
    su.batch_execute(&format!("COMMENT ON DATABASE {db} IS 'payroll, do not touch'")).await.unwrap();
    cluster
        .superuser(&db)
        .await
        .batch_execute("CREATE TABLE salaries (amount int); INSERT INTO salaries VALUES (1)")
        .await
        .unwrap();

    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "taken" })).await;
    assert_eq!(status, 201);
    assert_eq!(body["status"], "ERROR", "{body}");
    let reason = body["last_error"].as_str().unwrap();
    assert!(reason.contains("not this tenant's") && reason.contains(&db), "{reason}");
    assert_eq!(body["attempts"], 1, "not retried: retrying cannot help");

    let comment: String = su
        .query_one("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1", &[&db])
        .await
        .unwrap()
        .get(0);
    assert_eq!(comment, "payroll, do not touch");
    let rows: i64 =
        cluster.superuser(&db).await.query_one("SELECT count(*) FROM salaries", &[]).await.unwrap().get(0);
    assert_eq!(rows, 1);
    let (_, roles, staging) = server_objects(&app).await;
    assert!(roles.is_empty() && staging.is_empty(), "nothing created: {roles:?} {staging:?}");

    // The operator moves the foreign database away and retries: now it works.
    su.batch_execute(&format!("ALTER DATABASE {db} RENAME TO {db}_moved")).await.unwrap();
    let (status, body) = app.post("/v1/tenants/taken/retry", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    app.wait_ready("taken").await;
    su.batch_execute(&format!("DROP DATABASE {db}_moved")).await.unwrap();
    let (status, body) = app.post("/v1/tenants/taken/retry", &json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("wrong_state")),
        "READY cannot be retried"
    );
}

#[tokio::test]
async fn a_foreign_role_with_the_tenants_name_is_never_adopted() {
    let app = spawn_app().await;
    let role = db_name(&app, "squatted");
    let su = shared_cluster().superuser("postgres").await;
    su.batch_execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'theirs'; GRANT CONNECT ON DATABASE postgres TO {role}"
    ))
    .await
    .unwrap();
    let (_, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "squatted" })).await;
    assert_eq!(body["status"], "ERROR", "{body}");
    assert!(body["last_error"].as_str().unwrap().contains("not this tenant's"), "{body}");
    // The foreign role's password and attributes are untouched, and no database was made.
    crate::common::connect(&shared_cluster().url(&role, "theirs", "postgres"))
        .await
        .expect("their password still works");
    let (dbs, _, staging) = server_objects(&app).await;
    assert!(dbs.is_empty() && staging.is_empty(), "{dbs:?} {staging:?}");
}

/// One tenant per (step, phase, fault). A `fail` fault fails the tenant's first pass through
/// its point; a `crash` fault "kills" the process at its point on every pass, so that a tenant
/// whose crash point comes round again can only be finished by another daemon (one without the
/// hook: the restart).
fn fault_plan() -> (FaultHook, Vec<String>) {
    let mut plan: HashMap<String, (Step, Phase, Fault)> = HashMap::new();
    for step in Step::ALL {
        for phase in [Phase::Before, Phase::After] {
            if step == Step::Ready && phase == Phase::After {
                continue; // nothing runs after READY
            }
            for (mode, fault) in [("fail", Fault::Fail("boom".into())), ("crash", Fault::Crash)] {
                let slug = format!(
                    "f-{}-{}-{mode}",
                    step.as_str(),
                    if phase == Phase::Before { "pre" } else { "post" }
                );
                plan.insert(slug, (step, phase, fault));
            }
        }
    }
    let slugs: Vec<String> = plan.keys().cloned().collect();
    let fired: Arc<Mutex<HashSet<String>>> = Arc::default();
    let hook: FaultHook = Arc::new(move |slug, step, phase| {
        let (want_step, want_phase, fault) = plan.get(slug)?;
        if (*want_step, *want_phase) != (step, phase) {
            return None;
        }
        let first_pass = fired.lock().unwrap().insert(slug.to_owned());
        (first_pass || matches!(fault, Fault::Crash)).then(|| fault.clone())
    });
    (hook, slugs)
}

#[tokio::test]
async fn a_failure_or_crash_at_every_step_is_recovered_after_a_restart() {
    let (hook, slugs) = fault_plan();
    let mut first = app()
        .configure(|s| {
            s.workers.lease = Duration::from_secs(2);
            s.workers.concurrency = 6;
        })
        .faults(hook)
        .spawn()
        .await;
    for slug in &slugs {
        let (status, body) = first.post("/v1/tenants", &json!({ "slug": slug })).await;
        assert_eq!(status, 201, "{body}");
    }
    // Every injected failure is recorded and retried; crashed tenants stay claimed by the dead
    // "process" until their lease runs out, and crash again at the same point when it retries.
    for slug in slugs.iter().filter(|s| s.ends_with("-fail")) {
        first.wait_ready(slug).await;
        let events = events(&first, slug).await;
        let failed: Vec<&Value> = events.iter().filter(|e| e["kind"] == "attempt.failed").collect();
        assert_eq!(failed.len(), 1, "{slug}: {events:?}");
        assert!(failed[0]["detail"]["error"].as_str().unwrap().contains("injected failure: boom"));
    }
    first.stop().await;
    // A crash point that every retry passes again (all but those after `place` and `rename`,
    // whose work a retry finds done and skips) kept those tenants from READY in that process.
    let catalog = first.catalog().await;
    let unfinished: HashSet<String> = catalog
        .query("SELECT slug FROM tenantd.tenants WHERE status <> 'READY'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for slug in slugs.iter().filter(|s| s.ends_with("-crash")) {
        if !["f-place-post-crash", "f-rename-post-crash"].contains(&slug.as_str()) {
            assert!(unfinished.contains(slug), "{slug} cannot be READY before the restart: {unfinished:?}");
        }
    }

    // "Restart": a new daemon on the same catalog picks up where the crashed one stopped.
    let second =
        app().same_catalog_as(&first).configure(|s| s.workers.lease = Duration::from_secs(2)).spawn().await;
    let restarted = second.daemon.as_ref().unwrap().app().instance.clone();
    for slug in &slugs {
        let tenant = second.wait_ready(slug).await;
        let events = events(&second, slug).await;
        let kinds = kinds(&events);
        assert_eq!(kinds.iter().filter(|k| *k == "ready").count(), 1, "{slug}: {kinds:?}");
        if unfinished.contains(slug) {
            let ready = events.iter().find(|e| e["kind"] == "ready").unwrap();
            assert_eq!(instance_of(ready), restarted, "{slug} finished by the restarted daemon: {events:?}");
        }
        let created = kinds.iter().filter(|k| *k == "step.role.created").count();
        let adopted = kinds.iter().filter(|k| *k == "step.role.adopted").count();
        // A fault after CREATE ROLE but before its event shows as an adoption on the retry.
        assert!(created <= 1 && created + adopted >= 1, "{slug}: role made once: {kinds:?}");
        assert_eq!(
            tenant["schema_version"].as_i64().unwrap(),
            tenantd::tenant_migrations::latest_version() as i64
        );
    }
    assert_one_of_each(&second, &slugs).await;
}

#[tokio::test]
async fn two_daemons_on_one_catalog_never_do_a_step_twice() {
    let one = app().configure(|s| s.workers.concurrency = 4).spawn().await;
    let _two = app().same_catalog_as(&one).configure(|s| s.workers.concurrency = 4).spawn().await;
    let slugs: Vec<String> = (0..30).map(|i| format!("pair-{i:02}")).collect();
    let catalog = one.catalog().await;
    for slug in &slugs {
        catalog.execute("INSERT INTO tenantd.tenants (slug) VALUES ($1)", &[slug]).await.unwrap();
    }
    let mut actors = HashSet::new();
    for slug in &slugs {
        one.wait_ready(slug).await;
        let events = events(&one, slug).await;
        let kinds = kinds(&events);
        for kind in [
            "step.placed",
            "step.role.created",
            "step.database.created",
            "step.lockdown",
            "step.migrated",
            "step.renamed",
            "ready",
        ] {
            assert_eq!(kinds.iter().filter(|k| *k == kind).count(), 1, "{slug}: {kind} in {kinds:?}");
        }
        assert!(!kinds.iter().any(|k| k.contains("failed") || k.contains("adopted")), "{slug}: {kinds:?}");
        // Actors are `<daemon instance>/<claim>`: group by daemon.
        actors.extend(
            events.iter().map(|e| e["actor"].as_str().unwrap().split('/').next().unwrap().to_owned()),
        );
    }
    assert_eq!(actors.len(), 2, "both daemons took part: {actors:?}");
    let (dbs, _, staging) = server_objects(&one).await;
    assert_eq!(dbs.len(), 30);
    assert!(staging.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_spreads_by_weight_and_skips_ineligible_servers() {
    let app = app().without_server().spawn().await;
    let cluster = shared_cluster();
    let url = cluster.admin_url("postgres");
    let down = crate::common::TestCluster::start_owned();
    for (name, extra, server_url) in [
        ("light", json!({ "weight": 1 }), &url),
        ("heavy", json!({ "weight": 3 }), &url),
        ("drain", json!({}), &url),
        ("maint", json!({}), &url),
        ("full", json!({ "max_tenants": 0 }), &url),
        ("down", json!({}), &down.admin_url("postgres")),
    ] {
        let mut body = json!({ "name": name, "url": server_url });
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let (status, answer) = app.post("/v1/servers", &body).await;
        assert_eq!(status, 201, "{answer}");
    }
    app.patch("/v1/servers/drain", &json!({ "status": "draining" })).await;
    app.patch("/v1/servers/maint", &json!({ "status": "maintenance" })).await;
    down.stop();
    crate::common::wait_for("server down marked unhealthy", Duration::from_secs(20), || async {
        let (_, s) = app.get("/v1/servers/down").await;
        (s["health"] == "unhealthy").then_some(())
    })
    .await;

    for i in 0..8 {
        let (status, body) = app.post("/v1/tenants", &json!({ "slug": format!("spread-{i}") })).await;
        assert_eq!(status, 201, "{body}");
    }
    let mut per_server: HashMap<String, usize> = HashMap::new();
    for i in 0..8 {
        let t = app.wait_ready(&format!("spread-{i}")).await;
        *per_server.entry(t["server"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(
        per_server,
        HashMap::from([("light".into(), 2), ("heavy".into(), 6)]),
        "1:3 by weight, nothing elsewhere"
    );

    // Asking for an ineligible server: the tenant waits in PENDING with the reason.
    let (_, body) = app.post("/v1/tenants", &json!({ "slug": "wants-down", "server": "down" })).await;
    assert_eq!(body["status"], "PENDING");
    let waiting = app
        .wait_tenant("wants-down", "waiting reason", Duration::from_secs(20), |t| t["last_error"].is_string())
        .await;
    assert_eq!(waiting["status"], "PENDING");
    assert_eq!(waiting["attempts"], 0, "waiting is not failing");
    assert!(waiting["last_error"].as_str().unwrap().contains("down is unhealthy"), "{waiting}");
    // Other servers are unaffected meanwhile.
    let (_, other) = app.post("/v1/tenants?wait=30", &json!({ "slug": "meanwhile" })).await;
    assert_eq!(other["status"], "READY", "{other}");

    // The server comes back: the health check sees it, the waiting tenant is placed there.
    down.restart();
    let placed = app.wait_ready("wants-down").await;
    assert_eq!(placed["server"], "down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_failing_mid_provisioning_is_retried_with_the_error_recorded() {
    let second = crate::common::TestCluster::start_owned();
    // The server dies right after the tenant's role is created.
    let down = Arc::new(Mutex::new(Some(second)));
    let (killer, fired) = (down.clone(), Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let hook: FaultHook = Arc::new(move |slug, step, phase| {
        if slug == "victim"
            && step == Step::Role
            && phase == Phase::After
            && !fired.swap(true, std::sync::atomic::Ordering::SeqCst)
            && let Some(cluster) = killer.lock().unwrap().as_ref()
        {
            cluster.stop();
        }
        None
    });
    let app = app().faults(hook).configure(|s| s.workers.max_attempts = 1000).spawn().await;
    let url = down.lock().unwrap().as_ref().unwrap().admin_url("postgres");
    let (status, _) = app.post("/v1/servers", &json!({ "name": "pg2", "url": url })).await;
    assert_eq!(status, 201);
    app.post("/v1/tenants", &json!({ "slug": "victim", "server": "pg2" })).await;
    let failing = app
        .wait_tenant("victim", "a recorded failure", Duration::from_secs(30), |t| {
            t["attempts"].as_i64() >= Some(1)
        })
        .await;
    assert_ne!(failing["status"], "READY");
    assert!(failing["last_error"].as_str().unwrap().contains("step"), "{failing}");
    let (_, bystander) =
        app.post("/v1/tenants?wait=30", &json!({ "slug": "bystander", "server": "pg1" })).await;
    assert_eq!(bystander["status"], "READY", "other servers are unaffected: {bystander}");

    down.lock().unwrap().as_ref().unwrap().restart();
    let ready = app.wait_ready("victim").await;
    assert_eq!(ready["attempts"], 0, "attempts reset once READY");
    let kinds = kinds(&events(&app, "victim").await);
    assert!(
        kinds.contains(&"attempt.failed".to_owned()) && kinds.contains(&"step.role.adopted".to_owned()),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let app = spawn_app().await;
    for slug in ["list-a", "list-b", "list-c"] {
        app.post("/v1/tenants", &json!({ "slug": slug })).await;
    }
    for slug in ["list-a", "list-b", "list-c"] {
        app.wait_ready(slug).await;
    }
    let (_, page1) = app.get("/v1/tenants?limit=2").await;
    let slugs: Vec<&str> =
        page1["tenants"].as_array().unwrap().iter().map(|t| t["slug"].as_str().unwrap()).collect();
    assert_eq!(slugs, ["list-a", "list-b"]);
    assert_eq!(page1["next"], "list-b");
    let (_, page2) = app.get("/v1/tenants?limit=2&after=list-b").await;
    assert_eq!(page2["tenants"][0]["slug"], "list-c");
    assert!(page2.get("next").is_none());
    let (_, ready) = app.get("/v1/tenants?status=ready&server=pg1").await;
    assert_eq!(ready["tenants"].as_array().unwrap().len(), 3);
    let (status, _) = app.get("/v1/tenants?status=sleepy").await;
    assert_eq!(status, 400);
    let (status, _) = app.get("/v1/tenants/nobody").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn tenants_over_the_cli_without_a_daemon() {
    let mut app = spawn_app().await;
    app.stop().await;
    // No daemon: `create --wait` provisions in the CLI process itself.
    let out = app.cli(&["tenant", "create", "cli-made", "--label", "plan=free", "--wait", "60"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("tenant token (shown once"), "{}", out.stderr);
    assert!(out.stdout.contains("READY"), "{}", out.stdout);
    let again = app.cli(&["tenant", "create", "cli-made"]).await;
    assert_eq!(again.code, 0);
    assert!(again.stderr.contains("exists already"), "{}", again.stderr);
    let show = app.cli(&["tenant", "show", "cli-made", "--json"]).await;
    let shown: Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(shown["tenant"]["labels"]["plan"], "free");
    assert!(
        shown["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "ready" && e["actor"].as_str().unwrap().starts_with("cli:"))
    );
    let list = app.cli(&["tenant", "list", "--status", "READY"]).await;
    assert!(list.stdout.lines().any(|l| l.starts_with("cli-made") && l.contains("READY")), "{}", list.stdout);
    let bad = app.cli(&["tenant", "create", "Bad Slug"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    let retry = app.cli(&["tenant", "retry", "cli-made"]).await;
    assert_eq!(retry.code, 1, "{retry:?}");
    assert!(retry.stderr.contains("READY"), "{}", retry.stderr);
}

#[tokio::test]
async fn an_in_flight_wait_is_answered_when_the_daemon_stops() {
    // No server: the tenant cannot become READY, so the request stays in flight.
    let app = app().without_server().spawn().await;
    let request = app
        .http
        .post(format!("{}/v1/tenants?wait=50", app.base))
        .bearer_auth(&app.admin_token)
        .json(&json!({ "slug": "patient" }))
        .send();
    let stop = async {
        // The handler has inserted the tenant, so the request is in flight.
        crate::common::wait_for("request in flight", Duration::from_secs(10), || async {
            (app.get("/v1/tenants/patient").await.0 == 200).then_some(())
        })
        .await;
        app.daemon.as_ref().unwrap().app().shutdown.shutdown().await;
    };
    let (response, ()) = tokio::join!(request, stop);
    let response = response.expect("answered, not dropped");
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "PENDING");
}

#[tokio::test]
async fn tenants_caught_mid_step_by_a_sigkill_are_finished_by_the_next_daemon() {
    // The catalog and server `pg1` are set up by an in-process daemon that then steps aside;
    // the daemon that provisions is a real process, so it can die for real.
    let mut setup = spawn_app().await;
    setup.stop().await;
    let mut doomed = ProcessDaemon::start(
        &setup,
        &[("TENANTD_WORKERS_LEASE", "2s"), ("TENANTD_WORKERS_CONCURRENCY", "4")],
    )
    .await;
    let slugs: Vec<String> = (0..16).map(|i| format!("killed-{i:02}")).collect();
    for slug in &slugs {
        let response = setup
            .http
            .post(format!("{}/v1/tenants", doomed.base))
            .bearer_auth(&setup.admin_token)
            .json(&json!({ "slug": slug }))
            .send()
            .await
            .expect("create over HTTP");
        assert_eq!(response.status(), 201, "{slug}");
    }
    // SIGKILL while tenants are mid-step (claimed, placed, not READY), some others done.
    let catalog = setup.catalog().await;
    let mid_step = "SELECT slug FROM tenantd.tenants \
                    WHERE status IN ('CREATING', 'MIGRATING') AND lease_owner IS NOT NULL ORDER BY slug";
    let ready = "SELECT slug FROM tenantd.tenants WHERE status = 'READY'";
    wait_for("tenants mid-step in the daemon process", Duration::from_secs(60), || async {
        let mid = catalog.query(mid_step, &[]).await.unwrap().len();
        (mid >= 2 && catalog.query(ready, &[]).await.unwrap().len() >= 2).then_some(())
    })
    .await;
    doomed.kill().await;
    let crashed: Vec<String> = catalog.query(mid_step, &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert!(!crashed.is_empty(), "the kill must catch tenants mid-step, or this test proves nothing");
    let ready_before: HashSet<String> =
        catalog.query(ready, &[]).await.unwrap().iter().map(|r| r.get(0)).collect();

    // The next daemon waits out the dead process's leases and finishes its work.
    let second = app()
        .same_catalog_as(&setup)
        .configure(|s| {
            s.workers.lease = Duration::from_secs(2);
            s.workers.concurrency = 4;
        })
        .spawn()
        .await;
    let restarted = second.daemon.as_ref().unwrap().app().instance.clone();
    for slug in &slugs {
        second.wait_ready(slug).await;
        let events = events(&second, slug).await;
        let kinds = kinds(&events);
        assert_eq!(kinds.iter().filter(|k| *k == "ready").count(), 1, "{slug}: {kinds:?}");
        for step in ["role", "database"] {
            let created = kinds.iter().filter(|k| **k == format!("step.{step}.created")).count();
            let adopted = kinds.iter().filter(|k| **k == format!("step.{step}.adopted")).count();
            assert!(created <= 1 && created + adopted >= 1, "{slug}: {step} made once: {kinds:?}");
        }
        let by_second = events.iter().filter(|e| instance_of(e) == restarted).count();
        if crashed.contains(slug) {
            let ready = events.iter().find(|e| e["kind"] == "ready").unwrap();
            assert_eq!(instance_of(ready), restarted, "{slug} finished after the crash: {events:?}");
            assert!(
                events.iter().any(|e| e["kind"] == "step.placed" && instance_of(e) != restarted),
                "{slug} was begun by the killed process: {events:?}"
            );
        }
        if ready_before.contains(slug) {
            assert_eq!(by_second, 0, "{slug} was READY before the crash and is left alone: {events:?}");
        }
    }
    // Exactly one database and one role per tenant on the server, nothing left in staging.
    assert_one_of_each(&second, &slugs).await;
}

#[tokio::test]
async fn a_tenant_that_keeps_failing_goes_to_error_after_max_attempts() {
    // The database step fails until the "operator" repairs things.
    let repaired = Arc::new(AtomicBool::new(false));
    let fixed = repaired.clone();
    let hook: FaultHook = Arc::new(move |slug, step, phase| {
        (slug == "doomed"
            && step == Step::Database
            && phase == Phase::Before
            && !fixed.load(Ordering::SeqCst))
        .then(|| Fault::Fail("disk on fire".into()))
    });
    let app = app().faults(hook).configure(|s| s.workers.max_attempts = 3).spawn().await;
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "doomed" })).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "ERROR", "{body}");
    assert_eq!(body["attempts"], 3, "{body}");
    let last_error = body["last_error"].as_str().unwrap();
    assert!(last_error.contains("step database") && last_error.contains("disk on fire"), "{body}");

    let history = events(&app, "doomed").await;
    let failed: Vec<&Value> = history.iter().filter(|e| e["kind"] == "attempt.failed").collect();
    assert_eq!(failed.len(), 2, "attempts 1 and 2 are retried: {history:?}");
    let errors: Vec<&Value> = history.iter().filter(|e| e["kind"] == "error").collect();
    assert_eq!(errors.len(), 1, "{history:?}");
    assert_eq!(errors[0]["detail"]["attempt"], 3, "{history:?}");
    assert!(errors[0]["detail"]["error"].as_str().unwrap().contains("disk on fire"), "{history:?}");
    assert!(
        errors[0]["detail"]["reason"].as_str().unwrap().contains("gave up after 3 attempts"),
        "{history:?}"
    );

    // ERROR is final: while another tenant is provisioned start to end, no fourth attempt runs.
    let (_, other) = app.post("/v1/tenants?wait=30", &json!({ "slug": "bystander" })).await;
    assert_eq!(other["status"], "READY", "{other}");
    let (_, still) = app.get("/v1/tenants/doomed").await;
    assert_eq!((still["status"].as_str(), still["attempts"].as_i64()), (Some("ERROR"), Some(3)), "{still}");
    assert_eq!(events(&app, "doomed").await.len(), history.len(), "nothing happened to it meanwhile");

    // Repaired, retried: it starts again from where the world is.
    repaired.store(true, Ordering::SeqCst);
    let (status, body) = app.post("/v1/tenants/doomed/retry", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let ready = app.wait_ready("doomed").await;
    assert_eq!(ready["attempts"], 0);
}

#[tokio::test]
async fn a_dropped_listen_connection_is_reestablished() {
    // Polling is far away: anything fast below comes from a notification.
    let app = app().configure(|s| s.workers.poll_interval = Duration::from_secs(300)).spawn().await;
    let su = shared_cluster().superuser(&app.catalog_db).await;
    let listener = "SELECT pid FROM pg_stat_activity \
                    WHERE datname = current_database() AND application_name = 'tenantd' AND query LIKE 'LISTEN%'";
    let watcher = |sql: &'static str| {
        let su = &su;
        async move { su.query(sql, &[]).await.unwrap().iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>() }
    };
    let old = wait_for("the daemon's LISTEN connection", Duration::from_secs(20), || async {
        let pids = watcher(listener).await;
        (pids.len() == 1).then(|| pids[0])
    })
    .await;
    let killed: bool = su.query_one("SELECT pg_terminate_backend($1)", &[&old]).await.unwrap().get(0);
    assert!(killed);
    let new = wait_for("a new LISTEN connection", Duration::from_secs(20), || async {
        let pids = watcher(listener).await;
        (pids.len() == 1 && pids[0] != old).then(|| pids[0])
    })
    .await;
    assert_ne!(new, old);

    // A plain INSERT is provisioned at once: its notification arrived on the new connection.
    app.catalog().await.execute("INSERT INTO tenantd.tenants (slug) VALUES ('heard')", &[]).await.unwrap();
    app.wait_tenant("heard", "READY well before the 300 s poll", Duration::from_secs(60), |t| {
        t["status"] == "READY"
    })
    .await;
}

/// A notification stands for one tenant and wakes one idle worker, but one notification can
/// stand for many (a bulk INSERT by a sign-up system, a notification lost): the worker it wakes
/// wakes the next as it claims, so every idle worker takes part at once — not one worker
/// going through them all while the others sleep until the poll.
#[tokio::test]
async fn one_notification_for_many_tenants_reaches_every_idle_worker() {
    let app = app()
        .configure(|s| {
            s.workers.concurrency = 4;
            // Far away: anything below comes from the one notification.
            s.workers.poll_interval = Duration::from_secs(300);
        })
        .spawn()
        .await;
    let catalog = app.catalog().await;
    let slugs: Vec<String> = (0..8).map(|i| format!("chain-{i}")).collect();
    // Eight tenants, and a single notification for them all.
    catalog.batch_execute("ALTER TABLE tenantd.tenants DISABLE TRIGGER tenants_notify_insert").await.unwrap();
    catalog.execute("INSERT INTO tenantd.tenants (slug) SELECT unnest($1::text[])", &[&slugs]).await.unwrap();
    catalog.batch_execute("ALTER TABLE tenantd.tenants ENABLE TRIGGER tenants_notify_insert").await.unwrap();
    catalog
        .batch_execute(r#"NOTIFY tenantd, '{"table": "tenants", "op": "INSERT", "key": "chain-0", "status": "PENDING"}'"#)
        .await
        .unwrap();
    for slug in &slugs {
        app.wait_tenant(slug, "READY well before the 300 s poll", Duration::from_secs(60), |t| {
            t["status"] == "READY"
        })
        .await;
    }
    // The most tenants whose provisioning (placed → READY) overlapped one's own.
    let row = catalog
        .query_one(
            "WITH s AS (SELECT t.slug, e.at AS placed, t.ready_at AS ready FROM tenantd.tenants t \
               JOIN tenantd.tenant_events e ON e.tenant_id = t.id AND e.kind = 'step.placed' \
               WHERE t.slug = ANY($1)) \
             SELECT coalesce(max(n), 0) FROM (SELECT a.slug, count(*) AS n FROM s a JOIN s b \
               ON a.slug <> b.slug AND a.placed < b.ready AND b.placed < a.ready GROUP BY a.slug) o",
            &[&slugs],
        )
        .await
        .unwrap();
    let overlapping: i64 = row.get(0);
    assert!(overlapping >= 1, "the eight tenants were provisioned one after another by one worker");
}
