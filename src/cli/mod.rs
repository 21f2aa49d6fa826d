//! The command line. Every command calls the same library functions as the HTTP API.
//!
//! Exit codes: 0 success, 1 the operation failed, 2 bad usage or configuration.
//! Output: human tables by default, `--json` for scripts; errors are one line on stderr.

mod backup;
mod events;
mod keys;
mod migrate;
mod output;
mod pgbouncer;
mod reconcile;
mod server;
mod tenant;
mod webhook;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::config::{ConfigError, Overrides, Settings};
use crate::core::{Core, CoreError};
use crate::startup::{self, StartupError};

/// What a CLI command works with: the process's [`Core`] (catalog, keys, admin pools), opened
/// as the daemon opens it.
pub type Context = Core;

/// tenantd: a PostgreSQL database per tenant, provisioned, migrated and lent out.
#[derive(Debug, Parser)]
#[command(name = "tenantd", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: TENANTD_CONFIG, else none).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory of the embedded default.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon (embedded PostgreSQL when TENANTD_CATALOG_URL is not set).
    Serve {
        /// Address of the HTTP API.
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Print a new random master key (base64 of 32 bytes) for TENANTD_MASTER_KEY.
    Keygen,
    /// Master keys: which ones sealed values use; re-seal everything with the current one.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Database servers that receive tenants.
    #[command(subcommand)]
    Server(server::ServerCommand),
    /// Tenants: create, list, show, retry, dump, restore, suspend, resume, drop.
    #[command(subcommand)]
    Tenant(tenant::TenantCommand),
    /// Upgrade tenant databases to this build's migrations (dry run, canary, then all).
    Migrate(migrate::MigrateArgs),
    /// Move tenants from the most loaded servers (tenants per weight) to the least loaded.
    Rebalance {
        /// Print the plan only.
        #[arg(long)]
        dry_run: bool,
        /// At most this many moves.
        #[arg(long, default_value_t = 10)]
        max_moves: usize,
        /// Print the plan (and outcomes) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compare the catalog with every server: drift found, safe repairs with --repair.
    Reconcile(reconcile::ReconcileArgs),
    /// Backups in backups.dir: list them, or take them now.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// PgBouncer in front of the tenant databases: its configuration from the catalog.
    #[command(subcommand)]
    Pgbouncer(pgbouncer::PgBouncerCommand),
    /// Webhooks: endpoints that receive tenant events (signed, Standard Webhooks), deliveries.
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// Benchmarks that print figures (they clean up after themselves).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The audit trail of every tenant, oldest first (--follow for new ones as they come).
    Events(events::EventsArgs),
    /// Print the OpenAPI 3.1 document of the HTTP API (what GET /openapi.json serves).
    Openapi,
    /// Print a shell completion script: `source <(tenantd completions bash)`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Time-to-READY of tenantd next to the raw floor (CREATE DATABASE + the same migrations).
    Provision {
        /// Tenants per measurement.
        #[arg(long, default_value_t = 20)]
        tenants: usize,
        /// Server to measure on (default: the first healthy one).
        #[arg(long)]
        server: Option<String>,
        /// Worker concurrency for the batch measurement (default: workers.concurrency).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// New tenants while warm spares last: time-to-READY, `POST /v1/tenants?wait` round trip,
    /// and a burst's rate (a scratch catalog with `spares.per_server` = --spares).
    Spares {
        /// Tenants created one at a time over HTTP.
        #[arg(long, default_value_t = 20)]
        tenants: usize,
        /// Tenants asked for at once afterwards (default: --spares).
        #[arg(long)]
        burst: Option<usize>,
        /// Spares kept on the server.
        #[arg(long, default_value_t = 100)]
        spares: usize,
        /// Server to measure on (default: the first healthy one).
        #[arg(long)]
        server: Option<String>,
    },
    /// Time to upgrade N tenants with a one-table migration, next to the same migration by
    /// plain SQL at the same concurrency.
    Migrate {
        /// Tenants to provision and upgrade.
        #[arg(long, default_value_t = 200)]
        tenants: usize,
        /// Server to measure on (default: the first healthy one).
        #[arg(long)]
        server: Option<String>,
        /// Tenants upgraded at once, by tenantd and by the floor (default: upgrade.concurrency).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Resident memory per idle tenant pool, with N pools opened and then idle.
    Pools {
        /// Tenant pools to open.
        #[arg(long, default_value_t = 10_000)]
        pools: usize,
        /// Server to measure on (default: the first healthy one).
        #[arg(long)]
        server: Option<String>,
    },
    /// The hot paths (listing, polls, placement, time-to-READY) with an empty catalog and
    /// with N tenants in it.
    Catalog {
        /// READY tenants to add (rows only) for the second measurement.
        #[arg(long, default_value_t = 100_000)]
        tenants: usize,
        /// Server to measure on (default: the first healthy one).
        #[arg(long)]
        server: Option<String>,
    },
    /// Latency of SELECT 1 through the SQL endpoint next to a direct connection.
    Sql {
        /// Queries per measurement (enough that the CPU times, counted in 10 ms ticks, are
        /// precise to about 1%).
        #[arg(long, default_value_t = 10000)]
        queries: usize,
        /// Server to measure on (default: the first healthy one).
        #[arg(long)]
        server: Option<String>,
        /// Clients for the throughput measurement.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
    /// The window a client polling the SQL endpoint cannot use a tenant while it moves.
    Move {
        /// Data in the tenant, in MB.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        size_mb: u64,
        /// Source server (default: the first healthy one).
        #[arg(long)]
        server: Option<String>,
        /// Target server (default: a scratch cluster started for the run and removed).
        #[arg(long)]
        to: Option<String>,
    },
}

/// A failed command: the message and the exit code.
#[derive(Debug)]
pub struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    /// Exit code 1: the operation failed.
    pub fn failed(message: impl std::fmt::Display) -> Self {
        Self { message: message.to_string(), code: 1 }
    }

    /// Exit code 2: bad usage or configuration.
    pub fn usage(message: impl std::fmt::Display) -> Self {
        Self { message: message.to_string(), code: 2 }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::usage(e)
    }
}

impl From<CoreError> for Failure {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::Config(c) => c.into(),
            other => Self::failed(other),
        }
    }
}

impl From<StartupError> for Failure {
    fn from(e: StartupError) -> Self {
        match e {
            StartupError::Config(c) => c.into(),
            other => Self::failed(other),
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenantd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let serve = matches!(cli.command, Command::Serve { .. });
    let outcome = runtime.block_on(async {
        if serve {
            // The daemon handles its own signals (graceful shutdown).
            return run(cli, &env).await;
        }
        // Ctrl-C drops the command's future, so its guards run: temporary dump files are
        // removed, child processes killed, leases left to expire (every step resumes).
        tokio::select! {
            outcome = run(cli, &env) => outcome,
            _ = tokio::signal::ctrl_c() => Err(Failure { message: "interrupted".into(), code: 130 }),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("tenantd: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli, env: &BTreeMap<String, String>) -> Result<(), Failure> {
    // Commands that need no configuration and no catalog.
    match &cli.command {
        Command::Openapi => return write_stdout(crate::api::openapi::document_json().as_bytes()),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "tenantd", &mut script);
            return write_stdout(&script);
        }
        _ => {}
    }
    let mut overrides = Overrides { config_file: cli.config.clone(), values: Vec::new() };
    if let Some(dir) = &cli.data_dir {
        overrides.values.push(("data_dir", dir.display().to_string()));
    }
    if let Command::Serve { listen: Some(listen) } = &cli.command {
        overrides.values.push(("listen", listen.clone()));
    }
    let settings = Settings::load(&overrides, env)?;
    let filter = match cli.command {
        Command::Serve { .. } => crate::telemetry::DEFAULT_FILTER,
        _ => crate::telemetry::CLI_FILTER,
    };
    crate::telemetry::init_logging(settings.log_format, filter);
    match cli.command {
        Command::Serve { .. } => Ok(startup::serve(settings).await?),
        Command::Keygen => {
            println!("{}", crate::crypto::generate_master_key().expose_secret());
            Ok(())
        }
        // Reporting keys needs no key check; rotating needs every old key, which open checks.
        Command::Keys(cmd @ keys::KeysCommand::Status { .. }) => {
            keys::run(cmd, open_unchecked(settings).await?).await
        }
        Command::Keys(cmd) => keys::run(cmd, open(settings).await?).await,
        Command::Server(cmd) => server::run(cmd, open(settings).await?).await,
        Command::Tenant(cmd) => tenant::run(cmd, open(settings).await?).await,
        Command::Migrate(args) => migrate::run(args, open(settings).await?).await,
        Command::Backup(cmd) => backup::run(cmd, open(settings).await?).await,
        Command::Rebalance { dry_run, max_moves, json } => {
            server::rebalance(&open(settings).await?, dry_run, max_moves, json).await
        }
        Command::Pgbouncer(cmd) => pgbouncer::run(cmd, open(settings).await?).await,
        Command::Reconcile(args) => reconcile::run(args, open(settings).await?).await,
        Command::Events(args) => events::run(args, open_unchecked(settings).await?).await,
        Command::Openapi | Command::Completions { .. } => Ok(()),
        Command::Webhook(cmd) => webhook::run(cmd, open(settings).await?).await,
        Command::Bench(BenchCommand::Provision { tenants, server, concurrency }) => {
            if tenants == 0 {
                return Err(Failure::usage("--tenants must be at least 1"));
            }
            let mut ctx = open(settings).await?;
            if let Some(c) = concurrency {
                ctx.settings.workers.concurrency = c;
                ctx.settings.validate()?;
            }
            crate::bench::provision(&ctx, server.as_deref(), tenants).await.map_err(Failure::failed)
        }
        Command::Bench(BenchCommand::Spares { tenants, burst, spares, server }) => {
            if tenants == 0 || spares == 0 {
                return Err(Failure::usage("--tenants and --spares must be at least 1"));
            }
            let ctx = open(settings).await?;
            let burst = burst.unwrap_or(spares);
            crate::bench::spares(&ctx, server.as_deref(), tenants, burst, spares)
                .await
                .map_err(Failure::failed)
        }
        Command::Bench(BenchCommand::Migrate { tenants, server, concurrency }) => {
            if tenants == 0 || concurrency == Some(0) {
                return Err(Failure::usage("--tenants and --concurrency must be at least 1"));
            }
            let ctx = open(settings).await?;
            let concurrency = concurrency.unwrap_or(ctx.settings.upgrade.concurrency);
            crate::bench::migrate(&ctx, server.as_deref(), tenants, concurrency)
                .await
                .map_err(Failure::failed)
        }
        Command::Bench(BenchCommand::Pools { pools, server }) => {
            if pools == 0 {
                return Err(Failure::usage("--pools must be at least 1"));
            }
            let ctx = open(settings).await?;
            crate::bench::pools(&ctx, server.as_deref(), pools).await.map_err(Failure::failed)
        }
        Command::Bench(BenchCommand::Catalog { tenants, server }) => {
            if !(100..=10_000_000).contains(&tenants) {
                return Err(Failure::usage("--tenants must be between 100 and 10000000"));
            }
            let ctx = open(settings).await?;
            crate::bench::catalog(&ctx, server.as_deref(), tenants).await.map_err(Failure::failed)
        }
        Command::Bench(BenchCommand::Sql { queries, server, concurrency }) => {
            if queries == 0 || concurrency == 0 {
                return Err(Failure::usage("--queries and --concurrency must be at least 1"));
            }
            let ctx = open(settings).await?;
            crate::bench::sql(&ctx, server.as_deref(), queries, concurrency).await.map_err(Failure::failed)
        }
        Command::Bench(BenchCommand::Move { size_mb, server, to }) => {
            let ctx = open(settings).await?;
            crate::bench::relocate(&ctx, server.as_deref(), to.as_deref(), size_mb)
                .await
                .map_err(Failure::failed)
        }
    }
}

/// Writes `bytes` to stdout; a closed pipe is an error, not a panic.
fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::failed(format!("cannot write to stdout: {e}")))
}

/// Opens the catalog named by the settings, or the running embedded one, as this CLI process.
async fn open(settings: Settings) -> Result<Core, Failure> {
    let core = open_unchecked(settings).await?;
    core.check_keys().await?;
    Ok(core)
}

/// [`open`] without the check that every key in use is configured.
async fn open_unchecked(mut settings: Settings) -> Result<Core, Failure> {
    if settings.is_embedded() {
        crate::embedded::attach(&mut settings).map_err(Failure::failed)?;
    }
    Ok(Core::open_unchecked(settings, crate::core::cli_instance()).await?)
}
