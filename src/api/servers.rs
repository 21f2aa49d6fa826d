//! `/v1/servers` (admin token).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;

use super::auth::Admin;
use super::error::{ApiError, Json, Path};
use super::openapi::ErrorBody;
use crate::app::App;
use crate::catalog::servers::{ServerPatch, ServerRecord};
use crate::servers::{AddServer, Added};

/// `GET /v1/servers`: every server with health and tenant count; never a password.
#[utoipa::path(get, path = "/v1/servers", tag = "servers", security(("admin" = [])),
    responses((status = 200, description = "Every server", body = Vec<ServerRecord>)))]
pub async fn list(_: Admin, State(app): State<Arc<App>>) -> Result<Json<Vec<ServerRecord>>, ApiError> {
    Ok(Json(app.catalog.servers().await?))
}

/// `GET /v1/servers/{name}`.
#[utoipa::path(get, path = "/v1/servers/{name}", tag = "servers", security(("admin" = [])),
    params(("name" = String, Path, description = "Server name")),
    responses(
        (status = 200, description = "The server", body = ServerRecord),
        (status = 404, description = "No such server", body = ErrorBody),
    ))]
pub async fn show(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<ServerRecord>, ApiError> {
    Ok(Json(app.catalog.server(&name).await?))
}

/// `POST /v1/servers {name, url, weight?, max_tenants?, region?}`: verified, then stored.
#[utoipa::path(post, path = "/v1/servers", tag = "servers", security(("admin" = [])),
    request_body = AddServer,
    responses(
        (status = 201, description = "Verified and stored", body = Added),
        (status = 409, description = "A server of that name exists", body = ErrorBody),
        (status = 422, description = "Unreachable, unsafe or unsuitable (the message says what to fix)", body = ErrorBody),
    ))]
pub async fn add(
    _: Admin,
    State(app): State<Arc<App>>,
    Json(req): Json<AddServer>,
) -> Result<(StatusCode, Json<Added>), ApiError> {
    let added = crate::servers::add(&app.core, &req).await?;
    Ok((StatusCode::CREATED, Json(added)))
}

/// `PATCH /v1/servers/{name} {status?, weight?, max_tenants?, region?}`.
#[utoipa::path(patch, path = "/v1/servers/{name}", tag = "servers", security(("admin" = [])),
    params(("name" = String, Path, description = "Server name")),
    request_body = ServerPatch,
    responses(
        (status = 200, description = "The updated server", body = ServerRecord),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 409, description = "The change conflicts with the server's state", body = ErrorBody),
        (status = 422, description = "New TLS settings fail a real connection", body = ErrorBody),
    ))]
pub async fn patch(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Json(patch): Json<ServerPatch>,
) -> Result<Json<ServerRecord>, ApiError> {
    Ok(Json(crate::servers::update(&app.core, &name, &patch).await?))
}

/// `DELETE /v1/servers/{name}`: 204; 409 while tenants remain on it (drain it first). Its
/// warm spares are dropped first; they never block a removal.
#[utoipa::path(delete, path = "/v1/servers/{name}", tag = "servers", security(("admin" = [])),
    params(("name" = String, Path, description = "Server name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such server", body = ErrorBody),
        (status = 409, description = "Tenants remain on it", body = ErrorBody),
        (status = 503, description = "Its warm spares could not be dropped; try again", body = ErrorBody),
    ))]
pub async fn remove(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    // Its warm spares go first (a spare is not a tenant: it never blocks a removal).
    crate::spares::drop_all(&app.core, &name).await?;
    app.catalog.remove_server(&name).await?;
    tracing::info!(server = %name, "server removed");
    Ok(StatusCode::NO_CONTENT)
}
