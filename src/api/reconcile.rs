//! The last reconcile report over HTTP (admin).

use std::sync::Arc;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::auth::Admin;
use super::error::{ApiError, Json};
use super::openapi::ErrorBody;
use crate::app::App;
use crate::reconcile::Report;

/// A finished reconcile run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReconcileRun {
    /// Run number (increasing).
    pub id: i64,
    /// Who ran it: a daemon instance or `cli:<user>@<host>:<pid>`.
    pub actor: String,
    /// Whether safe repairs were made.
    pub repair: bool,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub finished_at: DateTime<Utc>,
    /// What it found and did.
    pub report: Report,
}

/// `GET /v1/reconcile`: the last finished reconcile run (CLI or daemon) and its report:
/// findings with kind, tenant, server, object, problem, repair and outcome; errors; counts per
/// kind. 404 `not_found` until a first run has finished.
#[utoipa::path(get, path = "/v1/reconcile", tag = "servers", security(("admin" = [])),
    responses(
        (status = 200, description = "The last reconcile run and its report", body = ReconcileRun),
        (status = 404, description = "No reconcile has run yet", body = ErrorBody),
    ))]
pub async fn last(_: Admin, State(app): State<Arc<App>>) -> Result<Json<ReconcileRun>, ApiError> {
    let Some(run) = app.catalog.last_reconcile().await? else {
        return Err(ApiError::not_found(
            "no reconcile has run yet: run `tenantd reconcile`, or wait for reconcile.interval",
        ));
    };
    let report: Report = serde_json::from_value(run.report)
        .map_err(|e| ApiError::internal(format!("stored reconcile report {} does not read: {e}", run.id)))?;
    Ok(Json(ReconcileRun {
        id: run.id,
        actor: run.actor,
        repair: run.repair,
        started_at: run.started_at,
        finished_at: run.finished_at,
        report,
    }))
}
