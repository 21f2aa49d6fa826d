//! `tenantd server ...`.

use std::io::Read;

use clap::Subcommand;
use secrecy::SecretString;

use super::{Context, Failure, output};
use crate::catalog::servers::{ServerPatch, ServerRecord, ServerStatus};
use crate::servers::{AddServer, ServerError};

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Register a server after checking that its admin role can CREATE DATABASE and CREATE ROLE.
    Add {
        /// Unique name (lowercase letters, digits, - and _).
        name: String,
        /// postgres://ADMIN[:PASSWORD]@HOST:PORT/MAINTENANCE_DB. Without a password in the
        /// URL, it is read from TENANTD_SERVER_PASSWORD or, with --password-stdin, from stdin.
        #[arg(long)]
        url: String,
        /// Read the admin password from stdin (keeps it out of the process list).
        #[arg(long)]
        password_stdin: bool,
        /// Relative share of new tenants.
        #[arg(long)]
        weight: Option<i32>,
        /// Most tenants this server may hold.
        #[arg(long)]
        max_tenants: Option<i32>,
        /// Region, for placement.
        #[arg(long)]
        region: Option<String>,
        /// Accept a maintenance database that PUBLIC may connect to or create in (refused
        /// otherwise: tenant roles could plant objects there).
        #[arg(long)]
        allow_public_maintenance_db: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List servers with status, health and tenant counts.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change a server's status, weight, capacity or region.
    Set {
        /// Server name.
        name: String,
        /// active | draining | maintenance.
        #[arg(long, value_parser = parse_status)]
        status: Option<ServerStatus>,
        /// Relative share of new tenants.
        #[arg(long)]
        weight: Option<i32>,
        /// Most tenants this server may hold.
        #[arg(long)]
        max_tenants: Option<i32>,
        /// Region.
        #[arg(long)]
        region: Option<String>,
        /// New TLS mode (disable, prefer, require, verify-ca, verify-full); replaces all TLS
        /// settings with the --ssl* flags given, after a connection with them succeeds.
        #[arg(long)]
        sslmode: Option<String>,
        /// CA certificates (PEM file on the daemons' machines, or `system`); with --sslmode.
        #[arg(long, requires = "sslmode")]
        sslrootcert: Option<String>,
        /// Client certificate (PEM file); with --sslmode and --sslkey.
        #[arg(long, requires_all = ["sslmode", "sslkey"])]
        sslcert: Option<String>,
        /// Client key (PEM file); with --sslmode and --sslcert.
        #[arg(long, requires_all = ["sslmode", "sslcert"])]
        sslkey: Option<String>,
    },
    /// Re-seal every sealed password with the current master key (the same as `keys rotate`).
    RotateKey,
    /// Remove a server that holds no tenant (refused while tenants remain: drain it first).
    Remove {
        /// Server name.
        name: String,
    },
    /// Mark a server draining and move every tenant on it to other servers (placement rules).
    Drain {
        /// Server name.
        name: String,
        /// Moves at once.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        concurrency: u16,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_status(text: &str) -> Result<ServerStatus, crate::catalog::servers::BadServerStatus> {
    text.parse()
}

pub async fn run(cmd: ServerCommand, ctx: Context) -> Result<(), Failure> {
    match cmd {
        ServerCommand::Drain { name, concurrency, json } => {
            drain(&ctx, &name, usize::from(concurrency), json).await
        }
        ServerCommand::Add {
            name,
            url,
            password_stdin,
            weight,
            max_tenants,
            region,
            allow_public_maintenance_db,
            json,
        } => {
            let password = if password_stdin {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).map_err(Failure::failed)?;
                Some(SecretString::from(text.trim_end_matches(['\n', '\r']).to_owned()))
            } else {
                std::env::var("TENANTD_SERVER_PASSWORD").ok().map(SecretString::from)
            };
            let req = AddServer {
                name,
                url: SecretString::from(url),
                password,
                weight,
                max_tenants,
                region,
                allow_public_maintenance_db,
            };
            let added = crate::servers::add(&ctx, &req).await.map_err(server_failure)?;
            for warning in &added.warnings {
                eprintln!("warning: {warning}");
            }
            if json {
                return output::json(&added);
            }
            println!(
                "server {} added ({}:{}, {} ms)",
                added.server.name,
                added.server.host,
                added.server.port,
                output::opt(added.server.health_latency_ms.map(|l| format!("{l:.1}")))
            );
            Ok(())
        }
        ServerCommand::List { json } => {
            let servers = ctx.catalog.servers().await.map_err(Failure::failed)?;
            if json {
                return output::json(&servers);
            }
            print_servers(&servers);
            Ok(())
        }
        ServerCommand::Set {
            name,
            status,
            weight,
            max_tenants,
            region,
            sslmode,
            sslrootcert,
            sslcert,
            sslkey,
        } => {
            let tls = sslmode
                .map(|mode| {
                    let sslmode = crate::pgtls::SslMode::parse(&mode).map_err(Failure::usage)?;
                    Ok::<_, Failure>(crate::pgtls::PgTls { sslmode, sslrootcert, sslcert, sslkey })
                })
                .transpose()?;
            if status.is_none()
                && weight.is_none()
                && max_tenants.is_none()
                && region.is_none()
                && tls.is_none()
            {
                return Err(Failure::usage(
                    "nothing to change: give --status, --weight, --max-tenants, --region or --sslmode",
                ));
            }
            let patch = ServerPatch { status, weight, max_tenants, region, tls };
            let server = crate::servers::update(&ctx, &name, &patch).await.map_err(server_failure)?;
            print_servers(&[server]);
            Ok(())
        }
        ServerCommand::RotateKey => super::keys::rotate(&ctx).await,
        ServerCommand::Remove { name } => {
            // Its warm spares go first (a spare is not a tenant: it never blocks a removal).
            crate::spares::drop_all(&ctx, &name).await.map_err(Failure::failed)?;
            ctx.catalog.remove_server(&name).await.map_err(Failure::failed)?;
            println!("server {name} removed");
            Ok(())
        }
    }
}

fn server_failure(e: ServerError) -> Failure {
    match e {
        ServerError::Name(_)
        | ServerError::Admin(crate::admin::AdminError::BadUrl(_) | crate::admin::AdminError::Tls(_))
        | ServerError::BadValue(_) => Failure::usage(e),
        other => Failure::failed(other),
    }
}

fn print_servers(servers: &[ServerRecord]) {
    let rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                format!("{}:{}", s.host, s.port),
                s.status.as_str().to_owned(),
                s.health.to_string(),
                output::opt(s.health_latency_ms.map(|l| format!("{l:.1}"))),
                s.weight.to_string(),
                format!("{}/{}", s.tenants, output::opt(s.max_tenants)),
                s.spares.to_string(),
                output::opt(s.region.clone()),
            ]
        })
        .collect();
    output::table(
        &["NAME", "ADDRESS", "STATUS", "HEALTH", "LATENCY_MS", "WEIGHT", "TENANTS", "SPARES", "REGION"],
        &rows,
    );
}

/// Drains a server in this process: a progress bar on a terminal (a line per tenant
/// otherwise), then a summary naming every tenant not moved and why; fails when any tenant
/// was not moved. Run again, it continues (moves cut short are resumed).
async fn drain(ctx: &Context, name: &str, concurrency: usize, json: bool) -> Result<(), Failure> {
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::moves::MoveError;
    let id = crate::moves::start_drain(ctx, name, &ctx.instance).await.map_err(|e| match e {
        MoveError::UnknownServer(_) => Failure::usage(e),
        other => Failure::failed(other),
    })?;
    let total = ctx.catalog.server(name).await.map_err(Failure::failed)?.tenants;
    if !json {
        eprintln!("draining {name}: {total} tenant(s), {concurrency} at a time (operation {id})");
    }
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(u64::try_from(total).unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} moved {msg} {elapsed} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    });
    let (done, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let report = |slug: &str, result: Result<&str, &str>| {
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        let line = match result {
            Ok(to) => format!("[{n}/{total}] {slug} -> {to}"),
            Err(why) => {
                failed.fetch_add(1, Ordering::Relaxed);
                format!("[{n}/{total}] {slug} NOT moved: {why}")
            }
        };
        match &bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(format!("({} failed)", failed.load(Ordering::Relaxed)));
                if result.is_err() {
                    bar.println(line);
                }
            }
            None if !json => eprintln!("{line}"),
            None => {}
        }
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let drained = crate::moves::drain(ctx, &ctx.instance, name, id, concurrency, &cancel, &report).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let summary = drained.map_err(Failure::failed)?;
    if json {
        output::json(&summary)?;
    } else {
        println!("{name}: {} moved, {} failed", summary.moved.len(), summary.failed.len());
        for (slug, why) in &summary.failed {
            println!("  not moved: {slug}: {why}");
        }
    }
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "{} tenant(s) could not be moved off {name}; run the drain again to continue",
            summary.failed.len()
        )))
    }
}

/// `tenantd rebalance`: prints the plan; without `--dry-run` makes its moves one at a time and
/// fails when any of them failed.
pub(super) async fn rebalance(
    ctx: &Context,
    dry_run: bool,
    max_moves: usize,
    json: bool,
) -> Result<(), Failure> {
    let plan = crate::moves::plan_rebalance(ctx, max_moves).await.map_err(Failure::failed)?;
    if json && dry_run {
        return output::json(&plan);
    }
    if plan.is_empty() {
        println!("balanced: nothing to move");
        return Ok(());
    }
    for m in &plan {
        println!("{} {} -> {}", m.slug, m.from, m.to);
    }
    if dry_run {
        return Ok(());
    }
    let mover = crate::moves::Mover::new(ctx, &ctx.instance);
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut failed = 0;
    for m in &plan {
        let outcome = match mover.start(&m.slug, &m.to, false).await {
            Ok(job) => mover.run(job, &cancel).await.map(|op| (op.state == "succeeded", op.error)),
            Err(e) => Err(e),
        };
        match outcome {
            Ok((true, _)) => eprintln!("moved {} to {}", m.slug, m.to),
            Ok((false, error)) => {
                failed += 1;
                eprintln!("{} NOT moved: {}", m.slug, error.unwrap_or_default());
            }
            Err(e) => {
                failed += 1;
                eprintln!("{} NOT moved: {e}", m.slug);
            }
        }
    }
    if failed == 0 { Ok(()) } else { Err(Failure::failed(format!("{failed} move(s) failed"))) }
}
