//! `tenantd pgbouncer config`: PgBouncer's configuration from the catalog.

use std::path::PathBuf;

use clap::Subcommand;

use super::{Context, Failure};
use crate::pgbouncer::{self, Options, PgBouncerError};

/// `tenantd pgbouncer` subcommands.
#[derive(Debug, Subcommand)]
pub enum PgBouncerCommand {
    /// Write DIR/pgbouncer.ini and DIR/userlist.txt (0600) routing every READY tenant in
    /// transaction mode; `pgbouncer DIR/pgbouncer.ini` then serves them.
    Config {
        /// Output directory (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// PgBouncer's listen address (`*:6432` for every address).
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:6432")]
        listen: String,
        /// Only the tenants of this server.
        #[arg(long, value_name = "S")]
        server: Option<String>,
        /// Keep the files current from catalog changes until interrupted.
        #[arg(long)]
        watch: bool,
        /// PgBouncer's pid file: it gets SIGHUP (reload) whenever the files change.
        #[arg(long, value_name = "PIDFILE")]
        pid: Option<PathBuf>,
        /// Hand the files to this OS user (when tenantd runs as root and PgBouncer does not).
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
    },
}

pub async fn run(cmd: PgBouncerCommand, ctx: Context) -> Result<(), Failure> {
    let PgBouncerCommand::Config { out, listen, server, watch, pid, owner } = cmd;
    let (listen_host, listen_port) = Options::parse_listen(&listen).map_err(Failure::usage)?;
    let options = Options { out, listen_host, listen_port, server, pid_file: pid, owner };
    let fail = |e: PgBouncerError| match e {
        PgBouncerError::Usage(_) => Failure::usage(e),
        other => Failure::failed(other),
    };
    if watch {
        eprintln!("tenantd: keeping {} current (Ctrl-C to stop)", options.out.display());
        return match pgbouncer::watch(&ctx, &options).await {
            Ok(never) => match never {},
            Err(e) => Err(fail(e)),
        };
    }
    let written = pgbouncer::write_once(&ctx, &options).await.map_err(fail)?;
    println!(
        "{} tenants: {} and {}{}",
        written.tenants,
        written.ini.display(),
        written.userlist.display(),
        if written.changed { "" } else { " (unchanged)" }
    );
    Ok(())
}
