//! The embedded default: `tenantd serve` with no catalog URL runs its own PostgreSQL.
//!
//! Layout of the data directory (default `./tenantd-data`, mode 0711 so that the `postgres`
//! OS user can reach `pg/` when tenantd runs as root, while the files stay private):
//!
//! ```text
//! master-key          base64 master key (0600), unless TENANTD_MASTER_KEY is set
//! admin-token         admin bearer token (0600), unless TENANTD_ADMIN_TOKEN is set
//! pg-admin-password   password of role tenantd_admin (0600)
//! pg-superuser-password  password of the bootstrap superuser postgres (0600)
//! port                TCP port of the cluster on 127.0.0.1
//! pg/                 the cluster (data/, postgres.log)
//! ```
//!
//! tenantd connects as `tenantd_admin`, a role with only LOGIN CREATEDB CREATEROLE (the same
//! privileges a production server needs), to database `tenantd` for its catalog, and
//! registers the cluster as server `local`. A second start reuses everything.
//! CLI commands attach to a running embedded cluster through the same files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use crate::catalog::Catalog;
use crate::catalog::servers::NewServer;
use crate::config::Settings;
use crate::crypto::server_aad;
use crate::crypto::{self, Keyring};
use crate::pgcluster::{self, Cluster, ClusterError, ClusterOptions, PgBinaries, RunningCluster};
use crate::pgtls::{PgTls, SslMode};

/// Role tenantd uses on the embedded cluster.
pub const ADMIN_ROLE: &str = "tenantd_admin";
/// Catalog database on the embedded cluster.
pub const CATALOG_DB: &str = "tenantd";
/// Name of the embedded cluster in the server list.
pub const SERVER_NAME: &str = "local";

/// An embedded-mode problem.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// Starting or preparing the cluster failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Bootstrapping roles and databases failed.
    #[error("cannot prepare the embedded cluster: {0}")]
    Bootstrap(String),
    /// A CLI command found no running embedded cluster.
    #[error(
        "no running embedded tenantd in {0}: start `tenantd serve` first, or set \
             TENANTD_CATALOG_URL and TENANTD_MASTER_KEY to use a catalog directly"
    )]
    NotRunning(PathBuf),
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> EmbeddedError + '_ {
    move |e| {
        EmbeddedError::Cluster(ClusterError::Io { what: format!("cannot use {}", path.display()), source: e })
    }
}

/// A running embedded cluster.
#[derive(Debug)]
pub struct Embedded {
    running: Option<RunningCluster>,
    admin_password: SecretString,
    port: u16,
}

/// Reads a secret file, or creates it with `make()` (mode 0600).
fn secret_file(path: &Path, make: impl FnOnce() -> SecretString) -> Result<SecretString, EmbeddedError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(SecretString::from(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            pgcluster::write_private(path, value.expose_secret())?;
            Ok(value)
        }
        Err(e) => Err(file_error(path)(e)),
    }
}

fn cluster(settings: &Settings) -> Result<Cluster, EmbeddedError> {
    Ok(Cluster::new(PgBinaries::locate()?, settings.data_dir.join("pg"), ClusterOptions::default())?)
}

/// Fills in the secrets of embedded mode: from the environment when given, else from (or
/// into) the data directory.
fn fill_secrets(settings: &mut Settings) -> Result<(), EmbeddedError> {
    let dir = settings.data_dir.clone();
    if settings.master_key.is_none() {
        settings.master_key = Some(secret_file(&dir.join("master-key"), crypto::generate_master_key)?);
    }
    if settings.admin_token.is_none() {
        settings.admin_token = Some(secret_file(&dir.join("admin-token"), || crypto::random_secret(32))?);
    }
    Ok(())
}

fn catalog_url(port: u16, password: &SecretString) -> SecretString {
    // Generated passwords are URL-safe base64: no escaping needed.
    SecretString::from(format!(
        "postgres://{ADMIN_ROLE}:{}@127.0.0.1:{port}/{CATALOG_DB}?sslmode=disable",
        password.expose_secret()
    ))
}

/// Starts (creating on first use) the embedded cluster and points `settings` at it.
pub async fn start(settings: &mut Settings) -> Result<Embedded, EmbeddedError> {
    let dir = settings.data_dir.clone();
    std::fs::create_dir_all(&dir).map_err(file_error(&dir))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).map_err(file_error(&dir))?;
    fill_secrets(settings)?;
    let superuser_password = secret_file(&dir.join("pg-superuser-password"), || crypto::random_secret(24))?;
    let admin_password = secret_file(&dir.join("pg-admin-password"), || crypto::random_secret(24))?;
    let cluster = cluster(settings)?;
    let port_file = dir.join("port");
    let port = match std::fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse::<u16>().ok()) {
        Some(p) if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() => p,
        _ => pgcluster::free_port()?,
    };
    std::fs::write(&port_file, port.to_string()).map_err(file_error(&port_file))?;
    let first_start = !cluster.is_initialized();
    let su_password = superuser_password.clone();
    let running = tokio::task::spawn_blocking(move || {
        if first_start {
            cluster.init(&su_password)?;
        }
        cluster.start(port, false)
    })
    .await
    .map_err(|e| EmbeddedError::Bootstrap(format!("cluster start task failed: {e}")))??;
    tracing::info!(port, first_start, data_dir = %dir.display(), "embedded PostgreSQL running");
    prepare_cluster(port, &superuser_password, &admin_password).await?;
    settings.catalog_url = Some(catalog_url(port, &admin_password));
    Ok(Embedded { running: Some(running), admin_password, port })
}

/// Creates the admin role `tenantd_admin` (LOGIN CREATEDB CREATEROLE, no superuser) and the
/// catalog database when missing, and revokes PUBLIC's CONNECT on `postgres` and the catalog.
/// Idempotent. Also used by the test harness, so tests run on the same setup as users.
pub async fn prepare_cluster(
    port: u16,
    su_password: &SecretString,
    admin_password: &SecretString,
) -> Result<(), EmbeddedError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(su_password.expose_secret())
        .dbname("postgres");
    let fail = |e: tokio_postgres::Error| EmbeddedError::Bootstrap(crate::pg::describe(&e));
    let loopback = PgTls { sslmode: SslMode::Disable, ..PgTls::default() };
    let client = crate::pg::connect(&config, &loopback, "embedded bootstrap")
        .await
        .map_err(|e| EmbeddedError::Bootstrap(e.to_string()))?;
    let verifier = postgres_protocol::password::scram_sha_256(admin_password.expose_secret().as_bytes());
    let role_exists = client
        .query_opt("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1", &[&ADMIN_ROLE])
        .await
        .map_err(fail)?
        .is_some();
    client
        .batch_execute(&crate::tenant_sql::admin_role(ADMIN_ROLE, role_exists, &verifier))
        .await
        .map_err(fail)?;
    let db_exists = client
        .query_opt("SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1", &[&CATALOG_DB])
        .await
        .map_err(fail)?
        .is_some();
    if !db_exists {
        client
            .batch_execute(&crate::tenant_sql::create_database_owned_by(CATALOG_DB, ADMIN_ROLE))
            .await
            .map_err(fail)?;
    }
    // Tenant roles must not reach the maintenance, catalog or template databases (the
    // superuser may revoke what a tenantd admin role never could).
    client
        .batch_execute(&format!(
            "{}; {}; {}",
            crate::tenant_sql::close_database("postgres", ADMIN_ROLE),
            crate::tenant_sql::close_database(CATALOG_DB, ADMIN_ROLE),
            crate::tenant_sql::revoke_public_connect("template1")
        ))
        .await
        .map_err(fail)?;
    Ok(())
}

impl Embedded {
    /// Registers (or refreshes the address of) server `local` in the catalog.
    pub async fn register(&self, catalog: &Catalog, keyring: &Keyring) -> Result<(), EmbeddedError> {
        let server = NewServer {
            name: SERVER_NAME.to_owned(),
            host: "127.0.0.1".to_owned(),
            port: self.port,
            admin_user: ADMIN_ROLE.to_owned(),
            admin_password_sealed: keyring
                .seal(self.admin_password.expose_secret(), &server_aad(SERVER_NAME)),
            maintenance_db: "postgres".to_owned(),
            // A cluster of this process's own, on loopback.
            tls: PgTls { sslmode: SslMode::Disable, ..PgTls::default() },
            weight: 100,
            max_tenants: None,
            region: None,
            latency_ms: 0.0,
        };
        catalog.upsert_server_connection(&server).await.map_err(|e| EmbeddedError::Bootstrap(e.to_string()))
    }

    /// Stops PostgreSQL cleanly and waits for it.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        if let Some(running) = self.running.take() {
            tokio::task::spawn_blocking(move || running.stop())
                .await
                .map_err(|e| EmbeddedError::Bootstrap(format!("cluster stop task failed: {e}")))??;
            tracing::info!("embedded PostgreSQL stopped");
        }
        Ok(())
    }
}

/// For CLI commands: points `settings` at the embedded cluster a running `serve` started.
pub fn attach(settings: &mut Settings) -> Result<(), EmbeddedError> {
    let dir = settings.data_dir.clone();
    let not_running = || EmbeddedError::NotRunning(dir.clone());
    let cluster = cluster(settings)?;
    if !cluster.data_dir().join("postmaster.pid").is_file() {
        return Err(not_running());
    }
    let port = std::fs::read_to_string(dir.join("port"))
        .ok()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .ok_or_else(not_running)?;
    let password = std::fs::read_to_string(dir.join("pg-admin-password")).map_err(|_| not_running())?;
    if settings.master_key.is_none() {
        let key = std::fs::read_to_string(dir.join("master-key")).map_err(|_| not_running())?;
        settings.master_key = Some(SecretString::from(key.trim().to_owned()));
    }
    settings.catalog_url = Some(catalog_url(port, &SecretString::from(password.trim().to_owned())));
    Ok(())
}
