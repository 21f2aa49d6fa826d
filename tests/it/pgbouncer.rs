//! Behind a real PgBouncer (Debian's `pgbouncer`): `tenantd pgbouncer config` writes what it
//! runs on, transaction pooling carries pgbench, `--watch` routes new tenants at once and
//! drops suspended and deleted ones, and a tenant's credentials reach only its own database.
//!
//! PgBouncer missing is a loud failure with the install hint, never a skip.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{TestApp, app, connect, traversable_tempdir, wait_for};

const INSTALL_HINT: &str = "PgBouncer not found (looked on PATH and in /usr/sbin): install it, e.g. \
     `sudo apt-get install -y pgbouncer` (.ci/run does); these tests are never skipped";

fn pgbouncer_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("pgbouncer"));
    on_path
        .chain([PathBuf::from("/usr/sbin/pgbouncer"), PathBuf::from("/usr/bin/pgbouncer")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

/// As root (CI), PgBouncer refuses to run: it runs as the `postgres` OS user instead, and
/// tenantd hands it the files with `--owner postgres`.
fn run_as() -> Option<nix::unistd::User> {
    if !nix::unistd::Uid::effective().is_root() {
        return None;
    }
    Some(
        nix::unistd::User::from_name("postgres")
            .ok()
            .flatten()
            .expect("as root, the postgres OS user must exist"),
    )
}

/// A free port for PgBouncer, outside the kernel's ephemeral range (32768–60999 on Linux). Every
/// `bind(…:0)` and every outgoing connection of the tests running alongside draws from that
/// range, so a port found free there could be taken by another test before PgBouncer binds it
/// (it then listens only on its Unix socket, and the test talks to someone else's server).
fn bouncer_port() -> u16 {
    (0..1000)
        .map(|_| rand::random_range(20_000..30_000))
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port between 20000 and 30000")
}

/// A PgBouncer process on `DIR/pgbouncer.ini`, killed when dropped. Its log is
/// `DIR/pgbouncer.log` (shown when a test fails to connect) and its pid is in `DIR/pgbouncer.pid`.
struct PgBouncer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl PgBouncer {
    async fn start(dir: &Path, port: u16) -> PgBouncer {
        let log = std::fs::File::create(dir.join("pgbouncer.log")).expect("log file");
        let mut cmd = Command::new(pgbouncer_binary());
        cmd.arg(dir.join("pgbouncer.ini")).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        if let Some(user) = run_as() {
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start pgbouncer: {e}; {INSTALL_HINT}"));
        std::fs::write(dir.join("pgbouncer.pid"), child.id().to_string()).expect("pid file");
        let bouncer = PgBouncer { child, port, dir: dir.to_owned() };
        // Something else may answer on the port: PgBouncer logs whether it took it before it
        // says it is up.
        wait_for("PgBouncer to start", Duration::from_secs(10), || async {
            bouncer.log().contains("process up").then_some(())
        })
        .await;
        assert!(
            !bouncer.log().contains("cannot listen on"),
            "PgBouncer did not get its port:\n{}",
            bouncer.log()
        );
        wait_for("PgBouncer to listen", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
        bouncer
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pgbouncer.pid")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// A URL through this PgBouncer.
    fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("cannot kill pgbouncer: {e}");
        }
        let _exit = self.child.wait();
    }
}

/// A daemon whose lent details name a PgBouncer on `port` (not started yet).
async fn daemon_behind(port: u16, connections_per_tenant: u32) -> TestApp {
    app()
        .configure(move |s| {
            s.pgbouncer.host = Some("127.0.0.1".into());
            s.pgbouncer.port = port;
            s.limits.connections_per_tenant = connections_per_tenant;
        })
        .spawn()
        .await
}

/// `tenantd pgbouncer config` arguments for `dir` and `port` (plus `--owner` as root).
fn config_args(dir: &Path, port: u16, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["pgbouncer", "config", "--out"].map(String::from).to_vec();
    args.push(dir.display().to_string());
    args.push("--listen".into());
    args.push(format!("127.0.0.1:{port}"));
    if run_as().is_some() {
        args.extend(["--owner".into(), "postgres".into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Writes the configuration once with the CLI; returns its stdout.
async fn write_config(app: &TestApp, dir: &Path, port: u16) -> String {
    let args = config_args(dir, port, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = crate::common::cli(&args, &cli_env(app), None).await;
    assert_eq!(out.code, 0, "pgbouncer config failed: {}{}", out.stdout, out.stderr);
    out.stdout
}

fn cli_env(app: &TestApp) -> std::collections::BTreeMap<String, String> {
    let mut env = app.cli_env();
    env.insert(
        "TENANTD_LIMITS_CONNECTIONS_PER_TENANT".into(),
        app.settings.limits.connections_per_tenant.to_string(),
    );
    env.insert("TENANTD_WORKERS_POLL_INTERVAL".into(), "500ms".into());
    env
}

/// Creates a tenant and waits for READY; returns its lent connection details.
async fn ready_tenant(app: &TestApp, slug: &str) -> Value {
    let (status, body) = app.post("/v1/tenants?wait=50", &json!({ "slug": slug })).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "READY", "{body}");
    let (status, details) = app.get(&format!("/v1/tenants/{slug}/connection")).await;
    assert_eq!(status, 200, "{details}");
    details
}

fn field<'a>(details: &'a Value, name: &str) -> &'a str {
    details[name].as_str().unwrap_or_else(|| panic!("no {name} in {details}"))
}

/// Connects through PgBouncer with the tenant's details and runs a simple query; the error
/// text when it cannot.
async fn query_through(bouncer: &PgBouncer, user: &str, password: &str, db: &str) -> Result<String, String> {
    let client = connect(&bouncer.url(user, password, db)).await.map_err(|e| describe(&e))?;
    let rows = client.simple_query("SELECT current_database()").await.map_err(|e| describe(&e))?;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_owned()),
            _ => None,
        })
        .ok_or_else(|| "no row".to_owned())
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    }
}

#[tokio::test]
async fn pgbench_runs_ten_clients_through_a_transaction_pool() {
    let port = bouncer_port();
    // CONNECTION LIMIT 8 less tenantd's own pool of 5: PgBouncer may use 3 server connections.
    let app = daemon_behind(port, 8).await;
    let details = ready_tenant(&app, "bench-shop").await;
    assert_eq!(details["port"], port, "lent details name the PgBouncer route: {details}");
    assert_eq!(details["host"], "127.0.0.1");
    assert_eq!(details["pool_mode"], "transaction", "{details}");
    let (user, password, db) =
        (field(&details, "user"), field(&details, "password"), field(&details, "dbname"));
    // A tenant made before schema V13: its role's verifier has PostgreSQL's 4096 iterations
    // and its row no count. PgBouncer must get that very verifier for it.
    let legacy = ready_tenant(&app, "legacy-shop").await;
    let (legacy_user, legacy_password) = (field(&legacy, "user"), field(&legacy, "password"));
    let (_, legacy_row) = app.get("/v1/tenants/legacy-shop").await;
    let legacy_id: uuid::Uuid = legacy_row["id"].as_str().unwrap().parse().unwrap();
    let old_verifier = tenantd::crypto::tenant_scram_verifier(
        &secrecy::SecretString::from(legacy_password.to_owned()),
        legacy_id,
        tenantd::crypto::LEGACY_SCRAM_ITERATIONS,
    );
    let su = app.cluster.superuser("postgres").await;
    su.batch_execute(&format!("ALTER ROLE \"{legacy_user}\" PASSWORD '{old_verifier}'")).await.unwrap();
    app.catalog()
        .await
        .execute("UPDATE tenantd.tenants SET scram_iterations = NULL WHERE slug = 'legacy-shop'", &[])
        .await
        .unwrap();

    let dir = traversable_tempdir();
    let printed = write_config(&app, dir.path(), port).await;
    assert!(printed.starts_with("2 tenants:"), "{printed}");
    let ini = std::fs::read_to_string(dir.path().join("pgbouncer.ini")).unwrap();
    assert!(
        ini.contains(&format!("{db} = host=127.0.0.1 port={} dbname={db} pool_size=3", app.cluster.port)),
        "{ini}"
    );
    assert!(ini.contains("pool_mode = transaction") && ini.contains("auth_type = scram-sha-256"), "{ini}");
    let userlist = dir.path().join("userlist.txt");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&userlist).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "userlist.txt is private");
    let secrets = std::fs::read_to_string(&userlist).unwrap();
    // Each line holds exactly the verifier the server has: this build's 256 iterations for
    // the new tenant, 4096 for the one made before.
    for (role, iterations) in [(user, 256), (legacy_user, 4096)] {
        let stored: String = su
            .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = $1", &[&role])
            .await
            .unwrap()
            .get(0);
        assert!(stored.starts_with(&format!("SCRAM-SHA-256${iterations}:")), "{stored}");
        assert!(secrets.contains(&format!("\"{role}\" \"{stored}\"")), "{role}: {secrets}");
    }
    assert!(!secrets.contains(password) && !ini.contains(password), "no clear password in the files");

    let bouncer = PgBouncer::start(dir.path(), port).await;
    let script = dir.path().join("bench.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 100000000)\n\
         BEGIN;\n\
         INSERT INTO customers (email, name) VALUES ('c' || :id || '-' || :client_id || '@example.com', 'pgbench') ON CONFLICT DO NOTHING;\n\
         SELECT count(*) FROM customers;\n\
         END;\n",
    )
    .unwrap();
    let pgbench = tenantd::pgcluster::PgBinaries::locate().expect("PostgreSQL binaries").program("pgbench");
    assert!(pgbench.is_file(), "pgbench missing at {}: install postgresql-contrib", pgbench.display());
    let mut cmd = tokio::process::Command::new(&pgbench);
    cmd.args(["-n", "-M", "simple", "-c", "10", "-j", "2", "-t", "100", "-f"])
        .arg(&script)
        .env_clear()
        .envs([("PGHOST", "127.0.0.1"), ("PGUSER", user), ("PGPASSWORD", password), ("PGDATABASE", db)])
        .env("PGPORT", port.to_string())
        .kill_on_drop(true);
    let started = Instant::now();
    let run = tokio::spawn(cmd.output());
    // Meanwhile: the server never sees more of this role than the pool allows.
    let su = app.cluster.superuser("postgres").await;
    let mut most = 0i64;
    while !run.is_finished() {
        let n: i64 = su
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = $1", &[&user])
            .await
            .unwrap()
            .get(0);
        most = most.max(n);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = run.await.unwrap().expect("run pgbench");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pgbench failed: {stdout}{}\npgbouncer log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        bouncer.log()
    );
    assert!(stdout.contains("number of clients: 10"), "{stdout}");
    assert!(stdout.contains("number of transactions actually processed: 1000/1000"), "{stdout}");
    assert!(most <= 3, "10 clients used {most} server connections; the transaction pool allows 3");
    assert!(most >= 1, "pgbench ran on the server");
    let tps = stdout.lines().find(|l| l.starts_with("tps")).unwrap_or("").to_owned();
    eprintln!(
        "pgbench through PgBouncer: 10 clients, 1000 transactions in {elapsed:?}, at most {most} server connections; {tps}"
    );
    let customers = query_through(&bouncer, user, password, db).await;
    assert_eq!(customers.as_deref(), Ok(db), "the tenant still answers through PgBouncer");
    let legacy_db = field(&legacy, "dbname");
    let answered = query_through(&bouncer, legacy_user, legacy_password, legacy_db).await;
    assert_eq!(answered.as_deref(), Ok(legacy_db), "the tenant made before V13 logs in through PgBouncer");
}

#[tokio::test]
async fn watch_routes_a_new_tenant_within_two_seconds_and_drops_suspended_and_deleted_ones() {
    let port = bouncer_port();
    let app = daemon_behind(port, 20).await;
    let dir = traversable_tempdir();
    write_config(&app, dir.path(), port).await;
    let bouncer = PgBouncer::start(dir.path(), port).await;
    let pid = bouncer.pid_file().display().to_string();
    let args = config_args(dir.path(), port, &["--watch", "--pid", &pid]);
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantd"));
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENANTD_")) {
        watch.env_remove(name);
    }
    watch.args(&args).envs(cli_env(&app)).env("RUST_LOG", "warn").stdin(Stdio::null()).kill_on_drop(true);
    let _watch = watch.spawn().expect("start pgbouncer config --watch");

    // A new tenant: reachable through PgBouncer within 2 s of READY.
    let mut reached = Vec::new();
    for slug in ["watch-one", "watch-two"] {
        let details = ready_tenant(&app, slug).await;
        let ready = Instant::now();
        let (user, password, db) =
            (field(&details, "user"), field(&details, "password"), field(&details, "dbname"));
        loop {
            let last = match query_through(&bouncer, user, password, db).await {
                Ok(found) => {
                    assert_eq!(found, db);
                    break;
                }
                Err(e) => e,
            };
            assert!(
                ready.elapsed() < Duration::from_secs(2),
                "{slug} not reachable through PgBouncer 2 s after READY: {last}\npgbouncer log:\n{}",
                bouncer.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("{slug}: reachable through PgBouncer {:?} after READY", ready.elapsed());
        reached.push((slug, details));
    }

    // Suspended: no longer routed (and its role may not log in anyway).
    let (slug, details) = &reached[0];
    let (user, password, db) = (field(details, "user"), field(details, "password"), field(details, "dbname"));
    let (status, body) = app.post(&format!("/v1/tenants/{slug}/suspend"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    unrouted(&bouncer, user, password, db, "suspended").await;
    let users = std::fs::read_to_string(dir.path().join("userlist.txt")).unwrap();
    assert!(!users.contains(user), "a suspended tenant's secret leaves the auth file");

    // Deleted: likewise; the other tenant is still served.
    let (slug, details) = &reached[1];
    let (user, password, db) = (field(details, "user"), field(details, "password"), field(details, "dbname"));
    let (status, body) = app.request(reqwest::Method::DELETE, &format!("/v1/tenants/{slug}"), None).await;
    assert_eq!(status, 202, "{body}");
    app.wait_tenant(slug, "DELETED", Duration::from_secs(30), |t| t["status"] == "DELETED").await;
    unrouted(&bouncer, user, password, db, "deleted").await;

    let ini = std::fs::read_to_string(dir.path().join("pgbouncer.ini")).unwrap();
    assert!(!ini.contains(&format!("{db} =")), "{ini}");
}

/// Waits (2 s at most) until PgBouncer refuses `db` because its entry and its role are gone
/// from the reloaded configuration (its log says it dropped the database). For a database it does not know, PgBouncer plays through
/// the SCRAM exchange and fails it (`SASL authentication failed`, or `no such database` when
/// the user is still known) rather than tell; a server refusing the suspended role's login
/// would be `error connecting to server` instead.
async fn unrouted(bouncer: &PgBouncer, user: &str, password: &str, db: &str, what: &str) {
    let started = Instant::now();
    loop {
        let outcome = query_through(bouncer, user, password, db).await;
        let refused = |e: &String| e.contains("no such database") || e.contains("SASL authentication failed");
        let dropped = bouncer.log().contains(&format!("dropping database '{db}'"));
        if outcome.as_ref().is_err_and(refused) && dropped {
            eprintln!("{what} tenant refused by PgBouncer after {:?}", started.elapsed());
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the {what} tenant is still routed by PgBouncer after 2 s: {outcome:?}\npgbouncer log:\n{}",
            bouncer.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_tenants_credentials_reach_only_its_own_database_through_pgbouncer() {
    let port = bouncer_port();
    let app = daemon_behind(port, 20).await;
    let a = ready_tenant(&app, "own-a").await;
    let b = ready_tenant(&app, "own-b").await;
    let (user, password, db) = (field(&a, "user"), field(&a, "password"), field(&a, "dbname"));

    // A role made before tenantd derived its SCRAM salts (a random one, same password):
    // `pgbouncer config` stores it again as tenantd's verifier, once.
    let su = app.cluster.superuser("postgres").await;
    let old = postgres_protocol::password::scram_sha_256(password.as_bytes());
    su.batch_execute(&format!("ALTER ROLE {user} PASSWORD '{old}'")).await.unwrap();

    let dir = traversable_tempdir();
    write_config(&app, dir.path(), port).await;
    let bouncer = PgBouncer::start(dir.path(), port).await;
    let (_, events) = app.get("/v1/tenants/own-a/events").await;
    assert!(events.to_string().contains("password.aligned"), "{events}");

    assert_eq!(query_through(&bouncer, user, password, db).await.as_deref(), Ok(db), "{}", bouncer.log());
    let other = field(&b, "dbname");
    let refused = query_through(&bouncer, user, password, other).await.expect_err("A into B's database");
    assert!(refused.contains("permission denied"), "{refused}");
    for db in ["postgres", "template1", app.catalog_db.as_str()] {
        let refused =
            query_through(&bouncer, user, password, db).await.expect_err("A into a foreign database");
        assert!(refused.contains("no such database"), "{db}: {refused}");
    }
    let wrong = query_through(&bouncer, user, "not-the-password", db).await.expect_err("a wrong password");
    assert!(wrong.contains("SASL authentication failed"), "{wrong}");
    let b_password = field(&b, "password");
    let swapped = query_through(&bouncer, user, b_password, db).await.expect_err("B's password as A");
    assert!(swapped.contains("SASL authentication failed"), "{swapped}");
}
