//! `tenantd tenant ...`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use secrecy::ExposeSecret;

use super::{Context, Failure, output};
use crate::catalog::tenants::{TenantFilter, TenantRecord, TenantStatus};
use crate::driver::{Driver, RestoreRequest};
use crate::lifecycle::LifecycleError;
use crate::limits::LimitOverrides;
use crate::target::TenantTarget;
use crate::tenants::{CreateTenant, TenantError};

mod format;
use format::{parse_labels, parse_size, print_details, print_tenant, print_tenants};

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Ask for a new tenant (idempotent: an existing slug is shown, not recreated).
    Create {
        /// Slug: a lowercase letter, then 2-47 lowercase letters, digits, - or _.
        slug: String,
        /// Place it on this server.
        #[arg(long)]
        server: Option<String>,
        /// Place it in this region.
        #[arg(long)]
        region: Option<String>,
        /// Label as KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Provision it now (here, or by a running daemon) and wait up to SECS for READY.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tenants.
    List {
        /// Only this status (PENDING, READY, ERROR, ...).
        #[arg(long)]
        status: Option<String>,
        /// Only this server.
        #[arg(long)]
        server: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant with its recent events.
    Show {
        /// Slug.
        slug: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Connection details of a READY tenant's own role (URL by default, --json for all fields).
    Connection {
        /// Slug.
        slug: String,
        /// Print host, port, dbname, user, password and url as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A new password for a tenant's role; prints the new connection URL (shown once).
    RotatePassword {
        /// Slug.
        slug: String,
        /// Print host, port, dbname, user, password and url as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Dump a tenant's database (pg_dump custom format) to FILE, or to stdout with `-o -`.
    Dump {
        /// Slug.
        slug: String,
        /// Output file, or `-` for stdout.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Create a tenant from a dump (same provisioning, database filled from the dump).
    Restore {
        /// Slug of the new tenant.
        slug: String,
        /// A dump made by `tenant dump` (pg_dump custom format).
        #[arg(short, long, value_name = "FILE")]
        input: PathBuf,
        /// Place it on this server.
        #[arg(long)]
        server: Option<String>,
        /// Drop an existing tenant with this slug first (needs --yes, and --archive DIR,
        /// lifecycle.archive_dir or --no-archive).
        #[arg(long)]
        replace: bool,
        /// With --replace: write the replaced tenant's final archive into DIR first.
        #[arg(long, value_name = "DIR", requires = "replace")]
        archive: Option<PathBuf>,
        /// With --replace: drop the replaced tenant without a final archive.
        #[arg(long, requires = "replace", conflicts_with = "archive")]
        no_archive: bool,
        /// Confirm the --replace.
        #[arg(long, requires = "replace")]
        yes: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        wait: u64,
    },
    /// Set a tenant's limits (the [limits] settings otherwise) and apply them to its role.
    Set {
        /// Slug.
        slug: String,
        /// CONNECTION LIMIT of the tenant's role.
        #[arg(long)]
        connections: Option<u32>,
        /// Default statement_timeout of its sessions (e.g. 30s; 0 = none).
        #[arg(long, value_parser = crate::config::parse_duration)]
        statement_timeout: Option<Duration>,
        /// Default idle_in_transaction_session_timeout of its sessions (e.g. 5m; 0 = none).
        #[arg(long, value_parser = crate::config::parse_duration)]
        idle_in_transaction_timeout: Option<Duration>,
        /// Storage quota of its database (bytes, or with a unit: 500MB, 5GB; 0 = none).
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
        /// Drop every override first: the settings' defaults apply again.
        #[arg(long)]
        defaults: bool,
    },
    /// Refuse new connections and end live ones; the data stays.
    Suspend {
        /// Slug.
        slug: String,
    },
    /// Allow connections again after a suspension.
    Resume {
        /// Slug.
        slug: String,
    },
    /// Delete a tenant: database and role dropped (after a final archive with --archive).
    Drop {
        /// Slug.
        slug: String,
        /// Write a final dump into DIR first; the drop is aborted if that fails.
        #[arg(long, value_name = "DIR")]
        archive: Option<PathBuf>,
        /// Confirm (without it, tenantd asks on a terminal and refuses otherwise).
        #[arg(long)]
        yes: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        wait: u64,
    },
    /// Move a READY tenant to another server (offline copy: unavailable for a short pause).
    Move {
        /// Slug.
        slug: String,
        /// The target server.
        #[arg(long, value_name = "SERVER")]
        to: String,
        /// Confirm (the tenant is unavailable while it is copied).
        #[arg(long)]
        yes: bool,
        /// Drop the source database at once instead of keeping it for moves.keep_source.
        #[arg(long)]
        drop_source: bool,
        /// Move online (logical replication): checks its prerequisites and lists every missing
        /// one; not implemented on this build, so refused even when none is missing.
        #[arg(long)]
        online: bool,
        /// Print the operation as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start a tenant in ERROR again.
    Retry {
        /// Slug.
        slug: String,
        /// Provision it now and wait up to SECS for READY.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
    },
}

pub async fn run(cmd: TenantCommand, ctx: Context) -> Result<(), Failure> {
    match cmd {
        TenantCommand::Create { slug, server, region, labels, wait, json } => {
            let labels = parse_labels(&labels)?;
            let req = CreateTenant { slug, server, region, labels: Some(labels) };
            let created =
                crate::tenants::create(&ctx.catalog, &ctx.settings, &req).await.map_err(tenant_failure)?;
            if let Some(token) = &created.token {
                eprintln!("tenant token (shown once, store it now): {}", token.expose_secret());
            } else {
                eprintln!("tenant {} exists already", created.tenant.slug);
            }
            let tenant = match wait {
                Some(secs) => provision_and_wait(&ctx, &created.tenant, Duration::from_secs(secs)).await?,
                None => created.tenant,
            };
            print_tenant(&tenant, json)?;
            settled_or_fail(&tenant, wait.is_some(), TenantStatus::Ready)
        }
        TenantCommand::List { status, server, json } => {
            let status = status
                .map(|s| {
                    TenantStatus::parse(&s).ok_or_else(|| Failure::usage(format!("unknown status {s:?}")))
                })
                .transpose()?;
            let mut all = Vec::new();
            let mut after = None;
            loop {
                let filter = TenantFilter {
                    status,
                    server: server.clone(),
                    after,
                    limit: 1000,
                    ..TenantFilter::default()
                };
                let page = ctx.catalog.tenants(&filter).await.map_err(Failure::failed)?;
                let done = page.len() < 1000;
                after = page.last().map(|t| t.slug.clone());
                all.extend(page);
                if done {
                    break;
                }
            }
            if json {
                return output::json(&all);
            }
            print_tenants(&all);
            Ok(())
        }
        TenantCommand::Show { slug, json } => {
            let tenant = ctx.catalog.tenant(&slug).await.map_err(Failure::failed)?;
            let events = ctx.catalog.events(tenant.id, 0, 10_000).await.map_err(Failure::failed)?;
            let migrations = crate::tenant_migrations::MigrationSet::embedded();
            let pending = migrations.pending_after(tenant.schema_version);
            if json {
                return output::json(&serde_json::json!({
                    "tenant": tenant, "events": events,
                    "latest_version": migrations.latest_version(), "pending_migrations": pending,
                }));
            }
            print_details(&tenant);
            let names: Vec<String> = pending.iter().map(|m| format!("V{}__{}", m.version, m.name)).collect();
            println!("{:<16} {}", "latest_version", migrations.latest_version());
            println!(
                "{:<16} {}",
                "pending",
                if names.is_empty() { "-".to_owned() } else { names.join(", ") }
            );
            println!("\nEVENTS (latest 20)");
            let start = events.len().saturating_sub(20);
            let rows: Vec<Vec<String>> = events[start..]
                .iter()
                .map(|e| {
                    vec![
                        e.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                        e.kind.clone(),
                        e.detail.to_string(),
                        e.actor.clone(),
                    ]
                })
                .collect();
            output::table(&["AT", "KIND", "DETAIL", "ACTOR"], &rows);
            Ok(())
        }
        TenantCommand::Dump { slug, output } => dump(&ctx, &slug, &output).await,
        TenantCommand::Restore { slug, input, server, replace, archive, no_archive, yes, wait } => {
            let replace_archive = archive.or_else(|| ctx.settings.lifecycle.archive_dir.clone());
            if replace {
                if replace_archive.is_none() && !no_archive {
                    return Err(Failure::usage(
                        "--replace drops the existing tenant: pass --archive DIR for a final archive of it \
                         (or set lifecycle.archive_dir), or --no-archive",
                    ));
                }
                confirm(&slug, yes)?;
            }
            let replace_archive = replace_archive.filter(|_| !no_archive);
            let timeout = Duration::from_secs(wait);
            let req = RestoreRequest { slug, input, server, replace, replace_archive, timeout };
            let restored = driver(&ctx).restore(&req).await.map_err(lifecycle_failure)?;
            if let Some(token) = &restored.token {
                eprintln!("tenant token (shown once, store it now): {}", token.expose_secret());
            }
            print_tenant(&restored.tenant, false)?;
            settled_or_fail(&restored.tenant, true, TenantStatus::Ready)
        }
        TenantCommand::Set {
            slug,
            connections,
            statement_timeout,
            idle_in_transaction_timeout,
            max_size,
            defaults,
        } => {
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            let given = LimitOverrides {
                connections,
                statement_timeout_ms: statement_timeout.map(ms),
                idle_in_transaction_timeout_ms: idle_in_transaction_timeout.map(ms),
                max_database_bytes: max_size,
            };
            if given == LimitOverrides::default() && !defaults {
                return Err(Failure::usage(
                    "nothing to set: give --connections, --statement-timeout, --idle-in-transaction-timeout, \
                     --max-size or --defaults",
                ));
            }
            given.check().map_err(Failure::usage)?;
            let current = ctx.catalog.tenant(&slug).await.map_err(Failure::failed)?;
            let kept = if defaults {
                LimitOverrides::default()
            } else {
                LimitOverrides::from_json(&current.limits).map_err(Failure::failed)?
            };
            let tenant =
                lifecycle(&ctx).set_limits(&slug, &given.over(kept)).await.map_err(lifecycle_failure)?;
            println!("limits of {slug}: {}", tenant.limits_applied.unwrap_or(serde_json::Value::Null));
            Ok(())
        }
        TenantCommand::Suspend { slug } => {
            let tenant = lifecycle(&ctx).suspend(&slug).await.map_err(lifecycle_failure)?;
            print_tenant(&tenant, false)
        }
        TenantCommand::Resume { slug } => {
            let tenant = lifecycle(&ctx).resume(&slug).await.map_err(lifecycle_failure)?;
            print_tenant(&tenant, false)
        }
        TenantCommand::Drop { slug, archive, yes, wait } => {
            confirm(&slug, yes)?;
            let tenant = driver(&ctx)
                .drop_tenant(&slug, archive.as_deref(), Duration::from_secs(wait))
                .await
                .map_err(lifecycle_failure)?;
            print_tenant(&tenant, false)?;
            settled_or_fail(&tenant, true, TenantStatus::Deleted)
        }
        TenantCommand::RotatePassword { slug, json } => {
            let details = lifecycle(&ctx).rotate_password(&slug).await.map_err(lifecycle_failure)?;
            if json {
                return output::json(&details);
            }
            println!("{}", details.url);
            Ok(())
        }
        TenantCommand::Connection { slug, json } => {
            let tenant = ctx.catalog.tenant(&slug).await.map_err(Failure::failed)?;
            crate::target::lendable(&tenant, ctx.migrations.latest_version()).map_err(Failure::failed)?;
            let details = TenantTarget::resolve(&ctx.catalog, &ctx.keyring, &tenant)
                .await
                .map_err(Failure::failed)?
                .details(&ctx.settings.pgbouncer);
            if json {
                return output::json(&details);
            }
            println!("{}", details.url);
            Ok(())
        }
        TenantCommand::Move { slug, to, yes, drop_source, online, json } => {
            if online {
                return crate::moves::check_online(&ctx, &slug, &to).await.map_err(move_failure);
            }
            if !yes {
                return Err(Failure::usage(format!(
                    "moving {slug} makes it unavailable while it is copied: pass --yes to go ahead"
                )));
            }
            move_tenant(&ctx, &slug, &to, drop_source, json).await
        }
        TenantCommand::Retry { slug, wait } => {
            let tenant =
                crate::tenants::retry(&ctx.catalog, &slug, &ctx.instance).await.map_err(tenant_failure)?;
            let tenant = match wait {
                Some(secs) => provision_and_wait(&ctx, &tenant, Duration::from_secs(secs)).await?,
                None => tenant,
            };
            print_tenant(&tenant, false)?;
            settled_or_fail(&tenant, wait.is_some(), TenantStatus::Ready)
        }
    }
}

/// Provisions the tenant in this process when no other process holds it (a running daemon
/// usually claims it first; then this waits for the daemon's result).
async fn provision_and_wait(
    ctx: &Context,
    tenant: &TenantRecord,
    timeout: Duration,
) -> Result<TenantRecord, Failure> {
    driver(ctx).drive(tenant, timeout, None).await.map_err(lifecycle_failure)
}

fn driver(ctx: &Context) -> Driver<'_> {
    Driver::new(ctx).with_report(|line| eprintln!("{line}"))
}

fn lifecycle_failure(e: LifecycleError) -> Failure {
    match e {
        LifecycleError::Tenant(t) => tenant_failure(t),
        LifecycleError::Invalid(m) => Failure::usage(m),
        other => Failure::failed(other),
    }
}

fn settled_or_fail(tenant: &TenantRecord, waited: bool, goal: TenantStatus) -> Result<(), Failure> {
    match tenant.status {
        TenantStatus::Error => Err(Failure::failed(format!(
            "tenant {} is in ERROR: {}",
            tenant.slug,
            tenant.last_error.as_deref().unwrap_or("(no reason recorded)")
        ))),
        status if waited && status != goal => Err(Failure::failed(format!(
            "tenant {} is still {status} after the wait{}",
            tenant.slug,
            tenant.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

fn tenant_failure(e: TenantError) -> Failure {
    match e {
        TenantError::Name(_) | TenantError::Invalid(_) => Failure::usage(e),
        other => Failure::failed(other),
    }
}

fn lifecycle(ctx: &Context) -> crate::lifecycle::Lifecycle<'_> {
    crate::lifecycle::Lifecycle::new(ctx, &ctx.instance)
}

async fn dump(ctx: &Context, slug: &str, output: &std::path::Path) -> Result<(), Failure> {
    if output.as_os_str() == "-" {
        // To stdout: into a private temporary file first (removed however this ends).
        let dir = tempfile::Builder::new().prefix("tenantd-dump-").tempdir().map_err(Failure::failed)?;
        let file = dir.path().join(format!("{slug}.dump"));
        let dumped = lifecycle(ctx).dump(slug, &file).await.map_err(lifecycle_failure)?;
        let mut reader = std::fs::File::open(&file).map_err(Failure::failed)?;
        std::io::copy(&mut reader, &mut std::io::stdout().lock()).map_err(Failure::failed)?;
        eprintln!("dumped {slug}: {} bytes in {:.1} s", dumped.bytes, dumped.duration.as_secs_f64());
        return Ok(());
    }
    let dumped = lifecycle(ctx).dump(slug, output).await.map_err(lifecycle_failure)?;
    eprintln!(
        "dumped {slug} to {}: {} bytes in {:.1} s",
        output.display(),
        dumped.bytes,
        dumped.duration.as_secs_f64()
    );
    Ok(())
}

/// Moves a tenant in this process (a daemon resumes it if this process dies).
async fn move_tenant(
    ctx: &Context,
    slug: &str,
    to: &str,
    drop_source: bool,
    json: bool,
) -> Result<(), Failure> {
    let mover = crate::moves::Mover::new(ctx, &ctx.instance);
    let job = mover.start(slug, to, drop_source).await.map_err(move_failure)?;
    eprintln!("moving {slug} to {to} (operation {})", job.op.id);
    let cancel = tokio_util::sync::CancellationToken::new();
    let op = mover.run(job, &cancel).await.map_err(move_failure)?;
    if json {
        output::json(&op)?;
    } else {
        let seconds = op.detail["seconds"].as_f64().unwrap_or_default();
        match op.state.as_str() {
            "succeeded" => println!(
                "{slug} moved to {to} in {seconds:.1} s; source database {}",
                match (&op.kept_database, op.drop_after) {
                    (Some(kept), Some(at)) =>
                        format!("kept as {kept} until {}", at.format("%Y-%m-%d %H:%M UTC")),
                    _ => "dropped".to_owned(),
                }
            ),
            _ => eprintln!("{slug} stays on its server: {}", op.error.as_deref().unwrap_or("move failed")),
        }
    }
    if op.state == "succeeded" {
        Ok(())
    } else {
        Err(Failure::failed(format!("move of {slug} failed: {}", op.error.unwrap_or_default())))
    }
}

fn move_failure(e: crate::moves::MoveError) -> Failure {
    use crate::moves::MoveError;
    match e {
        MoveError::Invalid(_) | MoveError::UnknownServer(_) => Failure::usage(e),
        MoveError::OnlineRefused(missing) => Failure::failed(format!(
            "online move refused; missing:\n  - {}\nmove offline (without --online) or fix these first",
            missing.join("\n  - ")
        )),
        other => Failure::failed(other),
    }
}

/// Asks for the slug on a terminal unless `--yes`; refuses without a terminal.
fn confirm(slug: &str, yes: bool) -> Result<(), Failure> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(format!("refusing to drop {slug} without --yes")));
    }
    eprint!("This drops tenant {slug} and all its data. Type its slug to confirm: ");
    std::io::stderr().flush().map_err(Failure::failed)?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(Failure::failed)?;
    if line.trim() == slug { Ok(()) } else { Err(Failure::usage("not confirmed; nothing was dropped")) }
}
