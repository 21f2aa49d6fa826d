//! `tenantd backup ...`: the backups of `backups.dir`.

use crate::catalog::events::EventKind;
use clap::Subcommand;

use super::{Context, Failure, output};
use crate::backups::{self, Backups};
use crate::catalog::tenants::{TenantRecord, TenantStatus};

/// `tenantd backup` subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// A tenant's backups, newest first, and its latest backup failure if newer.
    List {
        /// Slug.
        slug: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Back up tenants now (and prune by retention), like the daily run does.
    Run {
        /// Tenants to back up (or --all).
        slugs: Vec<String>,
        /// Every READY or SUSPENDED tenant.
        #[arg(long, conflicts_with = "slugs")]
        all: bool,
    },
}

pub async fn run(cmd: BackupCommand, ctx: Context) -> Result<(), Failure> {
    let dir = ctx
        .settings
        .backups
        .dir
        .clone()
        .ok_or_else(|| Failure::usage("backups.dir (TENANTD_BACKUPS_DIR) is not set"))?;
    match cmd {
        BackupCommand::List { slug, json } => {
            let tenant = ctx.catalog.tenant(&slug).await.map_err(Failure::failed)?;
            let list = backups::list(&dir, &slug, tenant.id).map_err(Failure::failed)?;
            let failure = ctx
                .catalog
                .latest_event(tenant.id, &[EventKind::BackupCreated, EventKind::BackupFailed])
                .await
                .map_err(Failure::failed)?
                .filter(|e| e.kind == EventKind::BackupFailed.as_str());
            if let Some(failure) = &failure {
                eprintln!(
                    "warning: the latest backup of {slug} failed at {}: {}",
                    failure.at.format("%Y-%m-%d %H:%M:%S UTC"),
                    failure.detail["error"].as_str().unwrap_or("(no reason recorded)")
                );
            }
            if json {
                return output::json(&list);
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|b| {
                    vec![
                        b.taken_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        b.bytes.to_string(),
                        b.path.display().to_string(),
                    ]
                })
                .collect();
            output::table(&["TAKEN (UTC)", "BYTES", "FILE"], &rows);
            Ok(())
        }
        BackupCommand::Run { slugs, all } => {
            let tenants = select(&ctx, &slugs, all).await?;
            let backups = Backups::new(&ctx, &ctx.instance);
            let mut failed = 0;
            for tenant in &tenants {
                match backups.one(tenant).await {
                    Ok(b) => println!("{}  ok  {} bytes  {}", tenant.slug, b.bytes, b.path.display()),
                    Err(e) => {
                        failed += 1;
                        println!("{}  FAILED  {e}", tenant.slug);
                    }
                }
            }
            if failed > 0 {
                return Err(Failure::failed(format!("{failed} of {} backups failed", tenants.len())));
            }
            Ok(())
        }
    }
}

/// The named tenants (each must exist and be READY or SUSPENDED), or all of those.
async fn select(ctx: &Context, slugs: &[String], all: bool) -> Result<Vec<TenantRecord>, Failure> {
    if all {
        return ctx.catalog.tenants_due_for_backup(chrono::Utc::now()).await.map_err(Failure::failed);
    }
    if slugs.is_empty() {
        return Err(Failure::usage("name the tenants to back up, or pass --all"));
    }
    let mut tenants = Vec::new();
    for slug in slugs {
        let t = ctx.catalog.tenant(slug).await.map_err(Failure::failed)?;
        if !matches!(t.status, TenantStatus::Ready | TenantStatus::Suspended) {
            return Err(Failure::failed(format!(
                "tenant {slug} is {}; only READY or SUSPENDED tenants are backed up",
                t.status
            )));
        }
        tenants.push(t);
    }
    Ok(tenants)
}
