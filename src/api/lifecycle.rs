//! Tenant lifecycle over HTTP (admin): delete, suspend, resume, dump.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::Admin;
use super::error::{ApiError, Json, Path, Query};
use super::openapi::ErrorBody;
use crate::app::App;
use crate::catalog::tenants::TenantRecord;
use crate::lifecycle::Lifecycle;

fn lifecycle(app: &App) -> Lifecycle<'_> {
    Lifecycle::new(&app.core, &app.core.instance)
}

/// `POST /v1/tenants/{slug}/password` (admin): a new password for the tenant's role; the new
/// connection details are answered once. Pools of every daemon reconnect with it.
#[utoipa::path(post, path = "/v1/tenants/{slug}/password", tag = "tenants", security(("admin" = [])),
    params(("slug" = String, Path, description = "Tenant slug")),
    responses(
        (status = 201, description = "The new connection details, shown once", body = crate::target::ConnectionDetails),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The tenant is not READY or SUSPENDED", body = ErrorBody),
    ))]
pub async fn rotate_password(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
) -> Result<
    (StatusCode, [(header::HeaderName, HeaderValue); 1], Json<crate::target::ConnectionDetails>),
    ApiError,
> {
    let details = lifecycle(&app).rotate_password(&slug).await?;
    app.resolver.invalidate(&slug);
    app.pools.close(&slug);
    Ok((StatusCode::CREATED, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(details)))
}

/// Body of `PATCH /v1/tenants/{slug}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    /// The tenant's limit overrides, replacing the ones it had (`{}`: the defaults again):
    /// `connections`, `statement_timeout_ms`, `idle_in_transaction_timeout_ms`.
    limits: crate::limits::LimitOverrides,
}

/// `PATCH /v1/tenants/{slug} {"limits": {...}}` (admin): sets the tenant's limits and applies
/// them to its role at once (READY or SUSPENDED tenants; others get them when provisioned).
#[utoipa::path(patch, path = "/v1/tenants/{slug}", tag = "tenants", security(("admin" = [])),
    params(("slug" = String, Path, description = "Tenant slug")),
    request_body = TenantPatch,
    responses(
        (status = 200, description = "The tenant with its new limits", body = TenantRecord),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The tenant is being worked on or is gone", body = ErrorBody),
    ))]
pub async fn patch(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
    Json(patch): Json<TenantPatch>,
) -> Result<Json<TenantRecord>, ApiError> {
    Ok(Json(lifecycle(&app).set_limits(&slug, &patch.limits).await?))
}

/// Query of `DELETE /v1/tenants/{slug}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Write a final archive into `lifecycle.archive_dir` before dropping.
    #[serde(default)]
    archive: bool,
}

/// `DELETE /v1/tenants/{slug}[?archive=true]`: 202, the tenant is DELETING; a worker archives
/// (if asked), drops the database and the role, and marks it DELETED.
#[utoipa::path(delete, path = "/v1/tenants/{slug}", tag = "tenants", security(("admin" = [])),
    params(("slug" = String, Path, description = "Tenant slug"), DeleteQuery),
    responses(
        (status = 202, description = "The tenant, DELETING", body = TenantRecord),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The tenant is being worked on; try again shortly", body = ErrorBody),
        (status = 410, description = "Deleted already", body = ErrorBody),
        (status = 422, description = "`archive=true` without lifecycle.archive_dir", body = ErrorBody),
    ))]
pub async fn delete(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<(StatusCode, Json<TenantRecord>), ApiError> {
    let archive_dir = match (q.archive, &app.settings.lifecycle.archive_dir) {
        (false, _) => None,
        (true, Some(dir)) => Some(dir.display().to_string()),
        (true, None) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "no_archive_dir",
                "archive=true needs lifecycle.archive_dir (TENANTD_LIFECYCLE_ARCHIVE_DIR) to be set",
            ));
        }
    };
    let tenant = app.catalog.tenant(&slug).await?;
    if tenant.status == crate::catalog::tenants::TenantStatus::Deleted {
        return Err(ApiError::new(
            StatusCode::GONE,
            "tenant_deleted",
            format!("tenant {slug:?} is deleted already"),
        ));
    }
    let Some(deleting) = app.catalog.request_delete(&slug, archive_dir.as_deref(), "api", None).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "tenant_busy",
            format!("tenant {slug:?} is being worked on ({}); try again shortly", tenant.status),
        ));
    };
    app.wake.notify_one();
    tracing::info!(tenant = %slug, archive = q.archive, "tenant deletion requested");
    Ok((StatusCode::ACCEPTED, Json(deleting)))
}

/// `POST /v1/tenants/{slug}/suspend`.
#[utoipa::path(post, path = "/v1/tenants/{slug}/suspend", tag = "tenants", security(("admin" = [])),
    params(("slug" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "The tenant, SUSPENDED", body = TenantRecord),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The tenant is not READY", body = ErrorBody),
    ))]
pub async fn suspend(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
) -> Result<Json<TenantRecord>, ApiError> {
    Ok(Json(lifecycle(&app).suspend(&slug).await?))
}

/// `POST /v1/tenants/{slug}/resume`.
#[utoipa::path(post, path = "/v1/tenants/{slug}/resume", tag = "tenants", security(("admin" = [])),
    params(("slug" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "The tenant, READY", body = TenantRecord),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The tenant is not SUSPENDED", body = ErrorBody),
    ))]
pub async fn resume(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
) -> Result<Json<TenantRecord>, ApiError> {
    Ok(Json(lifecycle(&app).resume(&slug).await?))
}

/// `POST /v1/tenants/{slug}/dumps`: a pg_dump (custom format) of the tenant, as the body.
/// The dump is finished before the first byte is sent, so a failure is a clean JSON error
/// and a 200 is always a complete file.
#[utoipa::path(post, path = "/v1/tenants/{slug}/dumps", tag = "tenants", security(("admin" = [])),
    params(("slug" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "A pg_dump archive (custom format)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The tenant is not READY or SUSPENDED", body = ErrorBody),
    ))]
pub async fn dump(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
) -> Result<Response, ApiError> {
    // Private and removed when this request ends, however it ends.
    let dir = tempfile::Builder::new()
        .prefix("tenantd-dump-")
        .tempdir()
        .map_err(|e| ApiError::internal(format!("cannot create a temporary directory: {e}")))?;
    let path = dir.path().join("dump");
    // A shutdown does not wait for a long dump: it is cancelled (pg_dump killed, files removed).
    let lifecycle = lifecycle(&app);
    let dumped = tokio::select! {
        dumped = lifecycle.dump(&slug, &path) => dumped?,
        () = app.shutdown.token().cancelled() => {
            return Err(ApiError::unavailable("shutting_down", "tenantd is shutting down; try again", 5));
        }
    };
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(format!("cannot open the finished dump: {e}")))?;
    // The open file stays readable after its directory is gone (Unix).
    drop(dir);
    let stream = tokio_util::io::ReaderStream::new(file);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(dumped.bytes));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{slug}.dump\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
