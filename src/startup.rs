//! Building a running daemon from [`Settings`]: catalog, keys, background tasks, HTTP server.
//!
//! [`Daemon::start`] is what `tenantd serve` and the integration tests call; it returns once
//! the HTTP listener is bound, so a test can talk to it at once. [`serve`] adds the embedded
//! cluster and the signal handling of the command line.

use std::net::SocketAddr;
use std::sync::Arc;

use secrecy::SecretString;
use tokio::sync::{Notify, broadcast};

use crate::catalog::{Catalog, CatalogError};
use crate::config::{ConfigError, Settings};
use crate::crypto::{CryptoError, Keyring};
use crate::embedded::{self, EmbeddedError};
use crate::provisioner::FaultHook;
use crate::shutdown::Shutdown;
use crate::tenant_migrations::MigrationSet;
use crate::watcher::Change;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Bad or missing configuration (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The embedded cluster could not be started.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// The catalog could not be reached or migrated.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// State shared by every handler and background task of one daemon.
pub struct App {
    /// Effective settings.
    pub settings: Settings,
    /// The catalog.
    pub catalog: Catalog,
    /// Master keys.
    pub keyring: Keyring,
    /// Admin bearer token.
    pub admin_token: SecretString,
    /// This daemon's identity as a lease owner and event actor: `host:pid:random`.
    pub instance: String,
    /// Shutdown of this daemon.
    pub shutdown: Shutdown,
    /// Fault injection into provisioning steps (tests only; `None` in production).
    pub faults: Option<FaultHook>,
    /// The tenant migrations this daemon applies (the embedded ones in production).
    pub migrations: MigrationSet,
    /// Wakes the workers (catalog notifications).
    pub wake: Arc<Notify>,
    /// Catalog changes, for requests that wait on a tenant.
    pub changes: broadcast::Sender<Change>,
    /// Pooled admin connections to the servers.
    pub admin_pools: crate::servers::AdminPools,
    /// Cached tenant and server lookups.
    pub resolver: crate::resolver::Resolver,
    /// Tenant connection pools.
    pub pools: crate::pools::Pools,
    /// Open connection handles.
    pub handles: Arc<crate::handles::Handles>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("instance", &self.instance).finish_non_exhaustive()
    }
}

/// Opens the keyring from settings; the master key is required.
pub fn keyring(settings: &Settings) -> Result<Keyring, ConfigError> {
    let key = settings.master_key.as_ref().ok_or_else(|| {
        ConfigError::new(
            "TENANTD_MASTER_KEY",
            "required when TENANTD_CATALOG_URL is set (base64 of 32 random bytes; \
             `tenantd keygen` prints one)",
        )
    })?;
    Keyring::new(key, &settings.old_master_keys).map_err(|e: CryptoError| {
        let setting = match e {
            CryptoError::BadKey(name) => name,
            _ => "TENANTD_MASTER_KEY",
        };
        ConfigError::new(setting, e.to_string())
    })
}

/// Opens the catalog and applies its schema.
pub async fn open_catalog(settings: &Settings) -> Result<Catalog, StartupError> {
    let url = settings.catalog_url.as_ref().ok_or_else(|| {
        ConfigError::new("TENANTD_CATALOG_URL", "not set and no embedded cluster is running")
    })?;
    let catalog = Catalog::new(url, settings.workers.concurrency + 6)
        .map_err(|e| ConfigError::new("TENANTD_CATALOG_URL", e.to_string()))?;
    catalog.migrate().await?;
    Ok(catalog)
}

/// A unique identity for this process: host, pid and a random suffix.
fn instance_id() -> String {
    let host =
        nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "host".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &suffix[..8])
}

/// What tests and benchmarks may add to a daemon; production uses the defaults.
#[derive(Default)]
pub struct Extras {
    /// Fault injection into provisioning steps.
    pub faults: Option<FaultHook>,
    /// Tenant migrations other than the embedded ones ("a newer build").
    pub migrations: Option<MigrationSet>,
}

/// A running daemon: HTTP server and background tasks.
#[derive(Debug)]
pub struct Daemon {
    app: Arc<App>,
    addr: SocketAddr,
}

impl Daemon {
    /// Starts a daemon on an existing catalog (`settings.catalog_url` must be set).
    pub async fn start(settings: Settings) -> Result<Daemon, StartupError> {
        Self::start_with(settings, Extras::default()).await
    }

    /// [`Daemon::start`] with test or benchmark extras.
    pub async fn start_with(settings: Settings, extras: Extras) -> Result<Daemon, StartupError> {
        settings.validate()?;
        let keyring = keyring(&settings)?;
        let admin_token = settings.admin_token.clone().ok_or_else(|| {
            ConfigError::new("TENANTD_ADMIN_TOKEN", "required when TENANTD_CATALOG_URL is set")
        })?;
        let catalog = open_catalog(&settings).await?;
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| StartupError::Listen { addr: settings.listen, source })?;
        let addr =
            listener.local_addr().map_err(|source| StartupError::Listen { addr: settings.listen, source })?;
        let settings_pools = settings.pools.clone();
        let settings_pools_admin = settings.workers.concurrency + 1;
        let app = Arc::new(App {
            settings,
            catalog,
            keyring,
            admin_token,
            instance: instance_id(),
            shutdown: Shutdown::new(),
            faults: extras.faults,
            migrations: extras.migrations.unwrap_or_default(),
            wake: Arc::new(Notify::new()),
            changes: broadcast::channel(1024).0,
            admin_pools: crate::servers::AdminPools::new(settings_pools_admin),
            resolver: crate::resolver::Resolver::default(),
            pools: crate::pools::Pools::new(settings_pools),
            handles: Arc::new(crate::handles::Handles::default()),
        });
        app.pools.spawn_reaper(&app.shutdown);
        app.handles.spawn_reaper(&app.shutdown);
        crate::telemetry::metrics();
        crate::health::spawn(app.clone());
        crate::watcher::spawn(app.clone(), app.wake.clone(), app.changes.clone());
        crate::workers::spawn(app.clone(), app.wake.clone());
        crate::api::spawn(app.clone(), listener);
        crate::backups::spawn(app.clone());
        tracing::info!(%addr, instance = %app.instance, "tenantd is serving");
        if app.settings.upgrade.auto {
            auto_upgrade(app.clone()).await;
        }
        Ok(Daemon { app, addr })
    }

    /// The address the HTTP API is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (tests use it to inspect the catalog).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stops accepting requests, lets in-flight ones finish, stops background tasks.
    pub async fn stop(self) {
        self.app.shutdown.shutdown().await;
        tracing::info!(instance = %self.app.instance, "tenantd stopped");
    }
}

/// `upgrade.auto`: upgrades every READY tenant in the background. A failure to even start
/// is logged loudly; the daemon keeps serving (tenants stay at their old versions).
async fn auto_upgrade(app: Arc<App>) {
    let selection = crate::upgrade::Selection { slugs: Vec::new(), all: true, server: None };
    let options = crate::upgrade::Options {
        concurrency: app.settings.upgrade.concurrency,
        canary: 0,
        max_failures: None,
        dry_run: false,
    };
    match crate::upgrade::spawn_in_daemon(app, selection, options).await {
        Ok(started) => {
            tracing::info!(run = %started.run, behind = started.plan.behind().count(), "automatic upgrade started")
        }
        Err(error) => tracing::error!(%error, "automatic upgrade could not start"),
    }
}

/// `tenantd serve`: embedded cluster when no catalog URL, then the daemon until a signal.
pub async fn serve(mut settings: Settings) -> Result<(), StartupError> {
    let embedded = if settings.is_embedded() { Some(embedded::start(&mut settings).await?) } else { None };
    let result = run_until_signal(settings, embedded.as_ref()).await;
    if let Some(embedded) = embedded {
        embedded.stop().await?;
    }
    result
}

async fn run_until_signal(
    settings: Settings,
    embedded: Option<&embedded::Embedded>,
) -> Result<(), StartupError> {
    let data_dir = settings.data_dir.clone();
    let token_from_file = embedded.is_some() && std::env::var_os("TENANTD_ADMIN_TOKEN").is_none();
    let daemon = Daemon::start(settings).await?;
    if let Some(embedded) = embedded {
        embedded.register(&daemon.app.catalog, &daemon.app.keyring).await?;
        crate::health::check_now(&daemon.app).await;
        print_banner(&daemon, &data_dir, token_from_file);
    }
    crate::shutdown::signal().await;
    tracing::info!("shutting down: finishing in-flight requests");
    daemon.stop().await;
    Ok(())
}

/// Prints where things are. Written with `writeln!` rather than `println!`: a closed stdout
/// (piped into `head`, detached) must not take the daemon down.
fn print_banner(daemon: &Daemon, data_dir: &std::path::Path, token_from_file: bool) {
    use std::io::Write;
    let dir = data_dir.display();
    let addr = daemon.local_addr();
    let mut text =
        format!("tenantd is running (embedded PostgreSQL in {dir}/pg)\n  API:          http://{addr}\n");
    if token_from_file {
        text.push_str(&format!("  admin token:  {dir}/admin-token\n"));
    }
    text.push_str(&format!(
        "  master key:   {dir}/master-key (keep it safe: it opens every stored password)\n"
    ));
    if token_from_file {
        text.push_str(&format!(
            "  try:          curl -H \"Authorization: Bearer $(cat {dir}/admin-token)\" http://{addr}/v1/servers\n"
        ));
    }
    text.push_str("Ctrl-C stops tenantd and its PostgreSQL.\n");
    let mut out = std::io::stdout().lock();
    if let Err(error) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        tracing::warn!(%error, "cannot print the start-up banner to stdout");
    }
}
