//! `/v1/migrations` (admin): upgrade runs for automation.

use crate::catalog::upgrades::ResultKind;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::Admin;
use super::error::{ApiError, Json, Path};
use crate::app::App;
use crate::upgrade::{Options, Selection};

/// Body of `POST /v1/migrations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// These tenants…
    #[serde(default)]
    tenants: Vec<String>,
    /// …or all READY tenants.
    #[serde(default)]
    all: bool,
    /// Only on this server.
    #[serde(default)]
    server: Option<String>,
    /// Tenants at once (default 4).
    #[serde(default)]
    concurrency: Option<usize>,
    /// Canary size (default 0).
    #[serde(default)]
    canary: Option<usize>,
    /// Stop after this many failures.
    #[serde(default)]
    max_failures: Option<usize>,
    /// Plan only.
    #[serde(default)]
    dry_run: bool,
}

/// `GET /v1/migrations`: the latest 50 runs, newest first, with their progress.
pub async fn list(_: Admin, State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let runs = app.catalog.runs(50).await?;
    let runs: Vec<Value> = runs
        .into_iter()
        .map(|(run, done)| {
            let mut value = json!(run);
            value["done"] = json!(done);
            value
        })
        .collect();
    Ok(Json(json!({ "runs": runs })))
}

/// `POST /v1/migrations {tenants?|all, server?, concurrency?, canary?, max_failures?, dry_run?}`:
/// 202 with the run id and plan (the run goes on in the background); 200 with the plan for a
/// dry run.
pub async fn start(
    _: Admin,
    State(app): State<Arc<App>>,
    Json(req): Json<StartRun>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    if req.all != req.tenants.is_empty() {
        return Err(ApiError::bad_request("invalid", "give either \"tenants\": [...] or \"all\": true"));
    }
    let options = Options {
        concurrency: req.concurrency.unwrap_or(4),
        canary: req.canary.unwrap_or(0),
        max_failures: req.max_failures,
        dry_run: req.dry_run,
    };
    options.validate().map_err(|m| ApiError::bad_request("invalid", m.to_string()))?;
    let selection = Selection { slugs: req.tenants, all: req.all, server: req.server };
    if options.dry_run {
        let plan = crate::upgrade::plan(&app.catalog, &app.migrations, &selection).await?;
        return Ok((StatusCode::OK, Json(json!({ "plan": plan }))));
    }
    let started = crate::tasks::upgrade::spawn_in_daemon(app.clone(), selection, options).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": started.run, "plan": started.plan }))))
}

/// `GET /v1/migrations/{id}`: the run, its progress and per-tenant results.
pub async fn show(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::bad_request("invalid_path", "run id must be a UUID"))?;
    let (run, results) = app.catalog.run(id).await?;
    let mut progress = serde_json::Map::new();
    progress.insert("total".into(), json!(run.total));
    progress.insert("done".into(), json!(results.iter().filter(|r| r.outcome.is_done()).count()));
    for kind in ResultKind::ALL {
        progress.insert(kind.as_str().into(), json!(results.iter().filter(|r| r.outcome == kind).count()));
    }
    Ok(Json(json!({ "run": run, "progress": progress, "results": results })))
}
