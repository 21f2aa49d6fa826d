//! `tenantd reconcile`: the catalog compared with every server, now, in this process.

use super::{Context, Failure, output};
use crate::reconcile::{self, Options, Report};

/// Arguments of `tenantd reconcile`.
#[derive(Debug, clap::Args)]
pub struct ReconcileArgs {
    /// Make the safe repairs: lockdown, LOGIN, schema_version, stale staging databases, ERROR
    /// for a READY tenant whose database or role is gone.
    #[arg(long)]
    repair: bool,
    /// Drop orphans: databases and roles with tenantd's marker that no live tenant owns (a
    /// database may hold data: needs --yes).
    #[arg(long)]
    drop_orphans: bool,
    /// Confirms --drop-orphans.
    #[arg(long)]
    yes: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs it. Exit code 1 when a server could not be read or a repair failed; drift alone is
/// not a failure (the report and `--json` say what differs).
pub async fn run(args: ReconcileArgs, ctx: Context) -> Result<(), Failure> {
    if args.drop_orphans && !args.yes {
        return Err(Failure::usage(
            "--drop-orphans drops databases that may hold data: run `tenantd reconcile` first to see \
             them, then add --yes",
        ));
    }
    let options = Options { repair: args.repair, drop_orphans: args.drop_orphans };
    let report = reconcile::run(&ctx, &ctx.instance, options).await.map_err(Failure::failed)?;
    if args.json {
        output::json(&report)?;
    } else {
        print(&report);
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::failed(format!("{} problem(s): {}", report.errors.len(), report.errors.join("; "))))
    }
}

fn print(report: &Report) {
    if report.findings.is_empty() {
        println!(
            "no drift: {} server(s), {} tenant(s) compared",
            report.servers_checked, report.tenants_checked
        );
    } else {
        let rows: Vec<Vec<String>> = report
            .findings
            .iter()
            .map(|f| {
                vec![
                    f.kind.to_string(),
                    output::opt(f.tenant.as_deref()),
                    f.server.clone(),
                    f.object.clone(),
                    f.outcome.clone(),
                ]
            })
            .collect();
        output::table(&["KIND", "TENANT", "SERVER", "OBJECT", "OUTCOME"], &rows);
        println!();
        for f in &report.findings {
            println!("{} {} on {}: {}", f.kind, f.object, f.server, f.problem);
            println!("    repair: {}", f.repair);
        }
        println!(
            "\n{} finding(s) on {} server(s), {} tenant(s) compared",
            report.findings.len(),
            report.servers_checked,
            report.tenants_checked
        );
    }
    for e in &report.errors {
        eprintln!("error: {e}");
    }
}
