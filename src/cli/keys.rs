//! `tenantd keys ...`: which master keys the catalog's sealed values use, and re-sealing
//! them all with the current key.

use clap::Subcommand;
use serde::Serialize;

use super::{Context, Failure, output};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Which key ids sealed values use, and whether this process has each key.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-seal every server and tenant password and webhook secret with the current key (safe
    /// to run again).
    Rotate,
}

/// One line of `keys status`.
#[derive(Serialize)]
struct KeyLine {
    key_id: String,
    servers: i64,
    tenants: i64,
    webhooks: i64,
    current: bool,
    configured: bool,
}

pub async fn run(cmd: KeysCommand, ctx: Context) -> Result<(), Failure> {
    match cmd {
        KeysCommand::Status { json } => {
            let usage = ctx.catalog.key_usage().await.map_err(Failure::failed)?;
            let lines: Vec<KeyLine> = usage
                .into_iter()
                .map(|u| KeyLine {
                    current: u.key_id == ctx.keyring.current_id(),
                    configured: ctx.keyring.has_key(&u.key_id),
                    key_id: u.key_id,
                    servers: u.servers,
                    tenants: u.tenants,
                    webhooks: u.webhooks,
                })
                .collect();
            if json {
                output::json(&lines)?;
            } else {
                let rows: Vec<Vec<String>> = lines
                    .iter()
                    .map(|l| {
                        let state = match (l.current, l.configured) {
                            (true, _) => "current",
                            (false, true) => "old: rotate, then drop it",
                            (false, false) => "MISSING: add it to TENANTD_OLD_MASTER_KEYS",
                        };
                        vec![
                            l.key_id.clone(),
                            l.servers.to_string(),
                            l.tenants.to_string(),
                            l.webhooks.to_string(),
                            state.to_owned(),
                        ]
                    })
                    .collect();
                output::table(&["KEY", "SERVERS", "TENANTS", "WEBHOOKS", "STATE"], &rows);
            }
            if lines.iter().any(|l| !l.configured) {
                return Err(Failure::failed("some sealed values use a key this process does not have"));
            }
            Ok(())
        }
        KeysCommand::Rotate => rotate(&ctx).await,
    }
}

/// `keys rotate` (and its older name `server rotate-key`).
pub async fn rotate(ctx: &Context) -> Result<(), Failure> {
    let changed = crate::servers::rotate_keys(&ctx.catalog, &ctx.keyring).await.map_err(Failure::failed)?;
    println!(
        "re-sealed {} server password(s) and {} tenant password(s) (and {} webhook secret(s)) with key {}",
        changed.servers,
        changed.tenants,
        changed.webhooks,
        ctx.keyring.current_id()
    );
    Ok(())
}
