//! `/v1/servers` (admin token).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;

use super::auth::Admin;
use super::error::{ApiError, Json, Path};
use crate::app::App;
use crate::catalog::servers::{ServerPatch, ServerRecord};
use crate::servers::{AddServer, Added};

/// `GET /v1/servers`: every server with health and tenant count; never a password.
pub async fn list(_: Admin, State(app): State<Arc<App>>) -> Result<Json<Vec<ServerRecord>>, ApiError> {
    Ok(Json(app.catalog.servers().await?))
}

/// `GET /v1/servers/{name}`.
pub async fn show(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<ServerRecord>, ApiError> {
    Ok(Json(app.catalog.server(&name).await?))
}

/// `POST /v1/servers {name, url, weight?, max_tenants?, region?}`: verified, then stored.
pub async fn add(
    _: Admin,
    State(app): State<Arc<App>>,
    Json(req): Json<AddServer>,
) -> Result<(StatusCode, Json<Added>), ApiError> {
    let added = crate::servers::add(&app.core, &req).await?;
    Ok((StatusCode::CREATED, Json(added)))
}

/// `PATCH /v1/servers/{name} {status?, weight?, max_tenants?, region?}`.
pub async fn patch(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Json(patch): Json<ServerPatch>,
) -> Result<Json<ServerRecord>, ApiError> {
    Ok(Json(crate::servers::update(&app.core, &name, &patch).await?))
}

/// `DELETE /v1/servers/{name}`: 204; 409 while tenants remain on it (drain it first).
pub async fn remove(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.catalog.remove_server(&name).await?;
    tracing::info!(server = %name, "server removed");
    Ok(StatusCode::NO_CONTENT)
}
