//! Fleet operations over HTTP (admin): moving a tenant, draining a server, and the
//! operations that record them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use super::auth::Admin;
use super::error::{ApiError, Json, Path};
use super::openapi::ErrorBody;
use crate::app::App;
use crate::catalog::operations::Operation;
use crate::moves::{self, Mover};

/// Body of `POST /v1/tenants/{slug}/move`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// The target server.
    to: String,
    /// Drop the source database at once instead of keeping it for `moves.keep_source`.
    #[serde(default)]
    drop_source: bool,
    /// Move online (logical replication). Its prerequisites are checked first and every
    /// missing one is listed (422 `online_prerequisites_missing`); this build cannot run
    /// online moves, so it refuses even when none is missing (422 `online_not_implemented`).
    #[serde(default)]
    online: bool,
}

/// `POST /v1/tenants/{slug}/move {"to": SERVER, "drop_source"?: bool, "online"?: bool}`: 202 with the
/// operation; the tenant is MOVING (lending answers 503 `tenant_moving`) until the move ends,
/// READY on the target, or READY on the source when it failed before the switch.
#[utoipa::path(post, path = "/v1/tenants/{slug}/move", tag = "tenants", security(("admin" = [])),
    params(("slug" = String, Path, description = "Tenant slug")),
    request_body = MoveRequest,
    responses(
        (status = 202, description = "Started; follow it at /v1/operations/{id}", body = Operation),
        (status = 404, description = "No such tenant or server", body = ErrorBody),
        (status = 409, description = "The tenant is not READY", body = ErrorBody),
        (status = 422, description = "Not a possible move (same server, target not active), or an online move refused (`missing` lists its prerequisites)", body = ErrorBody),
    ))]
pub async fn start(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
    Json(req): Json<MoveRequest>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    if req.online {
        moves::check_online(&app.core, &slug, &req.to).await?;
    }
    let job = Mover::new(&app.core, &app.core.instance).start(&slug, &req.to, req.drop_source).await?;
    // This daemon lends nothing of it from now on (the others on the notification).
    app.resolver.invalidate(&slug);
    app.pools.close(&slug);
    app.handles.close_tenant(&slug);
    let op = job.op.clone();
    let task = app.clone();
    app.shutdown.spawn(async move {
        let cancel = task.shutdown.token().clone();
        if let Err(error) = Mover::new(&task.core, &task.core.instance).run(job, &cancel).await {
            tracing::warn!(tenant = %slug, %error, "move stopped; a daemon resumes it");
        }
    });
    Ok((StatusCode::ACCEPTED, Json(op)))
}

/// `GET /v1/operations/{id}`: a move or a drain, its step and outcome.
#[utoipa::path(get, path = "/v1/operations/{id}", tag = "tenants", security(("admin" = [])),
    params(("id" = String, Path, format = Uuid, description = "Operation id")),
    responses(
        (status = 200, description = "The operation", body = Operation),
        (status = 404, description = "No such operation", body = ErrorBody),
    ))]
pub async fn show(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<uuid::Uuid>,
) -> Result<Json<Operation>, ApiError> {
    Ok(Json(app.catalog.operation(id).await?))
}

/// Body of `POST /v1/servers/{name}/drain`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Moves at once (default 2).
    #[serde(default)]
    concurrency: Option<usize>,
}

/// `POST /v1/servers/{name}/drain {"concurrency"?: N}`: the server is `draining` at once
/// (placement skips it); 202 with the drain's operation, whose detail lists the moves when
/// it ends.
#[utoipa::path(post, path = "/v1/servers/{name}/drain", tag = "servers", security(("admin" = [])),
    params(("name" = String, Path, description = "Server name")),
    request_body = DrainRequest,
    responses(
        (status = 202, description = "Draining; the operation lists the moves when it ends", body = Operation),
        (status = 404, description = "No such server", body = ErrorBody),
    ))]
pub async fn drain(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Json(body): Json<DrainRequest>,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    let concurrency = body.concurrency.unwrap_or(2);
    if !(1..=64).contains(&concurrency) {
        return Err(ApiError::bad_request("invalid", "concurrency must be 1 to 64"));
    }
    let id = moves::start_drain(&app.core, &name, "api").await?;
    let task = app.clone();
    app.shutdown.spawn(async move {
        let cancel = task.shutdown.token().clone();
        let report = |slug: &str, result: Result<&str, &str>| match result {
            Ok(to) => tracing::info!(tenant = slug, to, "drain: tenant moved"),
            Err(why) => tracing::warn!(tenant = slug, why, "drain: tenant not moved"),
        };
        let instance = task.core.instance.clone();
        if let Err(error) =
            moves::drain(&task.core, &instance, &name, id, concurrency, &cancel, &report).await
        {
            tracing::error!(server = %name, %error, "drain stopped");
        }
    });
    Ok((StatusCode::ACCEPTED, Json(app.catalog.operation(id).await?)))
}
