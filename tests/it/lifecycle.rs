//! Lifecycle: dump, restore, suspend/resume, drop with a final archive, and daily backups —
//! each observed the way an operator would: files on disk, databases and roles on the
//! server, connections that work or are refused, and the catalog's status and events.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::{TestApp, app, shared_cluster, wait_for};
use serde_json::{Value, json};
use tenantd::driver::{Driver, RestoreRequest};
use tenantd::steps::{Fault, FaultHook, Phase, Step};

/// Sample data written through the tenant's own role (the embedded sample migrations).
const SEED: &str = "INSERT INTO customers (email, name) VALUES ('ada@example.com', 'Ada'), ('bob@example.com', 'Bob'); \
    INSERT INTO products (sku, name, price, stock, attributes) VALUES ('SKU-1', 'Lamp', 19.90, 3, '{\"colour\": \"red\"}'); \
    CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL); \
    CREATE VIEW big_spenders AS SELECT name FROM customers WHERE name <> ''; \
    INSERT INTO notes (body) VALUES ('quote '' and unicode ✓');";

/// Everything a tenant can observe of its data, as text.
const SNAPSHOT: &str = "SELECT string_agg(x, E'\\n' ORDER BY x) FROM ( \
    SELECT format('customer %s %s %s', id, email, name) AS x FROM customers \
    UNION ALL SELECT format('product %s %s %s %s %s', id, sku, price, stock, attributes) FROM products \
    UNION ALL SELECT format('note %s %s', id, body) FROM notes \
    UNION ALL SELECT format('view %s', name) FROM big_spenders) s";

async fn ready_tenant(app: &TestApp, slug: &str) -> Value {
    let (status, body) = app.post("/v1/tenants?wait=50", &json!({ "slug": slug })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    body
}

/// A connection with the tenant's own credentials.
async fn tenant_client(app: &TestApp, slug: &str) -> tokio_postgres::Client {
    let (status, details) = app.get(&format!("/v1/tenants/{slug}/connection")).await;
    assert_eq!(status, 200, "{details}");
    crate::common::connect(details["url"].as_str().unwrap()).await.expect("tenant connection")
}

async fn snapshot(client: &tokio_postgres::Client) -> String {
    client.query_one(SNAPSHOT, &[]).await.expect("snapshot").get(0)
}

async fn names(sql: &str, like: &str) -> Vec<String> {
    let su = shared_cluster().superuser("postgres").await;
    su.query(sql, &[&like]).await.unwrap().iter().map(|r| r.get(0)).collect()
}

async fn databases_like(prefix: &str) -> Vec<String> {
    names("SELECT datname FROM pg_database WHERE datname LIKE $1 ORDER BY 1", &format!("{prefix}%")).await
}

async fn roles_like(prefix: &str) -> Vec<String> {
    names("SELECT rolname FROM pg_roles WHERE rolname LIKE $1 ORDER BY 1", &format!("{prefix}%")).await
}

fn db_name(app: &TestApp, slug: &str) -> String {
    format!("{}{}", app.settings.names.prefix, slug.replace('-', "_"))
}

async fn event_kinds(app: &TestApp, slug: &str) -> Vec<String> {
    let (status, body) = app.get(&format!("/v1/tenants/{slug}/events?limit=1000")).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_owned()).collect()
}

/// Owners of the tenant's relations other than its own role (must be none).
async fn foreign_owned(app: &TestApp, slug: &str) -> Vec<String> {
    let db = db_name(app, slug);
    let su = shared_cluster().superuser(&db).await;
    su.query(
        "SELECT c.relname || ' owned by ' || pg_get_userbyid(c.relowner) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' \
         AND pg_get_userbyid(c.relowner) <> $1 ORDER BY 1",
        &[&db],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn mode(file: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(file).unwrap().permissions().mode() & 0o777
}

fn only_file(dir: &Path) -> PathBuf {
    let files = files_in(dir);
    assert_eq!(files.len(), 1, "one file expected in {}: {files:?}", dir.display());
    dir.join(&files[0])
}

#[tokio::test]
async fn dump_then_restore_gives_identical_data_owned_by_the_new_role() {
    let app = app().spawn().await;
    ready_tenant(&app, "origin").await;
    let origin = tenant_client(&app, "origin").await;
    origin.batch_execute(SEED).await.unwrap();
    let expected = snapshot(&origin).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("origin.dump");

    let out = app.cli(&["tenant", "dump", "origin", "-o", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("bytes in"), "prints size and duration: {}", out.stderr);
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"PGDMP"), "a custom-format archive");
    assert_eq!(files_in(dir.path()), ["origin.dump"], "no partial file left beside it");
    assert_eq!(mode(&file), 0o600, "a dump holds a customer's data: private");

    // Over HTTP (admin only), the same kind of file as the body.
    let url = format!("{}/v1/tenants/origin/dumps", app.base);
    let response = app.http.post(&url).bearer_auth(&app.admin_token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    assert!(response.bytes().await.unwrap().starts_with(b"PGDMP"));
    let response = app.http.post(&url).send().await.unwrap();
    assert_eq!(response.status(), 401, "dumps need the admin token");

    // Restore into a new slug: READY, same data, every object owned by the new role, the
    // version read from the restored history, and usable with its own credentials.
    let out = app.cli(&["tenant", "restore", "copy", "-i", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("tdt_"), "the new tenant's token is shown once: {}", out.stderr);
    let copy = app.wait_ready("copy").await;
    assert_eq!(copy["schema_version"], tenantd::tenant_migrations::latest_version());
    assert!(copy["restore_source"].as_str().unwrap().ends_with("origin.dump"));
    let restored = tenant_client(&app, "copy").await;
    assert_eq!(snapshot(&restored).await, expected);
    assert_eq!(foreign_owned(&app, "copy").await, Vec::<String>::new());
    restored
        .batch_execute("INSERT INTO customers (email, name) VALUES ('new@example.com', 'New')")
        .await
        .unwrap();
    assert!(event_kinds(&app, "copy").await.contains(&"step.restored".to_owned()));

    // The slug is taken now: refused, nothing changes; --replace drops it and restores anew.
    let out = app.cli(&["tenant", "restore", "copy", "-i", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("exists") && out.stderr.contains("--replace"), "{}", out.stderr);
    assert_eq!(app.get("/v1/tenants/copy").await.1["id"], copy["id"]);
    let out = app.cli(&["tenant", "restore", "copy", "-i", file.to_str().unwrap(), "--replace"]).await;
    assert_eq!(out.code, 2, "--replace drops a tenant: it needs a decision on its archive: {out:?}");
    let replaced_dir = dir.path().join("replaced");
    let replace = [
        "tenant",
        "restore",
        "copy",
        "-i",
        file.to_str().unwrap(),
        "--replace",
        "--archive",
        replaced_dir.to_str().unwrap(),
    ];
    let out = app.cli(&replace).await;
    assert_eq!(out.code, 2, "and a confirmation: {out:?}");
    assert_eq!(app.get("/v1/tenants/copy").await.1["id"], copy["id"], "nothing changed");
    let out = app.cli(&[&replace[..], &["--yes"]].concat()).await;
    assert_eq!(out.code, 0, "{out:?}");
    let replaced_archive = only_file(&replaced_dir);
    assert!(replaced_archive.file_name().unwrap().to_str().unwrap().starts_with("copy-"));
    let replaced = app.wait_ready("copy").await;
    assert_ne!(replaced["id"], copy["id"], "a new tenant in the old one's place");
    assert_eq!(snapshot(&tenant_client(&app, "copy").await).await, expected, "the extra row is gone");

    // A file that is not a dump: a clear error and no tenant at all.
    let junk = dir.path().join("junk.dump");
    std::fs::write(&junk, b"PGDMP but not really").unwrap();
    let out = app.cli(&["tenant", "restore", "never", "-i", junk.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not a readable pg_dump archive"), "{}", out.stderr);
    let missing = dir.path().join("missing.dump");
    let out = app.cli(&["tenant", "restore", "never", "-i", missing.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(app.get("/v1/tenants/never").await.0, 404, "nothing was created");
    assert_eq!(databases_like(&db_name(&app, "never")).await, Vec::<String>::new());

    // Unknown slug and a full disk: clear errors, no file left.
    let out = app.cli(&["tenant", "dump", "nobody", "-o", dir.path().join("x").to_str().unwrap()]).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no tenant \"nobody\""), "{}", out.stderr);
    // A dump that cannot be written completely (a file size limit, like a full disk): an
    // error, and neither the file nor a partial one is left.
    let limited = dir.path().join("limited");
    std::fs::create_dir(&limited).unwrap();
    let target = limited.join("origin.dump");
    let out = tokio::process::Command::new("sh")
        .args(["-c", "ulimit -f 1 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_tenantd"))
        .args(["tenant", "dump", "origin", "-o", target.to_str().unwrap()])
        .envs(app.cli_env())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pg_dump failed"), "{stderr}");
    assert_eq!(files_in(&limited), Vec::<String>::new(), "no partial file left");
}

#[tokio::test]
async fn a_drop_with_a_live_client_leaves_nothing_and_its_archive_restores() {
    let app = app().spawn().await;
    ready_tenant(&app, "leaving").await;
    let live = tenant_client(&app, "leaving").await;
    live.batch_execute(SEED).await.unwrap();
    let expected = snapshot(&live).await;
    live.batch_execute("BEGIN; SELECT count(*) FROM customers").await.unwrap();
    let db = db_name(&app, "leaving");

    // Without --yes (and no terminal to ask on): refused, nothing changes.
    let out = app.cli(&["tenant", "drop", "leaving"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--yes"), "{}", out.stderr);
    assert_eq!(app.get("/v1/tenants/leaving").await.1["status"], "READY");
    assert_eq!(snapshot(&live).await, expected, "the live session was not touched");

    // An archive into a place that cannot be written: aborted, the tenant is as it was.
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let bad_dir = blocker.path().join("sub");
    let out = app.cli(&["tenant", "drop", "leaving", "--yes", "--archive", bad_dir.to_str().unwrap()]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("final archive failed, nothing was dropped"), "{}", out.stderr);
    assert_eq!(app.get("/v1/tenants/leaving").await.1["status"], "READY");
    assert_eq!(snapshot(&tenant_client(&app, "leaving").await).await, expected);

    let archives = tempfile::tempdir().unwrap();
    let live = tenant_client(&app, "leaving").await;
    live.batch_execute("BEGIN; SELECT count(*) FROM customers").await.unwrap();
    let out = app
        .cli(&["tenant", "drop", "leaving", "--yes", "--archive", archives.path().to_str().unwrap()])
        .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("DELETED"), "{}", out.stdout);
    assert!(live.query_one("SELECT 1", &[]).await.is_err(), "the live session was ended");
    assert_eq!(databases_like(&db).await, Vec::<String>::new(), "no database left");
    assert_eq!(roles_like(&db).await, Vec::<String>::new(), "no role left");
    let gone = app.get("/v1/tenants/leaving").await.1;
    assert_eq!(gone["status"], "DELETED", "{gone}");
    assert!(gone["deleted_at"].is_string());
    let kinds = event_kinds(&app, "leaving").await;
    for kind in ["archive.failed", "archive.created", "delete.requested", "deleted"] {
        assert!(kinds.contains(&kind.to_owned()), "{kind} in {kinds:?}");
    }
    let (status, body) = app.post("/v1/tenants/leaving/sql", &json!({ "sql": "SELECT 1" })).await;
    assert_eq!(status, 410, "nothing is lent from a deleted tenant: {body}");

    // The archive restores (under a new slug), and the old slug is free again.
    let archive = only_file(archives.path());
    let out = app.cli(&["tenant", "restore", "returned", "-i", archive.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(snapshot(&tenant_client(&app, "returned").await).await, expected);
    let again = ready_tenant(&app, "leaving").await;
    assert_ne!(again["id"], gone["id"]);

    // Over HTTP: 202 at once, done in the background by a worker, with the configured archive
    // directory — and refused clearly when none is configured.
    let (status, body) = app.request(reqwest::Method::DELETE, "/v1/tenants/leaving?archive=true", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("no_archive_dir")), "{body}");
    assert_eq!(app.get("/v1/tenants/leaving").await.1["status"], "READY");
    let (status, body) = app.request(reqwest::Method::DELETE, "/v1/tenants/nobody", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = app.request(reqwest::Method::DELETE, "/v1/tenants/leaving", None).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("DELETING")), "{body}");
    app.wait_tenant("leaving", "DELETED", Duration::from_secs(60), |t| t["status"] == "DELETED").await;
    assert_eq!(databases_like(&db).await, Vec::<String>::new());
    let (status, _) = app.request(reqwest::Method::DELETE, "/v1/tenants/leaving", None).await;
    assert_eq!(status, 410, "deleting twice");
}

#[tokio::test]
async fn a_daemon_drop_with_archive_dir_writes_the_archive_first() {
    let archives = tempfile::tempdir().unwrap();
    let dir = archives.path().to_path_buf();
    let app = app().configure(move |s| s.lifecycle.archive_dir = Some(dir)).spawn().await;
    ready_tenant(&app, "offboard").await;
    tenant_client(&app, "offboard").await.batch_execute(SEED).await.unwrap();
    let (status, body) =
        app.request(reqwest::Method::DELETE, "/v1/tenants/offboard?archive=true", None).await;
    assert_eq!(status, 202, "{body}");
    app.wait_tenant("offboard", "DELETED", Duration::from_secs(60), |t| t["status"] == "DELETED").await;
    let archive = only_file(archives.path());
    assert!(archive.file_name().unwrap().to_str().unwrap().starts_with("offboard-"));
    let out = app.cli(&["tenant", "restore", "onboard", "-i", archive.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let restored = tenant_client(&app, "onboard").await;
    let n: i64 = restored.query_one("SELECT count(*) FROM customers", &[]).await.unwrap().get(0);
    assert_eq!(n, 2);
}

/// Tries to log in as the tenant with `psql`; returns its exit code and stderr.
async fn psql_login(details: &Value) -> (i32, String) {
    let psql = tenantd::pgcluster::PgBinaries::locate().expect("PostgreSQL binaries").program("psql");
    let out = tokio::process::Command::new(psql)
        .args(["-X", "-A", "-t", "-c", "SELECT count(*) FROM customers"])
        .arg(details["url"].as_str().unwrap())
        .output()
        .await
        .expect("run psql");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn suspend_blocks_new_connections_and_resume_restores_them() {
    let app = app().spawn().await;
    let created = ready_tenant(&app, "napping").await;
    let token = created["token"].as_str().unwrap().to_owned();
    let (_, details) = app.get("/v1/tenants/napping/connection").await;
    assert_eq!(psql_login(&details).await.0, 0, "psql logs in while READY");
    let live = tenant_client(&app, "napping").await;
    let sql = |token: String| {
        let app = &app;
        async move {
            app.request_as(
                reqwest::Method::POST,
                "/v1/tenants/napping/sql",
                Some(&json!({ "sql": "SELECT 1 AS one" })),
                Some(&token),
            )
            .await
        }
    };
    assert_eq!(sql(token.clone()).await.0, 200);

    let out = app.cli(&["tenant", "suspend", "napping"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("SUSPENDED"), "{}", out.stdout);
    assert!(live.query_one("SELECT 1", &[]).await.is_err(), "live sessions are ended");
    let (code, stderr) = psql_login(&details).await;
    assert_ne!(code, 0, "psql cannot log in while suspended");
    assert!(stderr.contains("not permitted to log in"), "{stderr}");
    let (status, body) = wait_for("lending to stop", Duration::from_secs(10), || async {
        let (status, body) = sql(token.clone()).await;
        (status != 200).then_some((status, body))
    })
    .await;
    assert_eq!((status, body["error"]["code"].as_str()), (423, Some("tenant_suspended")), "{body}");
    let (status, _) = app.get("/v1/tenants/napping/connection").await;
    assert_eq!(status, 423);
    // Suspending again is harmless; resuming a READY tenant is refused clearly.
    let (status, body) = app.post("/v1/tenants/napping/suspend", &json!({})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("SUSPENDED")), "{body}");

    let (status, body) = app.post("/v1/tenants/napping/resume", &json!({})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("READY")), "{body}");
    assert_eq!(psql_login(&details).await.0, 0, "psql logs in again");
    let (status, body) = wait_for("lending to resume", Duration::from_secs(10), || async {
        let (status, body) = sql(token.clone()).await;
        (status == 200).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let out = app.cli(&["tenant", "resume", "napping"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("READY"), "{}", out.stderr);
    let (status, _) = app.post("/v1/tenants/nobody/suspend", &json!({})).await;
    assert_eq!(status, 404);
    let kinds = event_kinds(&app, "napping").await;
    assert!(kinds.contains(&"suspended".to_owned()) && kinds.contains(&"resumed".to_owned()), "{kinds:?}");
}

/// Crashes the first time `step`/`phase` is reached for `slug`.
fn crash_once(slug: &'static str, step: Step, phase: Phase) -> FaultHook {
    let fired = Arc::new(AtomicBool::new(false));
    Arc::new(move |s: &str, st: Step, ph: Phase| {
        (s == slug && st == step && ph == phase && !fired.swap(true, Ordering::SeqCst))
            .then_some(Fault::Crash)
    })
}

#[tokio::test]
async fn a_crash_in_the_middle_of_restore_and_of_drop_is_recovered_by_a_restart() {
    // The first daemon "dies" every time it reaches the end of the drop step for `doomed`.
    let always: FaultHook = Arc::new(|s: &str, st: Step, ph: Phase| {
        (s == "doomed" && st == Step::Drop && ph == Phase::After).then_some(Fault::Crash)
    });
    let mut first =
        app().faults(always).configure(|s| s.workers.lease = Duration::from_secs(2)).spawn().await;
    ready_tenant(&first, "source").await;
    tenant_client(&first, "source").await.batch_execute(SEED).await.unwrap();
    let expected = snapshot(&tenant_client(&first, "source").await).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("source.dump");
    let out = first.cli(&["tenant", "dump", "source", "-o", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");

    // Restore: the process "dies" right after pg_restore committed, before READY.
    let core = tenantd::core::Core::open(first.settings.clone(), "cli:test-restore".into())
        .await
        .unwrap()
        .with_fault_injection(crash_once("phoenix", Step::Migrate, Phase::After));
    let req = RestoreRequest {
        slug: "phoenix".into(),
        input: file.clone(),
        server: None,
        replace: false,
        replace_archive: None,
        timeout: Duration::from_secs(60),
    };
    let crashed = Driver::new(&core).restore(&req).await.unwrap();
    assert_eq!(crashed.tenant.status.as_str(), "MIGRATING", "stopped midway");
    // No daemon touches a restore: it waits for the command that has the file.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(first.get("/v1/tenants/phoenix").await.1["status"], "MIGRATING");
    // Running the command again carries it on without restoring twice.
    let out = first.cli(&["tenant", "restore", "phoenix", "-i", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("carrying on the restore"), "{}", out.stderr);
    assert_eq!(snapshot(&tenant_client(&first, "phoenix").await).await, expected, "no row twice");
    assert_eq!(foreign_owned(&first, "phoenix").await, Vec::<String>::new());

    // Drop: the daemon "dies" after dropping the database and role, before DELETED.
    ready_tenant(&first, "doomed").await;
    let db = db_name(&first, "doomed");
    let (status, body) = first.request(reqwest::Method::DELETE, "/v1/tenants/doomed", None).await;
    assert_eq!(status, 202, "{body}");
    wait_for("the drop to crash midway", Duration::from_secs(30), || async {
        databases_like(&db).await.is_empty().then_some(())
    })
    .await;
    first.stop().await;
    let after_crash = {
        let c = crate::common::connect(&first.catalog_url).await.unwrap();
        c.query_one("SELECT status FROM tenantd.tenants WHERE slug = 'doomed'", &[])
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    assert_eq!(after_crash, "DELETING", "the crash left it midway");
    let second = app().same_catalog_as(&first).spawn().await;
    let done =
        second.wait_tenant("doomed", "DELETED", Duration::from_secs(60), |t| t["status"] == "DELETED").await;
    assert!(done["last_error"].is_null(), "{done}");
    assert_eq!(roles_like(&db).await, Vec::<String>::new());
}

#[tokio::test]
async fn daily_backups_run_once_across_daemons_and_keep_exactly_the_configured_files() {
    let first = app().spawn().await;
    let kept = ready_tenant(&first, "kept").await;
    let other = ready_tenant(&first, "other").await;
    let backups = tempfile::tempdir().unwrap();
    let dir_of = |t: &Value| {
        let id = t["id"].as_str().unwrap().replace('-', "");
        backups.path().join(format!("{}-{}", t["slug"].as_str().unwrap(), &id[..8]))
    };
    // Older backups of `kept`, one per day at 03:00 from 2020-01-01 to 2020-01-20 (a Monday)
    // plus an earlier one on the 20th, and a file that is not a backup.
    let kept_dir = dir_of(&kept);
    std::fs::create_dir_all(&kept_dir).unwrap();
    for day in 1..=20 {
        std::fs::write(kept_dir.join(format!("kept-202001{day:02}T030000Z.dump")), b"old").unwrap();
    }
    std::fs::write(kept_dir.join("kept-20200120T010000Z.dump"), b"old").unwrap();
    std::fs::write(kept_dir.join("notes.txt"), b"mine").unwrap();

    let configure = |dir: PathBuf| {
        move |s: &mut tenantd::config::Settings| {
            s.backups.dir = Some(dir);
            s.backups.daily_at = "00:00".into();
            s.backups.keep_daily = 3;
            s.backups.keep_weekly = 4;
        }
    };
    let second =
        app().same_catalog_as(&first).configure(configure(backups.path().to_path_buf())).spawn().await;
    let third =
        app().same_catalog_as(&first).configure(configure(backups.path().to_path_buf())).spawn().await;

    let catalog = first.catalog().await;
    wait_for("today's backup run to finish", Duration::from_secs(60), || async {
        let row = catalog
            .query_opt("SELECT succeeded, failed FROM tenantd.backup_runs WHERE finished_at IS NOT NULL", &[])
            .await
            .unwrap();
        row.map(|r| (r.get::<_, i32>(0), r.get::<_, i32>(1)))
    })
    .await;
    let runs: Vec<(i32, i32)> = catalog
        .query("SELECT succeeded, failed FROM tenantd.backup_runs", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(runs, [(2, 0)], "one run for the day, by one daemon, both tenants backed up");
    for slug in ["kept", "other"] {
        let kinds = event_kinds(&first, slug).await;
        assert_eq!(kinds.iter().filter(|k| *k == "backup.created").count(), 1, "{slug}: {kinds:?}");
    }
    assert_eq!(files_in(&dir_of(&other)).len(), 1);

    // Retention (3 daily, 4 weekly): today's, the 20th and 19th (days), the 12th (week 2);
    // the earlier backup of the 20th and all older days are gone; other files are untouched.
    let files = files_in(&kept_dir);
    let today = files.iter().find(|f| !f.starts_with("kept-2020") && *f != "notes.txt").cloned();
    let today = today.unwrap_or_else(|| panic!("today's backup in {files:?}"));
    let mut expected = vec![
        "kept-20200112T030000Z.dump".to_owned(),
        "kept-20200119T030000Z.dump".to_owned(),
        "kept-20200120T030000Z.dump".to_owned(),
        "notes.txt".to_owned(),
        today.clone(),
    ];
    expected.sort();
    assert_eq!(files, expected);
    assert_eq!(mode(&kept_dir.join(&today)), 0o600);
    assert_eq!(mode(&dir_of(&other)) & 0o077, 0, "tenant backup directories are private");
    let restorable = tenantd::dumps::check_archive(&kept_dir.join(&today)).await;
    assert!(restorable.is_ok(), "{restorable:?}");

    // The CLI lists them, newest first; a manual run adds one and prunes again.
    let mut env = first.cli_env();
    env.insert("TENANTD_BACKUPS_DIR".into(), backups.path().display().to_string());
    env.insert("TENANTD_BACKUPS_KEEP_DAILY".into(), "3".into());
    env.insert("TENANTD_BACKUPS_KEEP_WEEKLY".into(), "4".into());
    let out = crate::common::cli(&["backup", "list", "kept"], &env, None).await;
    assert_eq!(out.code, 0, "{out:?}");
    let listed: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert_eq!(listed.len(), 4, "{}", out.stdout);
    assert!(listed[0].contains(&today) && listed[3].contains("kept-20200112"), "{}", out.stdout);
    let out = crate::common::cli(&["backup", "list", "kept"], &first.cli_env(), None).await;
    assert_eq!(out.code, 2, "no backups.dir: {out:?}");
    // One recorder per process: both daemons of this test report the same counters.
    let (_, metrics) = second.get("/metrics").await;
    let text = metrics.as_str().unwrap_or_default();
    assert!(text.contains("tenantd_backups_total{result=\"ok\"} 2"), "{text}");
    drop(third);
}

#[tokio::test]
async fn one_daemon_holds_a_backup_day_until_it_finishes_or_its_lease_lapses() {
    let app = app().without_server().spawn().await;
    let catalog = &app.daemon.as_ref().unwrap().app().catalog;
    let day = chrono::NaiveDate::from_ymd_opt(2001, 2, 3).unwrap();
    // Long enough that a catalog commit stalled by a busy disk cannot outlast it between two
    // claims (a 1 s lease flaked on a loaded machine).
    let lease = Duration::from_secs(3);
    assert!(catalog.claim_backup_day(day, "a", lease).await.unwrap(), "the first daemon takes the day");
    assert!(!catalog.claim_backup_day(day, "b", lease).await.unwrap(), "held: nobody else");
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert!(catalog.claim_backup_day(day, "b", lease).await.unwrap(), "a lapsed lease is taken over");
    assert!(catalog.renew_backup_day(day, "a", lease).await.is_err(), "the old holder has lost it");
    assert!(catalog.finish_backup_day(day, "a", 1, 0).await.is_err(), "and cannot finish it");
    catalog.finish_backup_day(day, "b", 2, 0).await.unwrap();
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert!(!catalog.claim_backup_day(day, "c", lease).await.unwrap(), "a finished day is never run again");
}

#[tokio::test]
async fn a_deletion_never_drops_a_database_or_role_that_is_not_ours() {
    let app = app().spawn().await;
    let name = db_name(&app, "squatted");
    let su = shared_cluster().superuser("postgres").await;
    su.batch_execute(&format!("CREATE ROLE \"{name}\"")).await.unwrap();
    su.batch_execute(&format!("CREATE DATABASE \"{name}\" OWNER \"{name}\"")).await.unwrap();
    let (status, body) = app.post("/v1/tenants", &json!({ "slug": "squatted" })).await;
    assert_eq!(status, 201, "{body}");
    app.wait_tenant("squatted", "ERROR", Duration::from_secs(60), |t| t["status"] == "ERROR").await;
    let (status, body) = app.request(reqwest::Method::DELETE, "/v1/tenants/squatted", None).await;
    assert_eq!(status, 202, "{body}");
    app.wait_tenant("squatted", "DELETED", Duration::from_secs(60), |t| t["status"] == "DELETED").await;
    assert_eq!(databases_like(&name).await, vec![name.clone()], "the foreign database is untouched");
    assert_eq!(roles_like(&name).await, vec![name.clone()], "the foreign role is untouched");
    assert!(event_kinds(&app, "squatted").await.contains(&"delete.skipped_foreign".to_owned()));
    su.batch_execute(&format!("DROP DATABASE \"{name}\"")).await.unwrap();
    su.batch_execute(&format!("DROP ROLE \"{name}\"")).await.unwrap();
}

/// A tenant's backups in `dir` (as `backup list` sees them), newest first.
fn backups_of(dir: &Path, tenant: &Value) -> Vec<tenantd::backups::Backup> {
    let id = tenant["id"].as_str().unwrap().parse().unwrap();
    tenantd::backups::list(dir, tenant["slug"].as_str().unwrap(), id).unwrap()
}

/// The tenant's events of one kind.
async fn events_of(app: &TestApp, slug: &str, kind: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/v1/tenants/{slug}/events?limit=1000")).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().iter().filter(|e| e["kind"] == kind).cloned().collect()
}

#[tokio::test]
async fn backups_run_on_demand_from_the_cli_and_a_failed_one_is_recorded_and_warned_about() {
    let app = app().spawn().await;
    let one = ready_tenant(&app, "bk-one").await;
    let two = ready_tenant(&app, "bk-two").await;
    let napping = ready_tenant(&app, "bk-napping").await;
    tenant_client(&app, "bk-one").await.batch_execute(SEED).await.unwrap();
    let expected = snapshot(&tenant_client(&app, "bk-one").await).await;
    let backups = tempfile::tempdir().unwrap();
    let mut env = app.cli_env();
    env.insert("TENANTD_BACKUPS_DIR".into(), backups.path().display().to_string());

    // One named tenant: backed up now into its directory, private, recorded, and restorable.
    let out = crate::common::cli(&["backup", "run", "bk-one"], &env, None).await;
    assert_eq!(out.code, 0, "{out:?}");
    let taken = backups_of(backups.path(), &one);
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert!(out.stdout.starts_with("bk-one  ok  "), "{}", out.stdout);
    assert!(out.stdout.contains(&taken[0].path.display().to_string()), "{}", out.stdout);
    assert_eq!(mode(&taken[0].path), 0o600);
    assert_eq!(events_of(&app, "bk-one", "backup.created").await.len(), 1);
    assert!(backups_of(backups.path(), &two).is_empty(), "only the named tenant");
    let out = app.cli(&["tenant", "restore", "bk-copy", "-i", taken[0].path.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(snapshot(&tenant_client(&app, "bk-copy").await).await, expected);
    let out = crate::common::cli(&["backup", "run"], &env, None).await;
    assert_eq!(out.code, 2, "neither tenants nor --all: {out:?}");

    // --all: every READY and SUSPENDED tenant; retention keeps the newest backup of the day.
    let (status, body) = app.post("/v1/tenants/bk-napping/suspend", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let out = crate::common::cli(&["backup", "run", "--all"], &env, None).await;
    assert_eq!(out.code, 0, "{out:?}");
    for slug in ["bk-one", "bk-two", "bk-napping", "bk-copy"] {
        assert!(
            out.stdout.lines().any(|l| l.starts_with(&format!("{slug}  ok  "))),
            "{slug}: {}",
            out.stdout
        );
    }
    for tenant in [&one, &two, &napping] {
        let taken = backups_of(backups.path(), tenant);
        assert_eq!(taken.len(), 1, "{}: {taken:?}", tenant["slug"]);
        assert!(tenantd::dumps::check_archive(&taken[0].path).await.is_ok(), "{taken:?}");
    }
    assert_eq!(events_of(&app, "bk-one", "backup.created").await.len(), 2);
    assert_eq!(app.get("/v1/tenants/bk-napping").await.1["status"], "SUSPENDED", "backed up as it was");

    // A backup that cannot be written: named as failed, exit 1, a backup.failed event with the
    // reason, and `backup list` warns that the latest backup failed.
    let not_a_directory = backups.path().join("not-a-directory");
    std::fs::write(&not_a_directory, b"a file").unwrap();
    let mut broken = env.clone();
    broken.insert("TENANTD_BACKUPS_DIR".into(), not_a_directory.join("backups").display().to_string());
    let out = crate::common::cli(&["backup", "run", "bk-two"], &broken, None).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.starts_with("bk-two  FAILED  "), "{}", out.stdout);
    assert!(out.stderr.contains("1 of 1 backups failed"), "{}", out.stderr);
    let failed = events_of(&app, "bk-two", "backup.failed").await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]["detail"]["error"].as_str().unwrap_or_default().contains("cannot create"),
        "{failed:?}"
    );
    let out = crate::common::cli(&["backup", "list", "bk-two"], &env, None).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("warning: the latest backup of bk-two failed"), "{}", out.stderr);
    assert_eq!(out.stdout.lines().skip(1).count(), 1, "the earlier backup is still listed: {}", out.stdout);
    let out = crate::common::cli(&["backup", "list", "bk-one"], &env, None).await;
    assert!(!out.stderr.contains("warning"), "bk-one's latest backup succeeded: {}", out.stderr);
}

#[tokio::test]
async fn a_daemon_that_dies_mid_backup_run_is_taken_over_and_only_the_missing_tenants_are_backed_up() {
    let app = app().spawn().await;
    let tenants = [
        ready_tenant(&app, "bk-a").await,
        ready_tenant(&app, "bk-b").await,
        ready_tenant(&app, "bk-c").await,
    ];
    let backups = tempfile::tempdir().unwrap();
    let dir = backups.path().display().to_string();
    let cluster = shared_cluster();

    // A daemon process takes today's run and backs up one tenant at a time, in slug order.
    // bk-b's dump waits on a lock held here, so the daemon is killed (SIGKILL) with bk-a
    // backed up and bk-b's dump under way.
    let stuck = db_name(&app, "bk-b");
    let blocker = crate::common::hold_lock(cluster, &stuck, "customers").await;
    let settings = [
        ("TENANTD_BACKUPS_DIR", dir.as_str()),
        ("TENANTD_BACKUPS_DAILY_AT", "00:00"),
        ("TENANTD_BACKUPS_CONCURRENCY", "1"),
        ("TENANTD_WORKERS_LEASE", "6s"),
    ];
    let mut process = crate::common::ProcessDaemon::start(&app, &settings).await;
    wait_for("bk-a backed up and bk-b's dump under way", Duration::from_secs(60), || async {
        let a_done = events_of(&app, "bk-a", "backup.created").await.len() == 1;
        (a_done && crate::common::sessions_waiting_on_a_lock(cluster, &stuck).await == 1).then_some(())
    })
    .await;
    let catalog = app.catalog().await;
    let dead_owner: String = catalog
        .query_one("SELECT owner FROM tenantd.backup_runs WHERE finished_at IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    process.kill().await;
    // The whole machine is gone: its pg_dump too (ended through its server session).
    cluster
        .superuser("postgres")
        .await
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            &[&stuck],
        )
        .await
        .unwrap();
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let counts: Vec<usize> = tenants.iter().map(|t| backups_of(backups.path(), t).len()).collect();
    assert_eq!(counts, [1, 0, 0], "the dead daemon backed up bk-a only");

    // When its hold on the day lapses, another daemon takes the day over and backs up only
    // the tenants still without a backup today.
    wait_for("the dead daemon's hold on the day to lapse", Duration::from_secs(60), || async {
        let row = catalog
            .query_one("SELECT lease_until < now() FROM tenantd.backup_runs WHERE finished_at IS NULL", &[])
            .await
            .unwrap();
        row.get::<_, bool>(0).then_some(())
    })
    .await;
    // (Another process too: backups in this test process would add to the metrics that other
    // tests of this binary read.)
    let _second = crate::common::ProcessDaemon::start(&app, &settings).await;
    let (owner, succeeded, failed) = wait_for("the day's run to finish", Duration::from_secs(60), || async {
        let row = catalog
            .query_opt(
                "SELECT owner, succeeded, failed FROM tenantd.backup_runs WHERE finished_at IS NOT NULL",
                &[],
            )
            .await
            .unwrap();
        row.map(|r| (r.get::<_, String>(0), r.get::<_, i32>(1), r.get::<_, i32>(2)))
    })
    .await;
    assert_ne!(owner, dead_owner, "taken over by another daemon");
    assert_eq!((succeeded, failed), (2, 0), "bk-b and bk-c");
    let runs: i64 = catalog.query_one("SELECT count(*) FROM tenantd.backup_runs", &[]).await.unwrap().get(0);
    assert_eq!(runs, 1, "still one run for the day");
    let first = &events_of(&app, "bk-a", "backup.created").await;
    assert_eq!(first.len(), 1, "bk-a is not backed up twice: {first:?}");
    let dead_actor = first[0]["actor"].as_str().unwrap().to_owned();
    assert!(dead_owner.starts_with(&dead_actor), "{dead_owner} / {dead_actor}");
    for slug in ["bk-b", "bk-c"] {
        let created = events_of(&app, slug, "backup.created").await;
        assert_eq!(created.len(), 1, "{slug}: {created:?}");
        assert_ne!(created[0]["actor"], dead_actor.as_str(), "{slug}: by the daemon that took over");
    }
    for tenant in &tenants {
        let taken = backups_of(backups.path(), tenant);
        assert_eq!(taken.len(), 1, "{}: {taken:?}", tenant["slug"]);
        assert!(tenantd::dumps::check_archive(&taken[0].path).await.is_ok(), "{taken:?}");
    }
}

#[tokio::test]
async fn a_dump_to_stdout_is_a_whole_archive_that_restores() {
    let app = app().spawn().await;
    ready_tenant(&app, "piped").await;
    tenant_client(&app, "piped").await.batch_execute(SEED).await.unwrap();
    let expected = snapshot(&tenant_client(&app, "piped").await).await;

    let (code, bytes, stderr) =
        crate::common::cli_bytes(&["tenant", "dump", "piped", "-o", "-"], &app.cli_env()).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(bytes.starts_with(b"PGDMP"), "a custom-format archive on stdout");
    assert!(
        stderr.contains(&format!("dumped piped: {} bytes", bytes.len())),
        "the figures on stderr, the archive alone on stdout ({} bytes): {stderr}",
        bytes.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("piped.dump");
    std::fs::write(&file, &bytes).unwrap();
    let pg_restore =
        tenantd::pgcluster::PgBinaries::locate().expect("PostgreSQL binaries").program("pg_restore");
    let listed = tokio::process::Command::new(pg_restore).arg("--list").arg(&file).output().await.unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let toc = String::from_utf8_lossy(&listed.stdout);
    assert!(toc.contains("TABLE DATA public customers") && toc.contains("TABLE DATA public notes"), "{toc}");
    let out = app.cli(&["tenant", "restore", "piped-copy", "-i", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(snapshot(&tenant_client(&app, "piped-copy").await).await, expected);
}

#[tokio::test]
async fn a_restore_lands_on_the_server_it_names() {
    let app = app().spawn().await;
    let second = crate::common::TestCluster::start_owned();
    let (status, body) =
        app.post("/v1/servers", &json!({ "name": "pg2", "url": second.admin_url("postgres") })).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = app.post("/v1/tenants?wait=50", &json!({ "slug": "origin", "server": "pg1" })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    tenant_client(&app, "origin").await.batch_execute(SEED).await.unwrap();
    let expected = snapshot(&tenant_client(&app, "origin").await).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("origin.dump");
    let out = app.cli(&["tenant", "dump", "origin", "-o", file.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let on = |cluster: &'static str, db: String| {
        let second = &second;
        async move {
            let server = if cluster == "pg1" { shared_cluster() } else { second };
            let su = server.superuser("postgres").await;
            su.query_one("SELECT count(*) FROM pg_database WHERE datname = $1", &[&db])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };

    // pg2 holds no tenant, so a tenant would go there by default: `--server pg1` must win.
    for (slug, server) in [("copy-on-pg1", "pg1"), ("copy-on-pg2", "pg2")] {
        let out =
            app.cli(&["tenant", "restore", slug, "-i", file.to_str().unwrap(), "--server", server]).await;
        assert_eq!(out.code, 0, "{out:?}");
        let restored = app.wait_ready(slug).await;
        assert_eq!(restored["server"], server, "{restored}");
        let other = if server == "pg1" { "pg2" } else { "pg1" };
        let db = db_name(&app, slug);
        assert_eq!(
            (on(server, db.clone()).await, on(other, db).await),
            (1, 0),
            "{slug} lives on {server} only"
        );
        let (_, details) = app.get(&format!("/v1/tenants/{slug}/connection")).await;
        let port = if server == "pg1" { shared_cluster().port } else { second.port };
        assert_eq!(details["port"], port, "{details}");
        assert_eq!(snapshot(&tenant_client(&app, slug).await).await, expected, "{slug}");
    }
    let out = app
        .cli(&["tenant", "restore", "copy-nowhere", "-i", file.to_str().unwrap(), "--server", "pg9"])
        .await;
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("pg9"), "{}", out.stderr);
    assert_eq!(app.get("/v1/tenants/copy-nowhere").await.0, 404, "nothing created");
}
