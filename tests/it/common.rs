//! Test harness: real PostgreSQL clusters and in-process daemons.
//!
//! One throwaway cluster for the whole test run ([`shared_cluster`]): every area is a module
//! of this one test binary, so it links once and starts one cluster, started from the local binaries
//! (as the `postgres` OS user when the tests run as root) and removed when the test process
//! exits, however it exits. Every test gets its own catalog database and its own name prefix,
//! so tests run in parallel on one cluster without seeing each other. Tests that need a second
//! server start their own cluster with [`TestCluster::start`]; it stops when dropped.
//!
//! Missing PostgreSQL binaries fail loudly with the install hint: no test is ever skipped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use tenantd::config::Settings;
use tenantd::crypto;
use tenantd::pgcluster::{Cluster, ClusterOptions, PgBinaries, RunningCluster};
use tenantd::startup::Daemon;

/// Password of the `tenantd_admin` role on test clusters (LOGIN CREATEDB CREATEROLE only).
pub const ADMIN_ROLE: &str = tenantd::embedded::ADMIN_ROLE;

/// A running throwaway cluster.
pub struct TestCluster {
    pub port: u16,
    pub superuser_password: SecretString,
    pub admin_password: SecretString,
    cluster: Cluster,
    running: std::sync::Mutex<Option<RunningCluster>>,
    remove_on_drop: bool,
}

fn unique() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!("{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A short random lowercase suffix.
pub fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

impl TestCluster {
    /// initdb + start a fresh cluster in a temporary directory, removed when this process
    /// exits; panics with the install hint when the binaries are missing.
    pub fn start() -> TestCluster {
        Self::launch(true)
    }

    /// Like [`TestCluster::start`], but the cluster can be stopped and restarted, and is
    /// removed when dropped (for tests that take a server down).
    pub fn start_owned() -> TestCluster {
        Self::launch(false)
    }

    fn launch(remove_when_stopped: bool) -> TestCluster {
        let bin = PgBinaries::locate().unwrap_or_else(|e| panic!("{e}"));
        let root = std::env::temp_dir().join(format!("tenantd-test-{}", unique()));
        let options = ClusterOptions {
            throwaway: true,
            max_connections: 300,
            socket_in_data_dir: false,
            ..Default::default()
        };
        let cluster = Cluster::new(bin, &root, options).expect("cluster directory");
        let superuser_password = crypto::random_secret(18);
        let admin_password = crypto::random_secret(18);
        cluster.init(&superuser_password).unwrap_or_else(|e| panic!("initdb failed: {e}"));
        let mut last_error = None;
        for _ in 0..5 {
            let port = tenantd::pgcluster::free_port().expect("free port");
            match cluster.start(port, remove_when_stopped) {
                Ok(running) => {
                    let (su, admin) = (superuser_password.clone(), admin_password.clone());
                    // Bootstrap on a runtime of its own: we may be inside a test's runtime.
                    std::thread::spawn(move || {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap()
                            .block_on(tenantd::embedded::prepare_cluster(port, &su, &admin))
                    })
                    .join()
                    .expect("bootstrap thread")
                    .unwrap_or_else(|e| panic!("cluster bootstrap failed: {e}"));
                    return TestCluster {
                        port,
                        superuser_password,
                        admin_password,
                        cluster,
                        running: std::sync::Mutex::new(Some(running)),
                        remove_on_drop: !remove_when_stopped,
                    };
                }
                Err(e) => last_error = Some(e),
            }
        }
        panic!("PostgreSQL did not start: {}", last_error.map(|e| e.to_string()).unwrap_or_default());
    }

    /// Stops PostgreSQL (fast shutdown) and waits for it: the server is "down". The daemon
    /// under test keeps running meanwhile (see [`off_the_runtime`]).
    pub fn stop(&self) {
        off_the_runtime(|| self.stop_here());
    }

    fn stop_here(&self) {
        if let Some(running) = self.running.lock().unwrap().take() {
            running.stop().expect("cluster stop");
        }
    }

    /// Starts PostgreSQL again on the same port, the daemon running meanwhile.
    pub fn restart(&self) {
        off_the_runtime(|| {
            let mut running = self.running.lock().unwrap();
            assert!(running.is_none(), "cluster is running");
            *running = Some(self.cluster.start(self.port, false).expect("cluster restart"));
        });
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.cluster.data_dir()
    }

    /// URL as `tenantd_admin` to `db`.
    pub fn admin_url(&self, db: &str) -> String {
        format!(
            "postgres://{ADMIN_ROLE}:{}@127.0.0.1:{}/{db}",
            self.admin_password.expose_secret(),
            self.port
        )
    }

    /// URL as any role.
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// A connection as the superuser `postgres` (for inspecting what tenantd did).
    pub async fn superuser(&self, db: &str) -> tokio_postgres::Client {
        let url = format!(
            "postgres://postgres:{}@127.0.0.1:{}/{db}",
            self.superuser_password.expose_secret(),
            self.port
        );
        connect(&url).await.expect("superuser connection")
    }

    /// Creates an empty database owned by `tenantd_admin`, closed to PUBLIC as a catalog
    /// database should be (tenant roles must not reach it), and returns its name.
    pub async fn create_database(&self, prefix: &str) -> String {
        let name = format!("{prefix}_{}", random_suffix());
        let su = self.superuser("postgres").await;
        su.batch_execute(&format!("CREATE DATABASE {name} OWNER {ADMIN_ROLE}"))
            .await
            .expect("create database");
        su.batch_execute(&format!("REVOKE CONNECT ON DATABASE {name} FROM PUBLIC"))
            .await
            .expect("close database");
        name
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if self.remove_on_drop {
            self.stop_here();
            if let Some(root) = self.cluster.data_dir().parent() {
                let _removed = std::fs::remove_dir_all(root);
            }
        }
    }
}

/// Runs `blocking` (stopping or starting PostgreSQL, seconds on a loaded machine) without
/// stopping the runtime, so the daemon under test goes on serving meanwhile, as a real one
/// would. On a current-thread runtime everything, the HTTP server included, would stand
/// still; an HTTP connection kept alive then idles past `http.header_read_timeout` and the
/// server closes it just as the test sends its next request on it (CI saw that as
/// `IncompleteMessage`). Tests that stop a cluster therefore run on a multi-thread runtime.
fn off_the_runtime<T>(blocking: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(blocking),
        Ok(_) => panic!(
            "stopping or starting a cluster blocks: run the test with \
             #[tokio::test(flavor = \"multi_thread\", worker_threads = 2)]"
        ),
        Err(_) => blocking(),
    }
}

/// Connects with a URL; the driver runs on its own task.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The cluster shared by every test of this binary.
pub fn shared_cluster() -> &'static TestCluster {
    static SHARED: OnceLock<TestCluster> = OnceLock::new();
    SHARED.get_or_init(TestCluster::start)
}

/// A daemon running in-process on a random port, with its own catalog database.
pub struct TestApp {
    pub daemon: Option<Daemon>,
    pub base: String,
    pub http: reqwest::Client,
    pub admin_token: String,
    pub master_key: SecretString,
    pub catalog_url: String,
    pub catalog_db: String,
    pub settings: Settings,
    pub cluster: &'static TestCluster,
}

/// A change to the settings of a test daemon.
type Configure = Box<dyn FnOnce(&mut Settings)>;

/// How to build a [`TestApp`].
pub struct AppBuilder {
    register_server: Option<String>,
    configure: Vec<Configure>,
    faults: Option<tenantd::steps::FaultHook>,
    migrations: Option<tenantd::tenant_migrations::MigrationSet>,
    catalog: Option<(String, String)>,
    catalog_url: Option<String>,
}

impl AppBuilder {
    /// Do not register the shared cluster as a server.
    pub fn without_server(mut self) -> Self {
        self.register_server = None;
        self
    }

    /// Adjust the settings before start.
    pub fn configure(mut self, f: impl FnOnce(&mut Settings) + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// One pooled connection (and one handle) per tenant: each borrower gets the same session.
    pub fn one_connection_per_tenant(self) -> Self {
        self.configure(|s| {
            s.pools.per_tenant = 1;
            s.pools.max_handles_per_tenant = 1;
        })
    }

    /// Inject faults into provisioning steps.
    pub fn faults(mut self, hook: tenantd::steps::FaultHook) -> Self {
        self.faults = Some(hook);
        self
    }

    /// Apply these tenant migrations instead of the embedded ones (a "newer build").
    pub fn migrations(mut self, set: tenantd::tenant_migrations::MigrationSet) -> Self {
        self.migrations = Some(set);
        self
    }

    /// Share the catalog (and keys, token, prefix) of another test app: a second daemon.
    pub fn same_catalog_as(mut self, other: &TestApp) -> Self {
        self.catalog = Some((other.catalog_db.clone(), other.settings.names.prefix.clone()));
        self.catalog_url = Some(other.catalog_url.clone());
        let (key, token) = (other.master_key.clone(), other.admin_token.clone());
        self.register_server = None;
        self.configure.insert(
            0,
            Box::new(move |s: &mut Settings| {
                s.master_key = Some(key);
                s.admin_token = Some(SecretString::from(token));
            }),
        );
        self
    }

    /// Keep the catalog in database `db` of `cluster` (one the test can stop) instead of a
    /// new database on the shared cluster.
    pub fn catalog_on(mut self, cluster: &TestCluster, db: &str) -> Self {
        self.catalog = Some((db.to_owned(), format!("t{}_", random_suffix())));
        self.catalog_url = Some(cluster.admin_url(db));
        self
    }

    /// Starts the daemon.
    pub async fn spawn(self) -> TestApp {
        let cluster = shared_cluster();
        let (catalog_db, prefix) = match self.catalog {
            Some(shared) => shared,
            None => (cluster.create_database("catalog").await, format!("t{}_", random_suffix())),
        };
        let catalog_url = self.catalog_url.unwrap_or_else(|| cluster.admin_url(&catalog_db));
        let master_key = crypto::generate_master_key();
        let admin_token = crypto::random_secret(32);
        let mut settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            catalog_url: Some(SecretString::from(catalog_url.clone())),
            master_key: Some(master_key.clone()),
            admin_token: Some(admin_token.clone()),
            ..Settings::default()
        };
        settings.names.prefix = prefix;
        // Fast but realistic schedules for tests.
        settings.workers.poll_interval = Duration::from_millis(500);
        settings.workers.backoff = vec![Duration::from_millis(50), Duration::from_millis(100)];
        settings.workers.health_interval = Duration::from_millis(500);
        for f in self.configure {
            f(&mut settings);
        }
        let master_key = settings.master_key.clone().unwrap();
        let admin_token = settings.admin_token.clone().unwrap();
        let extras = tenantd::startup::Extras { fault_injection: self.faults, migrations: self.migrations };
        let daemon = Daemon::start_with(settings.clone(), extras)
            .await
            .unwrap_or_else(|e| panic!("daemon start: {e}"));
        let base = format!("http://{}", daemon.local_addr());
        let app = TestApp {
            daemon: Some(daemon),
            base,
            http: reqwest::Client::new(),
            admin_token: admin_token.expose_secret().to_owned(),
            master_key,
            catalog_url,
            catalog_db,
            settings,
            cluster,
        };
        if let Some(name) = self.register_server {
            let (status, body) = app
                .post(
                    "/v1/servers",
                    &serde_json::json!({ "name": name, "url": cluster.admin_url("postgres") }),
                )
                .await;
            assert_eq!(status, 201, "registering the test server: {body}");
        }
        app
    }
}

/// A daemon on the shared cluster, registered as server `pg1`.
pub async fn spawn_app() -> TestApp {
    app().spawn().await
}

/// A builder for a daemon with non-default settings.
pub fn app() -> AppBuilder {
    AppBuilder {
        register_server: Some("pg1".into()),
        configure: Vec::new(),
        faults: None,
        migrations: None,
        catalog: None,
        catalog_url: None,
    }
}

impl TestApp {
    /// Sends a request with the admin token; returns status and JSON body (Null if none).
    pub async fn request(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.request_as(method, path, body, Some(&self.admin_token)).await
    }

    /// Sends a request with a given token (or none).
    pub async fn request_as(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let response = req.send().await.expect("HTTP request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("HTTP body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> (u16, Value) {
        self.request(reqwest::Method::PATCH, path, Some(body)).await
    }

    /// A connection to this test's catalog database as `tenantd_admin`.
    pub async fn catalog(&self) -> tokio_postgres::Client {
        connect(&self.catalog_url).await.expect("catalog connection")
    }

    /// The admin role of this test's (first) server, as the catalog has it.
    pub async fn admin_user(&self) -> String {
        let catalog = self.catalog().await;
        catalog.query_one("SELECT admin_user FROM tenantd.servers LIMIT 1", &[]).await.unwrap().get(0)
    }

    /// Environment for running the `tenantd` binary against this test's catalog.
    pub fn cli_env(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("TENANTD_CATALOG_URL".to_owned(), self.catalog_url.clone()),
            ("TENANTD_MASTER_KEY".to_owned(), self.master_key.expose_secret().to_owned()),
            ("TENANTD_NAMES_PREFIX".to_owned(), self.settings.names.prefix.clone()),
        ])
    }

    /// Runs the `tenantd` binary with this test's catalog.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        cli(args, &self.cli_env(), None).await
    }

    /// Polls a tenant over HTTP until `done` holds for it; returns it. On timeout, panics
    /// showing the tenant's last state and events.
    pub async fn wait_tenant(
        &self,
        slug: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get(&format!("/v1/tenants/{slug}")).await;
            if status == 200 && done(&body) {
                return body;
            }
            if Instant::now() > deadline {
                let (_, events) = self.get(&format!("/v1/tenants/{slug}/events")).await;
                panic!("timed out after {timeout:?} waiting for {slug} {what}: {body}\nevents: {events}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the tenant is READY (panics with its last state otherwise).
    pub async fn wait_ready(&self, slug: &str) -> Value {
        self.wait_tenant(slug, "READY", Duration::from_secs(60), |t| t["status"] == "READY").await
    }

    /// Stops the daemon gracefully.
    pub async fn stop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.stop().await;
        }
    }
}

/// What a CLI run printed and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the `tenantd` binary with exactly the given `TENANTD_*` environment (others removed).
pub async fn cli(args: &[&str], env: &BTreeMap<String, String>, cwd: Option<&std::path::Path>) -> CliOutput {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantd"));
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENANTD_")) {
        cmd.env_remove(name);
    }
    cmd.args(args).envs(env).env("RUST_LOG", "warn").stdin(std::process::Stdio::null());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    let out = cmd.output().await.expect("run tenantd");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh directory that the `postgres` OS user can traverse (0755).
pub fn traversable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("tenantd-it-").tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Path helper for test data.
pub fn path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

/// A daemon running as a separate `tenantd serve` process on a test's catalog, so that a test
/// can kill it for real (SIGKILL: no shutdown code runs, leases are left to expire).
pub struct ProcessDaemon {
    child: Option<tokio::process::Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl ProcessDaemon {
    /// Starts `tenantd serve` on `app`'s catalog (same keys, token and prefix) with extra
    /// `TENANTD_*` settings, and waits until it answers `/healthz`.
    pub async fn start(app: &TestApp, extra: &[(&str, &str)]) -> ProcessDaemon {
        Self::launch(app, extra, Some("warn"), std::process::Stdio::inherit()).await
    }

    /// [`ProcessDaemon::start`] logging what a daemon logs by default into `log` (plain text
    /// lines), for tests of what the operator reads.
    pub async fn start_logging(
        app: &TestApp,
        extra: &[(&str, &str)],
        log: &std::path::Path,
    ) -> ProcessDaemon {
        let file = std::fs::File::create(log).expect("daemon log file");
        Self::launch(app, extra, None, file.into()).await
    }

    async fn launch(
        app: &TestApp,
        extra: &[(&str, &str)],
        log_filter: Option<&str>,
        stderr: std::process::Stdio,
    ) -> ProcessDaemon {
        let port = tenantd::pgcluster::free_port().expect("free port");
        let mut env = app.cli_env();
        env.insert("TENANTD_ADMIN_TOKEN".into(), app.admin_token.clone());
        env.insert("TENANTD_LISTEN".into(), format!("127.0.0.1:{port}"));
        env.insert("TENANTD_WORKERS_POLL_INTERVAL".into(), "500ms".into());
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantd"));
        for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENANTD_")) {
            cmd.env_remove(name);
        }
        cmd.env_remove("RUST_LOG");
        if let Some(filter) = log_filter {
            cmd.env("RUST_LOG", filter);
        }
        cmd.arg("serve")
            .envs(&env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        let child = cmd.spawn().expect("start tenantd serve");
        let daemon = ProcessDaemon { child: Some(child), base: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::new();
        let url = format!("{}/healthz", daemon.base);
        wait_for("the daemon process to answer /healthz", Duration::from_secs(30), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(&url).send().await.ok().filter(|r| r.status().is_success()).map(|_| ()) }
        })
        .await;
        daemon
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(tokio::process::Child::id).expect("the daemon process runs")
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL the daemon");
            child.wait().await.expect("daemon exit");
        }
    }
}

impl Drop for ProcessDaemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Err(e) = child.start_kill()
        {
            eprintln!("cannot kill the daemon process: {e}");
        }
    }
}

impl ProcessDaemon {
    /// `POST`s JSON to this daemon with a bearer token; returns status and JSON body.
    pub async fn post(&self, token: &str, path: &str, body: &Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("HTTP request to the daemon process");
        let status = response.status().as_u16();
        let text = response.text().await.expect("HTTP body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

/// Runs the `tenantd` binary like [`cli`], keeping its stdout as bytes (for binary output
/// such as `tenant dump -o -`); returns exit code, stdout and stderr.
pub async fn cli_bytes(args: &[&str], env: &BTreeMap<String, String>) -> (i32, Vec<u8>, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tenantd"));
    for (name, _) in std::env::vars().filter(|(k, _)| k.starts_with("TENANTD_")) {
        cmd.env_remove(name);
    }
    cmd.args(args).envs(env).env("RUST_LOG", "warn").stdin(std::process::Stdio::null());
    let out = cmd.output().await.expect("run tenantd");
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Sessions in database `db` of `cluster` that wait for a lock (a migration or a dump held
/// up by a lock a test holds).
pub async fn sessions_waiting_on_a_lock(cluster: &TestCluster, db: &str) -> i64 {
    cluster
        .superuser("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
            &[&db],
        )
        .await
        .expect("pg_stat_activity")
        .get(0)
}

/// Holds `ACCESS EXCLUSIVE` on `table` in database `db` until the returned client sends
/// `ROLLBACK`: whatever touches that table (DDL referencing it, `pg_dump`) waits meanwhile.
pub async fn hold_lock(cluster: &TestCluster, db: &str, table: &str) -> tokio_postgres::Client {
    let client = cluster.superuser(db).await;
    client
        .batch_execute(&format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .await
        .expect("lock the table");
    client
}
