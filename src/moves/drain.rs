//! Draining a server: status `draining` (placement skips it from then on), then every tenant
//! on it moves to another eligible server chosen by the placement rules, N at a time. Run
//! again, a drain goes on with the tenants still there: a move cut short (its process killed)
//! is resumed from its recorded step, one another process is running is waited for.

use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{MoveError, Mover};
use crate::catalog::CatalogError;
use crate::catalog::servers::{ServerPatch, ServerStatus};
use crate::catalog::tenants::{TenantRecord, TenantStatus};
use crate::core::Core;

/// The outcome of a drain.
#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    /// The drain's operation.
    pub operation: Uuid,
    /// Tenants moved, with their new server.
    pub moved: Vec<(String, String)>,
    /// Tenants not moved, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Marks `server` draining and records the drain; the moves are made by [`drain`].
pub async fn start_drain(core: &Core, server: &str, actor: &str) -> Result<Uuid, MoveError> {
    let patch = ServerPatch { status: Some(ServerStatus::Draining), ..ServerPatch::default() };
    match core.catalog.update_server(server, &patch).await {
        Ok(_) => {}
        Err(CatalogError::NotFound(_)) => return Err(MoveError::UnknownServer(server.to_owned())),
        Err(e) => return Err(e.into()),
    }
    Ok(core.catalog.start_drain(server, actor).await?.id)
}

/// Moves every tenant off `server` (drain `operation`), `concurrency` at a time; `report` is
/// told of each tenant as it ends. The drain fails when any tenant could not be moved.
pub async fn drain(
    core: &Core,
    actor: &str,
    server: &str,
    operation: Uuid,
    concurrency: usize,
    cancel: &CancellationToken,
    report: &(dyn Fn(&str, Result<&str, &str>) + Sync),
) -> Result<DrainReport, MoveError> {
    let tenants = tenants_on(core, server).await?;
    let mover = Mover::new(core, actor);
    let outcomes: Vec<(String, Result<String, String>)> = futures::stream::iter(tenants)
        .map(|t| {
            let mover = &mover;
            async move {
                let result = move_one(core, mover, server, &t, cancel).await;
                report(&t.slug, result.as_deref().map_err(|e| e.as_str()));
                (t.slug, result)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut summary = DrainReport { operation, moved: Vec::new(), failed: Vec::new() };
    for (slug, outcome) in outcomes {
        match outcome {
            Ok(to) => summary.moved.push((slug, to)),
            Err(why) => summary.failed.push((slug, why)),
        }
    }
    let ok = summary.failed.is_empty();
    let error = (!ok).then(|| format!("{} tenant(s) not moved", summary.failed.len()));
    let detail = json!({ "moved": summary.moved, "failed": summary.failed });
    core.catalog.finish_drain(operation, ok, error.as_deref(), &detail).await?;
    tracing::info!(server, moved = summary.moved.len(), failed = summary.failed.len(), "drain finished");
    Ok(summary)
}

async fn tenants_on(core: &Core, server: &str) -> Result<Vec<TenantRecord>, MoveError> {
    Ok(core.catalog.all_tenants(None, Some(server)).await?)
}

/// Moves one tenant to the server placement chooses now; the new server's name. A tenant
/// found MOVING (a drain or a move cut short) has its move resumed here, or, while another
/// process holds it, is waited for (up to [`WAIT_FOR_OTHERS`]).
async fn move_one(
    core: &Core,
    mover: &Mover<'_>,
    drained: &str,
    t: &TenantRecord,
    cancel: &CancellationToken,
) -> Result<String, String> {
    let mut t = t.clone();
    if t.status == TenantStatus::Moving {
        let deadline = tokio::time::Instant::now() + WAIT_FOR_OTHERS;
        loop {
            if let Some(job) = mover.claim_abandoned(&t.slug).await.map_err(|e| e.to_string())? {
                let target = job.op.target.clone().unwrap_or_default();
                tracing::info!(tenant = %t.slug, to = %target, "drain: resuming a move cut short");
                return outcome(mover.run(job, cancel).await.map_err(|e| e.to_string())?, target);
            }
            t = core.catalog.tenant(&t.slug).await.map_err(|e| e.to_string())?;
            if t.status != TenantStatus::Moving {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("still MOVING after {} s in another process", WAIT_FOR_OTHERS.as_secs()));
            }
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                () = cancel.cancelled() => return Err(MoveError::Interrupted.to_string()),
            }
        }
        let here = t.server.as_deref().unwrap_or_default();
        if t.status == TenantStatus::Ready && here != drained {
            return Ok(here.to_owned());
        }
    }
    if t.status != TenantStatus::Ready {
        return Err(format!("{} (only READY tenants are moved)", t.status));
    }
    let loads = core.catalog.server_loads().await.map_err(|e| e.to_string())?;
    let to =
        crate::placement::choose(&loads, None, t.requested_region.as_deref()).map_err(|e| e.to_string())?;
    let job = mover.start(&t.slug, &to, false).await.map_err(|e| e.to_string())?;
    outcome(mover.run(job, cancel).await.map_err(|e| e.to_string())?, to)
}

/// How long a drain waits for a tenant another process is moving.
const WAIT_FOR_OTHERS: std::time::Duration = std::time::Duration::from_secs(30 * 60);

fn outcome(op: crate::catalog::operations::Operation, to: String) -> Result<String, String> {
    if op.state == "succeeded" {
        Ok(to)
    } else {
        Err(op.error.unwrap_or_else(|| format!("move {}", op.state)))
    }
}
