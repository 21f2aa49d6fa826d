//! `tenantd migrate`: upgrade tenant databases to this build's migrations.

use crate::catalog::upgrades::ResultKind;
use std::io::IsTerminal;

use clap::Args;

use super::{Context, Failure, output};
use crate::upgrade::{Options, Outcome, Progress, Selection, Summary, Upgrader};

/// Arguments of `tenantd migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Tenants to upgrade (or --all).
    slugs: Vec<String>,
    /// Every READY tenant.
    #[arg(long, conflicts_with = "slugs")]
    all: bool,
    /// Only tenants on this server.
    #[arg(long)]
    server: Option<String>,
    /// Tenants upgraded at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Show the plan, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Upgrade this many tenants first and stop if any of them fails.
    #[arg(long, default_value_t = 0)]
    canary: usize,
    /// Stop starting new tenants after this many failures.
    #[arg(long)]
    max_failures: Option<usize>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: MigrateArgs, ctx: Context) -> Result<(), Failure> {
    if args.slugs.is_empty() && !args.all {
        return Err(Failure::usage("name the tenants to upgrade, or pass --all"));
    }
    let options = Options {
        concurrency: args.concurrency,
        canary: args.canary,
        max_failures: args.max_failures,
        dry_run: args.dry_run,
    };
    options.validate().map_err(Failure::usage)?;
    let selection = Selection { slugs: args.slugs, all: args.all, server: args.server };
    let upgrader = Upgrader::new(&ctx, &ctx.instance);
    let bar = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} {per_sec} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let progress = |p: Progress| match &bar {
        Some(bar) => {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            bar.set_message(format!("failed {}", p.failed));
        }
        None if !args.json => eprintln!("migrate: {}/{} done, {} failed", p.done, p.total, p.failed),
        None => {}
    };
    let summary = upgrader.run(&selection, &options, &progress).await.map_err(Failure::failed)?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if args.json {
        output::json(&summary)?;
    } else {
        print_summary(&summary, args.dry_run);
    }
    conclude(&summary, args.dry_run)
}

fn print_summary(summary: &Summary, dry_run: bool) {
    let plan = &summary.plan;
    let behind: Vec<_> = plan.behind().collect();
    println!(
        "target version {}: {} tenant(s) behind, {} current, {} ahead",
        plan.target_version,
        behind.len(),
        plan.tenants.iter().filter(|t| t.pending.is_empty() && !t.ahead).count(),
        plan.tenants.iter().filter(|t| t.ahead).count()
    );
    if dry_run {
        for t in behind {
            let names: Vec<String> =
                t.pending.iter().map(|m| format!("V{}__{}", m.version, m.name)).collect();
            println!("  {} at {}: would apply {}", t.slug, t.from_version, names.join(", "));
        }
    }
    for t in plan.tenants.iter().filter(|t| t.ahead) {
        println!("  {} is at version {}, newer than this build: left alone", t.slug, t.from_version);
    }
    for slug in &plan.not_found {
        println!("  {slug}: not found (or not READY)");
    }
    if dry_run {
        return;
    }
    let count = |kind: ResultKind| summary.results.iter().filter(|(_, o)| o.kind() == kind).count();
    println!(
        "upgraded {}, already current {}, failed {}, skipped {}, not started {}",
        count(ResultKind::Upgraded),
        count(ResultKind::Current),
        count(ResultKind::Failed),
        count(ResultKind::Skipped),
        count(ResultKind::NotStarted)
    );
    for (slug, error) in summary.failures() {
        println!("  FAILED {slug}: {error}");
    }
    for (slug, outcome) in &summary.results {
        if let Outcome::Skipped { reason } = outcome {
            println!("  skipped {slug}: {reason}");
        }
    }
    if let Some(reason) = &summary.stopped {
        println!("run stopped: {reason}");
    }
    if let Some(run) = summary.run {
        println!("run {run} (GET /v1/migrations/{run})");
    }
}

fn conclude(summary: &Summary, dry_run: bool) -> Result<(), Failure> {
    if !summary.plan.not_found.is_empty() {
        return Err(Failure::failed(format!("not found: {}", summary.plan.not_found.join(", "))));
    }
    if dry_run || summary.succeeded() {
        return Ok(());
    }
    let failures: Vec<String> = summary.failures().iter().map(|(s, e)| format!("{s} ({e})")).collect();
    Err(Failure::failed(format!(
        "upgrade incomplete{}{}",
        summary.stopped.as_deref().map(|r| format!(": {r}")).unwrap_or_default(),
        if failures.is_empty() { String::new() } else { format!("; failed: {}", failures.join("; ")) }
    )))
}
