//! Building a running daemon from [`Settings`]: catalog, keys, background tasks, HTTP server.
//!
//! [`Daemon::start`] is what `tenantd serve` and the integration tests call; it returns once
//! the HTTP listener is bound, so a test can talk to it at once. [`serve`] adds the embedded
//! cluster and the signal handling of the command line.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::app::App;
use crate::catalog::CatalogError;
use crate::config::{ConfigError, Settings};
use crate::core::{Core, CoreError};
use crate::embedded::{self, EmbeddedError};
use crate::steps::FaultHook;
use crate::tenant_migrations::MigrationSet;

/// Shortest admin token accepted: it guards every tenant's data.
const MIN_ADMIN_TOKEN: usize = 32;

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
    /// The HTTPS certificate or key cannot be used.
    #[error(transparent)]
    Https(#[from] crate::api::serve::HttpsError),
    /// The HTTP listener could not be bound (or must not serve plain HTTP there).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl From<CoreError> for StartupError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Config(c) => StartupError::Config(c),
            CoreError::Catalog(c) => StartupError::Catalog(c),
        }
    }
}

/// What tests and benchmarks may add to a daemon; production uses the defaults.
#[derive(Default)]
pub struct Extras {
    /// Fault injection into provisioning steps (tests only).
    #[doc(hidden)]
    pub fault_injection: Option<FaultHook>,
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
        let admin_token = settings.admin_token.clone().ok_or_else(|| {
            ConfigError::new("TENANTD_ADMIN_TOKEN", "required when TENANTD_CATALOG_URL is set")
        })?;
        if secrecy::ExposeSecret::expose_secret(&admin_token).chars().count() < MIN_ADMIN_TOKEN {
            return Err(ConfigError::new(
                "TENANTD_ADMIN_TOKEN",
                format!("must be at least {MIN_ADMIN_TOKEN} characters (e.g. `openssl rand -hex 32`)"),
            )
            .into());
        }
        let mut core = Core::open(settings, crate::core::daemon_instance()).await?;
        if let Some(migrations) = extras.migrations {
            core = core.with_migrations(migrations);
        }
        if let Some(faults) = extras.fault_injection {
            core = core.with_fault_injection(faults);
        }
        let listen = core.settings.listen;
        let http = &core.settings.http;
        let https = match (&http.tls_cert, &http.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(crate::api::serve::Https::load(cert, key)?)),
            _ => None,
        };
        if https.is_none() && !http.allow_plaintext && !crate::api::serve::is_loopback(&listen) {
            return Err(StartupError::Listen {
                addr: listen,
                source: crate::api::serve::plaintext_refused(listen),
            });
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| StartupError::Listen { addr: listen, source })?;
        let addr = listener.local_addr().map_err(|source| StartupError::Listen { addr: listen, source })?;
        let app = Arc::new(App::new(core, admin_token));
        let weak = Arc::downgrade(&app);
        app.pools.set_terminator(Arc::new(move |backend| {
            let weak = weak.clone();
            Box::pin(async move {
                let Some(app) = weak.upgrade() else { return };
                if let Err(error) = crate::lifecycle::terminate_backend(&app.core, &backend).await {
                    tracing::error!(%error, pid = backend.pid, "cannot end a backend that ignored its cancel request");
                }
            })
        }));
        app.pools.spawn_reaper(&app.shutdown);
        app.handles.spawn_reaper(&app.shutdown);
        crate::telemetry::metrics();
        zero_alerted_counters();
        crate::tasks::health::spawn(app.clone());
        crate::tasks::watcher::spawn(app.clone(), app.wake.clone(), app.changes.clone());
        crate::tasks::workers::spawn(app.clone(), app.wake.clone());
        crate::api::spawn(app.clone(), listener, https);
        crate::tasks::backups::spawn(app.clone());
        crate::tasks::limits::spawn(app.clone());
        crate::tasks::quotas::spawn(app.clone());
        crate::tasks::webhooks::spawn(app.clone());
        crate::tasks::moves::spawn(app.clone());
        crate::tasks::reconcile::spawn(app.clone());
        crate::tasks::spares::spawn(app.clone());
        tracing::info!(%addr, https = app.settings.http.tls_cert.is_some(), instance = %app.instance, "tenantd is serving");
        if app.settings.upgrade.auto {
            crate::tasks::upgrade::auto(app.clone()).await;
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

/// The daemon holds the master key and every opened password in memory: a core dump would
/// write them to disk. A failure to switch dumps off is logged, not fatal.
fn no_core_dumps() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(error) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        tracing::warn!(%error, "cannot switch core dumps off");
    }
}

/// Every HTTP client, pooled connection and child pipe is a descriptor: the soft limit (often
/// 1024) goes up to the hard one, so a burst of sockets does not starve the database side.
fn more_descriptors() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(%error, soft, hard, "cannot raise the open files limit");
            }
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the open files limit"),
    }
}

/// SIGHUP reloads the HTTPS certificate when there is one; without one it must not end the
/// daemon (its default action), since `systemctl reload` sends it either way.
fn sighup_never_kills() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP received (the HTTPS certificate, if any, is read again)");
                }
            });
        }
        Err(error) => tracing::warn!(%error, "cannot listen for SIGHUP"),
    }
}

/// `tenantd serve`: embedded cluster when no catalog URL, then the daemon until a signal.
pub async fn serve(mut settings: Settings) -> Result<(), StartupError> {
    no_core_dumps();
    more_descriptors();
    sighup_never_kills();
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
        crate::tasks::health::check_now(&daemon.app).await;
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

/// Counters that the alert rules in `deploy/monitoring/` watch exist from the start, at zero:
/// Prometheus's `increase()` then sees their first failure, and the rules name series a fresh
/// daemon shows (`tests/it/deploy.rs` checks it).
fn zero_alerted_counters() {
    use crate::steps::Step;
    let steps = Step::ALL.into_iter().chain([Step::Archive, Step::Drop]).map(Step::as_str);
    for step in steps.chain(["catalog"]) {
        metrics::counter!("tenantd_provision_failures_total", "step" => step).increment(0);
    }
    for result in ["ok", "failed"] {
        metrics::counter!("tenantd_backups_total", "result" => result).increment(0);
    }
    for outcome in ["upgraded", "failed"] {
        metrics::counter!("tenantd_upgrades_total", "outcome" => outcome).increment(0);
    }
    for result in ["delivered", "retry", "failed", "gone"] {
        metrics::counter!("tenantd_webhook_deliveries_total", "result" => result).increment(0);
    }
    metrics::counter!("tenantd_tenants_error_total").increment(0);
    metrics::counter!("tenantd_tenants_ready_total").increment(0);
    metrics::counter!("tenantd_health_check_failures_total").increment(0);
}
