//! `/v1/migrations` (admin): upgrade runs for automation.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::Admin;
use super::error::{ApiError, Json, Path};
use super::openapi::ErrorBody;
use crate::app::App;
use crate::catalog::upgrades::{ResultKind, ResultRecord, RunRecord};
use crate::upgrade::{Options, Plan, Selection};

/// A planned run: its id when it started (absent for a dry run), and its plan.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunPlanned {
    /// Id for `GET /v1/migrations/{id}` (absent for a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// What the run does.
    pub plan: Plan,
}

/// A run with its progress and per-tenant results.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunShown {
    /// The run.
    pub run: RunRecord,
    /// `total`, `done`, and a count per outcome (`upgraded`, `failed`...).
    pub progress: BTreeMap<String, i64>,
    /// One per tenant attempted so far.
    pub results: Vec<ResultRecord>,
}

/// Body of `POST /v1/migrations`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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

/// A run with how many of its tenants are done.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    /// The run.
    #[serde(flatten)]
    pub run: RunRecord,
    /// Tenants with a final outcome so far (of `total`).
    pub done: i64,
}

/// The latest runs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Runs {
    /// Newest first.
    pub runs: Vec<RunSummary>,
}

/// `GET /v1/migrations`: the latest 50 runs, newest first, with their progress.
#[utoipa::path(get, path = "/v1/migrations", tag = "migrations", security(("admin" = [])),
    responses((status = 200, description = "The latest 50 runs, newest first", body = Runs)))]
pub async fn list(_: Admin, State(app): State<Arc<App>>) -> Result<Json<Runs>, ApiError> {
    let runs = app.catalog.runs(50).await?;
    Ok(Json(Runs { runs: runs.into_iter().map(|(run, done)| RunSummary { run, done }).collect() }))
}

/// `POST /v1/migrations {tenants?|all, server?, concurrency?, canary?, max_failures?, dry_run?}`:
/// 202 with the run id and plan (the run goes on in the background); 200 with the plan for a
/// dry run.
#[utoipa::path(post, path = "/v1/migrations", tag = "migrations", security(("admin" = [])),
    request_body = StartRun,
    responses(
        (status = 202, description = "Started; it goes on in the background", body = RunPlanned),
        (status = 200, description = "The plan of a dry run", body = RunPlanned),
    ))]
pub async fn start(
    _: Admin,
    State(app): State<Arc<App>>,
    Json(req): Json<StartRun>,
) -> Result<(StatusCode, Json<RunPlanned>), ApiError> {
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
        return Ok((StatusCode::OK, Json(RunPlanned { id: None, plan })));
    }
    let started = crate::tasks::upgrade::spawn_in_daemon(app.clone(), selection, options).await?;
    Ok((StatusCode::ACCEPTED, Json(RunPlanned { id: Some(started.run), plan: started.plan })))
}

/// `GET /v1/migrations/{id}`: the run, its progress and per-tenant results.
#[utoipa::path(get, path = "/v1/migrations/{id}", tag = "migrations", security(("admin" = [])),
    params(("id" = String, Path, format = Uuid, description = "Run id")),
    responses(
        (status = 200, description = "The run", body = RunShown),
        (status = 404, description = "No such run", body = ErrorBody),
    ))]
pub async fn show(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Json<RunShown>, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::bad_request("invalid_path", "run id must be a UUID"))?;
    let (run, results) = app.catalog.run(id).await?;
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let mut progress = BTreeMap::new();
    progress.insert("total".to_owned(), i64::from(run.total));
    progress.insert("done".to_owned(), count(results.iter().filter(|r| r.outcome.is_done()).count()));
    for kind in ResultKind::ALL {
        progress
            .insert(kind.as_str().to_owned(), count(results.iter().filter(|r| r.outcome == kind).count()));
    }
    Ok(Json(RunShown { run, progress, results }))
}
