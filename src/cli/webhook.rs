//! `tenantd webhook ...`: endpoints that receive tenant events, and their deliveries.

use clap::Subcommand;
use secrecy::ExposeSecret;
use uuid::Uuid;

use super::{Context, Failure, output};
use crate::catalog::webhooks::WebhookRecord;
use crate::webhooks::{AddWebhook, WebhookError};

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Add an endpoint; prints its signing secret (whsec_...) once.
    Add {
        /// http(s) URL deliveries are POSTed to.
        url: String,
        /// Event type to receive (repeat, or comma-separated): tenant.ready, tenant.error,
        /// tenant.suspended, tenant.resumed, tenant.deleted, tenant.moved, upgrade.failed, backup.failed.
        #[arg(long = "event", required = true, value_delimiter = ',')]
        events: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List endpoints.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove an endpoint (its pending deliveries are dropped).
    Remove {
        /// Webhook id.
        id: Uuid,
    },
    /// An endpoint's latest deliveries, newest first.
    Deliveries {
        /// Webhook id.
        id: Uuid,
        /// Most deliveries shown.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: WebhookCommand, ctx: Context) -> Result<(), Failure> {
    match cmd {
        WebhookCommand::Add { url, events, json } => {
            let added = crate::webhooks::add(&ctx, &AddWebhook { url, events }).await.map_err(failure)?;
            if json {
                return output::json(&added);
            }
            println!("webhook {} added for {}", added.webhook.id, added.webhook.events.join(", "));
            println!("secret (shown once): {}", added.secret.expose_secret());
            Ok(())
        }
        WebhookCommand::List { json } => {
            let hooks = crate::webhooks::list(&ctx.catalog).await.map_err(failure)?;
            if json {
                return output::json(&hooks);
            }
            print_webhooks(&hooks);
            Ok(())
        }
        WebhookCommand::Remove { id } => {
            crate::webhooks::remove(&ctx.catalog, id).await.map_err(failure)?;
            println!("webhook {id} removed");
            Ok(())
        }
        WebhookCommand::Deliveries { id, limit, json } => {
            let deliveries = crate::webhooks::deliveries(&ctx.catalog, id, limit).await.map_err(failure)?;
            if json {
                return output::json(&deliveries);
            }
            let rows: Vec<Vec<String>> = deliveries
                .iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        d.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        d.event_type.clone(),
                        d.status.clone(),
                        d.attempts.to_string(),
                        output::opt(d.last_status),
                        output::opt(d.last_error.clone()),
                    ]
                })
                .collect();
            output::table(&["ID", "CREATED", "EVENT", "STATUS", "ATTEMPTS", "HTTP", "LAST_ERROR"], &rows);
            Ok(())
        }
    }
}

fn failure(e: WebhookError) -> Failure {
    match e {
        WebhookError::Invalid(_) | WebhookError::Refused(_) => Failure::usage(e),
        other => Failure::failed(other),
    }
}

fn print_webhooks(hooks: &[WebhookRecord]) {
    let rows: Vec<Vec<String>> = hooks
        .iter()
        .map(|h| {
            let state = if h.enabled {
                "enabled".to_owned()
            } else {
                format!("disabled: {}", output::opt(h.disabled_reason.clone()))
            };
            vec![h.id.to_string(), h.url.clone(), h.events.join(","), state]
        })
        .collect();
    output::table(&["ID", "URL", "EVENTS", "STATE"], &rows);
}
