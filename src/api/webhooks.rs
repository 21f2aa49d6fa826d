//! `/v1/webhooks` (admin token): endpoints that receive tenant events, and their deliveries.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use uuid::Uuid;

use super::auth::Admin;
use super::error::{ApiError, Json, Path, Query};
use super::openapi::ErrorBody;
use crate::app::App;
use crate::catalog::webhooks::{DeliveryRecord, WebhookRecord};
use crate::webhooks::{AddWebhook, Added};

/// `POST /v1/webhooks {url, events}`: 201 with the endpoint and its secret (shown once).
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", security(("admin" = [])),
    request_body = AddWebhook,
    responses(
        (status = 201, description = "Added; the signing secret is shown this once", body = Added),
        (status = 422, description = "The URL is refused (private address, credentials, scheme)", body = ErrorBody),
    ))]
pub async fn add(
    _: Admin,
    State(app): State<Arc<App>>,
    Json(req): Json<AddWebhook>,
) -> Result<(StatusCode, Json<Added>), ApiError> {
    Ok((StatusCode::CREATED, Json(crate::webhooks::add(&app.core, &req).await?)))
}

/// `GET /v1/webhooks`.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("admin" = [])),
    responses((status = 200, description = "Every endpoint", body = Vec<WebhookRecord>)))]
pub async fn list(_: Admin, State(app): State<Arc<App>>) -> Result<Json<Vec<WebhookRecord>>, ApiError> {
    Ok(Json(crate::webhooks::list(&app.catalog).await?))
}

/// `GET /v1/webhooks/{id}`.
#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", security(("admin" = [])),
    params(("id" = String, Path, format = Uuid, description = "Endpoint id")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookRecord),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    ))]
pub async fn show(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<Uuid>,
) -> Result<Json<WebhookRecord>, ApiError> {
    Ok(Json(crate::webhooks::show(&app.catalog, id).await?))
}

/// `DELETE /v1/webhooks/{id}`: 204; its pending deliveries are dropped.
#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", security(("admin" = [])),
    params(("id" = String, Path, format = Uuid, description = "Endpoint id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    ))]
pub async fn remove(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    crate::webhooks::remove(&app.catalog, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of the deliveries listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveriesQuery {
    /// Most deliveries returned (default 100, at most 1000).
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 1000)]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

/// `GET /v1/webhooks/{id}/deliveries?limit=N`: newest first.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", security(("admin" = [])),
    params(("id" = String, Path, format = Uuid, description = "Endpoint id"), DeliveriesQuery),
    responses(
        (status = 200, description = "Its deliveries, newest first", body = Vec<DeliveryRecord>),
        (status = 404, description = "No such endpoint", body = ErrorBody),
    ))]
pub async fn deliveries(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(id): Path<Uuid>,
    Query(q): Query<DeliveriesQuery>,
) -> Result<Json<Vec<DeliveryRecord>>, ApiError> {
    Ok(Json(crate::webhooks::deliveries(&app.catalog, id, q.limit).await?))
}
