//! `tenantd tenant ...`.

use std::time::{Duration, Instant};

use clap::Subcommand;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

use super::{Context, Failure, output};
use crate::catalog::tenants::{Claim, TenantFilter, TenantRecord, TenantStatus};
use crate::provisioner::Provisioner;
use crate::tenants::{CreateTenant, TenantError};
use crate::workers::{Outcome, run_claimed};

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
            settled_or_fail(&tenant, wait.is_some())
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
                let filter = TenantFilter { status, server: server.clone(), after, limit: 1000 };
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
        TenantCommand::Connection { slug, json } => {
            let tenant = ctx.catalog.tenant(&slug).await.map_err(Failure::failed)?;
            if tenant.status != TenantStatus::Ready {
                return Err(Failure::failed(format!("tenant {slug} is {}, not READY", tenant.status)));
            }
            let server_name = tenant.server.as_deref().unwrap_or_default();
            let server = ctx.catalog.server(server_name).await.map_err(Failure::failed)?;
            let details =
                crate::api::lending::details(&tenant, &server, &ctx.keyring).map_err(Failure::failed)?;
            if json {
                return output::json(&details);
            }
            println!("{}", details.url);
            Ok(())
        }
        TenantCommand::Retry { slug, wait } => {
            let actor = super::actor();
            let tenant = crate::tenants::retry(&ctx.catalog, &slug, &actor).await.map_err(tenant_failure)?;
            let tenant = match wait {
                Some(secs) => provision_and_wait(&ctx, &tenant, Duration::from_secs(secs)).await?,
                None => tenant,
            };
            print_tenant(&tenant, false)?;
            settled_or_fail(&tenant, wait.is_some())
        }
    }
}

/// Provisions the tenant in this process when no daemon holds it, else waits for the daemon.
/// Provisions the tenant in this process when no other process holds it (a running daemon
/// usually claims it first; then this waits for the daemon's result).
async fn provision_and_wait(
    ctx: &Context,
    tenant: &TenantRecord,
    timeout: Duration,
) -> Result<TenantRecord, Failure> {
    let actor = super::actor();
    let admin_pools = crate::servers::AdminPools::new(1);
    let migrations = crate::tenant_migrations::MigrationSet::embedded();
    let cancel = CancellationToken::new();
    let deadline = Instant::now() + timeout;
    loop {
        let current = ctx.catalog.tenant(&tenant.slug).await.map_err(Failure::failed)?;
        if current.status.is_settled() || Instant::now() >= deadline {
            return Ok(current);
        }
        let lease = ctx.settings.workers.lease;
        let owner = crate::workers::claim_owner(&actor);
        let claimed_at = Instant::now();
        let claim =
            ctx.catalog.claim_tenant(&owner, lease, Some(tenant.id)).await.map_err(Failure::failed)?;
        let pause = match claim {
            Claim::Claimed(claimed) => {
                let p = Provisioner {
                    catalog: &ctx.catalog,
                    keyring: &ctx.keyring,
                    settings: &ctx.settings,
                    actor: &owner,
                    faults: None,
                    admin_pools: &admin_pools,
                    migrations: &migrations,
                };
                match run_claimed(&p, &claimed, claimed_at, &cancel).await {
                    Outcome::Waiting(reason) => {
                        eprintln!("waiting: {reason}");
                        ctx.settings.workers.poll_interval
                    }
                    Outcome::Retrying(error) => {
                        eprintln!("attempt failed, will retry: {error}");
                        Duration::ZERO
                    }
                    _ => Duration::ZERO,
                }
            }
            // Held by a daemon, or scheduled for later: look again soon.
            Claim::Idle(next) => next.unwrap_or(Duration::from_millis(200)).min(Duration::from_millis(200)),
        };
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

fn settled_or_fail(tenant: &TenantRecord, waited: bool) -> Result<(), Failure> {
    match tenant.status {
        TenantStatus::Error => Err(Failure::failed(format!(
            "tenant {} is in ERROR: {}",
            tenant.slug,
            tenant.last_error.as_deref().unwrap_or("(no reason recorded)")
        ))),
        status if waited && status != TenantStatus::Ready => Err(Failure::failed(format!(
            "tenant {} is still {status} after the wait{}",
            tenant.slug,
            tenant.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

fn parse_labels(labels: &[String]) -> Result<serde_json::Value, Failure> {
    let mut map = serde_json::Map::new();
    for label in labels {
        let (key, value) = label
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--label {label:?} is not KEY=VALUE")))?;
        map.insert(key.to_owned(), serde_json::Value::String(value.to_owned()));
    }
    Ok(serde_json::Value::Object(map))
}

fn tenant_failure(e: TenantError) -> Failure {
    match e {
        TenantError::Name(_) | TenantError::Invalid(_) => Failure::usage(e),
        other => Failure::failed(other),
    }
}

fn print_tenant(tenant: &TenantRecord, json: bool) -> Result<(), Failure> {
    if json {
        return output::json(tenant);
    }
    print_tenants(std::slice::from_ref(tenant));
    Ok(())
}

fn print_tenants(tenants: &[TenantRecord]) {
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            vec![
                t.slug.clone(),
                t.status.to_string(),
                output::opt(t.server.clone()),
                output::opt(t.database_name.clone()),
                t.schema_version.to_string(),
                t.attempts.to_string(),
                output::opt(t.last_error.clone()),
            ]
        })
        .collect();
    output::table(&["SLUG", "STATUS", "SERVER", "DATABASE", "VERSION", "ATTEMPTS", "LAST_ERROR"], &rows);
}

fn print_details(t: &TenantRecord) {
    let fields = [
        ("slug", t.slug.clone()),
        ("id", t.id.to_string()),
        ("status", t.status.to_string()),
        ("server", output::opt(t.server.clone())),
        ("database", output::opt(t.database_name.clone())),
        ("role", output::opt(t.role_name.clone())),
        ("schema_version", t.schema_version.to_string()),
        ("attempts", t.attempts.to_string()),
        ("next_attempt_at", t.next_attempt_at.to_rfc3339()),
        ("last_error", output::opt(t.last_error.clone())),
        ("labels", t.labels.to_string()),
        ("lease", output::opt(t.lease_owner.clone())),
        ("created_at", t.created_at.to_rfc3339()),
        ("ready_at", output::opt(t.ready_at.map(|r| r.to_rfc3339()))),
    ];
    for (name, value) in fields {
        println!("{name:<16} {value}");
    }
}
