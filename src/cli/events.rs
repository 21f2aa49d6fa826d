//! `tenantd events`: the audit trail of every tenant (what `GET /v1/events` serves), read
//! from the catalog; `--follow` keeps polling for new events.

use std::time::Duration;

use clap::Args;

use super::{Context, Failure, output};
use crate::catalog::events::{EventKind, FeedEvent, FeedFilter};

/// How often `--follow` asks the catalog for new events.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events as they are recorded (Ctrl-C stops).
    #[arg(long, short = 'f')]
    follow: bool,
    /// One JSON object per line (id, at, tenant, kind, detail, actor).
    #[arg(long)]
    json: bool,
    /// Only this tenant's events.
    #[arg(long, value_name = "SLUG")]
    tenant: Option<String>,
    /// Only events of this kind (`ready`, `error`, `step.migrated`...).
    #[arg(long, value_name = "KIND")]
    kind: Option<String>,
    /// The events after this id, oldest first (default: the latest --limit events).
    #[arg(long, value_name = "ID")]
    after: Option<i64>,
    /// At most this many events (before following).
    #[arg(long, default_value_t = 50, value_name = "N")]
    limit: i64,
}

pub async fn run(args: EventsArgs, ctx: Context) -> Result<(), Failure> {
    if !(1..=10_000).contains(&args.limit) {
        return Err(Failure::usage("--limit must be between 1 and 10000"));
    }
    let kind = args
        .kind
        .as_deref()
        .map(|k| {
            EventKind::parse(k).ok_or_else(|| {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                Failure::usage(format!("unknown kind {k:?}; one of {}", known.join(", ")))
            })
        })
        .transpose()?;
    let tenant = match &args.tenant {
        Some(slug) => Some(ctx.catalog.tenant(slug).await.map_err(Failure::failed)?.id),
        None => None,
    };
    let mut filter = FeedFilter {
        after: args.after.unwrap_or(0),
        limit: args.limit,
        kind,
        tenant,
        newest: args.after.is_none(),
    };
    let events = ctx.catalog.event_feed(&filter).await.map_err(Failure::failed)?;
    if !args.json {
        println!("{:<8} {:<27} {:<20} {:<24} {:<20} DETAIL", "ID", "AT", "TENANT", "KIND", "ACTOR");
    }
    let mut cursor = filter.after;
    print(&events, args.json, &mut cursor)?;
    if !args.follow {
        return Ok(());
    }
    // Following: from the newest event printed (or the newest there is), page by page.
    if events.is_empty() && args.after.is_none() {
        let newest = FeedFilter { limit: 1, ..filter.clone() };
        cursor = ctx.catalog.event_feed(&newest).await.map_err(Failure::failed)?.last().map_or(0, |e| e.id);
    }
    filter.newest = false;
    filter.limit = 1000;
    loop {
        filter.after = cursor;
        let events = ctx.catalog.event_feed(&filter).await.map_err(Failure::failed)?;
        let full = events.len() as i64 == filter.limit;
        print(&events, args.json, &mut cursor)?;
        if !full {
            tokio::time::sleep(FOLLOW_INTERVAL).await;
        }
    }
}

fn print(events: &[FeedEvent], json: bool, cursor: &mut i64) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for e in events {
        if json {
            output::json_line(e)?;
        } else {
            let at = e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let detail = if e.detail.as_object().is_some_and(|o| o.is_empty()) {
                String::new()
            } else {
                e.detail.to_string()
            };
            writeln!(out, "{:<8} {:<27} {:<20} {:<24} {:<20} {detail}", e.id, at, e.tenant, e.kind, e.actor)
                .map_err(Failure::failed)?;
        }
        *cursor = e.id;
    }
    out.flush().map_err(Failure::failed)
}
