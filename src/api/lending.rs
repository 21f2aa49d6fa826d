//! The data plane: SQL over HTTP, connection handles, connection details, tenant tokens.
//!
//! A tenant token reaches only its own tenant; the admin token reaches every tenant. Only
//! READY tenants are lent: others get 409 (still provisioning, or ERROR), 423 (suspended) or
//! 410 (deleted).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{Admin, Caller};
use super::error::{ApiError, Json, Path};
use super::openapi::ErrorBody;
use crate::app::App;
use crate::catalog::tenants::TenantRecord;
use crate::pools::Lent;
use crate::sqlhttp::{self, Limits, SqlRequest, StatementResult};
use crate::target::{ConnectionDetails, TenantTarget};

/// A READY tenant the caller may use, or the error that says why not.
async fn lendable(app: &App, caller: &Caller, slug: &str) -> Result<Arc<TenantRecord>, ApiError> {
    caller.may_use(slug)?;
    let tenant = app.resolver.tenant(&app.catalog, slug).await?;
    crate::target::lendable(&tenant, app.migrations.latest_version())?;
    Ok(tenant)
}

async fn borrow(app: &App, tenant: &TenantRecord) -> Result<Lent, ApiError> {
    let server_name =
        tenant.server.as_deref().ok_or_else(|| ApiError::internal("READY tenant without a server"))?;
    let server = app.resolver.server(&app.catalog, server_name).await?;
    Ok(app.pools.get(tenant, &server, &app.keyring).await?)
}

/// A write refused because the tenant is read-only for being over its storage quota is
/// answered 507 `over_quota`, naming the quota; every other error as it is.
fn refused(tenant: &TenantRecord, error: sqlhttp::SqlError) -> ApiError {
    match &error {
        sqlhttp::SqlError::Postgres { sqlstate, .. } if tenant.over_quota && sqlstate == "25006" => {
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "over_quota",
                format!(
                    "tenant {:?} is over its storage quota ({} bytes used) and read-only until it is under again",
                    tenant.slug,
                    tenant.database_bytes.unwrap_or(0)
                ),
            )
        }
        _ => error.into(),
    }
}

/// How long one SQL request may run before tenantd cancels it on the server. The session's
/// `statement_timeout` (the same value) normally ends it first; this holds even when the
/// tenant lifted that with `SET`.
fn deadline(app: &App) -> Duration {
    app.settings.pools.statement_timeout + Duration::from_secs(1)
}

fn limits(app: &App) -> Limits {
    Limits { max_rows: app.settings.pools.max_rows, max_result_bytes: app.settings.pools.max_result_bytes }
}

/// What a SQL request answers: one result for `{sql}`, `{results: [...]}` for
/// `{statements: [...]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum SqlAnswer {
    /// The result of the one statement.
    One(StatementResult),
    /// The results of a statement list, in order.
    Many(SqlResults),
}

/// The results of a statement list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SqlResults {
    /// One per statement, in order.
    pub results: Vec<StatementResult>,
}

fn answer(req: &SqlRequest, mut results: Vec<StatementResult>) -> Result<Json<SqlAnswer>, ApiError> {
    match req {
        SqlRequest::One(_) => results
            .pop()
            .map(|one| Json(SqlAnswer::One(one)))
            .ok_or_else(|| ApiError::internal("a one-statement request returned no result")),
        SqlRequest::Many { .. } => Ok(Json(SqlAnswer::Many(SqlResults { results }))),
    }
}

/// `POST /v1/tenants/{slug}/sql {sql, params?} | {statements: [...]}`: one statement in
/// autocommit, or a list in one transaction, on a pooled connection.
#[utoipa::path(post, path = "/v1/tenants/{slug}/sql", tag = "lending", security(("admin" = []), ("tenant" = [])),
    params(("slug" = String, Path, description = "Tenant slug")),
    request_body = crate::sqlhttp::SqlRequestSchema,
    responses(
        (status = 200, description = "The result (`{sql}`), or the results (`{statements}`)", body = SqlAnswer),
        (status = 400, description = "Malformed request, or the statement failed (`sql_error` with `sqlstate`...)", body = ErrorBody),
        (status = 403, description = "The token belongs to another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "A constraint violation or serialization failure (`sql_error`); or the tenant is not READY (`tenant_not_ready`), or its schema is newer than this build", body = ErrorBody),
        (status = 410, description = "The tenant is deleted", body = ErrorBody),
        (status = 423, description = "The tenant is suspended", body = ErrorBody),
        (status = 408, description = "The statement ran past pools.statement_timeout", body = ErrorBody),
        (status = 413, description = "Body too large, or the result over pools.max_rows / pools.max_result_bytes", body = ErrorBody),
        (status = 507, description = "A write while the tenant is over its storage quota", body = ErrorBody),
    ))]
pub async fn sql(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
    Json(req): Json<SqlRequest>,
) -> Result<Json<SqlAnswer>, ApiError> {
    let tenant = lendable(&app, &caller, &slug).await?;
    let connection = borrow(&app, &tenant).await?;
    let limits = limits(&app);
    // The connection's reset goes right behind a single statement.
    let reset_behind = || connection.reset_behind();
    let results = connection
        // One more `Bind` than statements: a kept statement gone stale is bound a second time.
        .run_guarded(deadline(&app), req.len() + 1, |client| {
            sqlhttp::run_request(client, connection.statements(), &req, &limits, &reset_behind)
        })
        .await
        .map_err(|e| refused(&tenant, e))?;
    answer(&req, results)
}

/// Body of `POST /v1/tenants/{slug}/handles`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenHandle {
    /// Idle lifetime; default `pools.handle_ttl`, at most `pools.max_handle_ttl`.
    #[serde(default)]
    #[schema(minimum = 1)]
    ttl_seconds: Option<u64>,
}

/// A new handle.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Opened {
    /// Id for `/v1/handles/{handle}`.
    pub handle: String,
    /// Expiry if unused (each use pushes it back one TTL).
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// `POST /v1/tenants/{slug}/handles {ttl_seconds?}`: holds a pooled connection for the caller.
#[utoipa::path(post, path = "/v1/tenants/{slug}/handles", tag = "lending", security(("admin" = []), ("tenant" = [])),
    params(("slug" = String, Path, description = "Tenant slug")),
    request_body(content = Option<OpenHandle>, description = "Optional: an empty body means the defaults"),
    responses(
        (status = 201, description = "The handle", body = Opened),
        (status = 403, description = "The token belongs to another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The tenant is not READY (`tenant_not_ready`), or its schema is newer than this build", body = ErrorBody),
        (status = 410, description = "The tenant is deleted", body = ErrorBody),
        (status = 423, description = "The tenant is suspended", body = ErrorBody),
        (status = 429, description = "pools.max_handles_per_tenant handles are open", body = ErrorBody),
    ))]
pub async fn open_handle(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Opened>), ApiError> {
    // The body is optional: an empty one means the defaults. Too large is a JSON 413 too.
    let body = body?;
    let req: OpenHandle = if body.iter().all(u8::is_ascii_whitespace) {
        OpenHandle::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
    };
    let pools = &app.settings.pools;
    let ttl = match req.ttl_seconds {
        None => pools.handle_ttl,
        Some(0) => return Err(ApiError::bad_request("invalid", "ttl_seconds must be at least 1")),
        Some(s) if Duration::from_secs(s) > pools.max_handle_ttl => {
            return Err(ApiError::bad_request(
                "invalid",
                format!("ttl_seconds must be at most {}", pools.max_handle_ttl.as_secs()),
            ));
        }
        Some(s) => Duration::from_secs(s),
    };
    let tenant = lendable(&app, &caller, &slug).await?;
    if app.handles.count(&slug) >= pools.max_handles_per_tenant {
        return Err(crate::handles::HandleError::TooMany { slug, max: pools.max_handles_per_tenant }.into());
    }
    let connection = borrow(&app, &tenant).await?;
    let (handle, expires_at) =
        app.handles.open(&slug, &caller.owner(), pools.max_handles_per_tenant, ttl, connection)?;
    tracing::debug!(tenant = %slug, ttl = ?ttl, "handle opened");
    Ok((StatusCode::CREATED, Json(Opened { handle, expires_at })))
}

/// `POST /v1/handles/{handle}/sql`: runs on the held connection, statements as given.
#[utoipa::path(post, path = "/v1/handles/{handle}/sql", tag = "lending", security(("admin" = []), ("tenant" = [])),
    params(("handle" = String, Path, description = "Handle id (`h_...`)")),
    request_body = crate::sqlhttp::SqlRequestSchema,
    responses(
        (status = 200, description = "The result (`{sql}`), or the results (`{statements}`)", body = SqlAnswer,
            headers(("x-handle-expires-at" = String, description = "RFC 3339 time the handle expires if unused"))),
        (status = 400, description = "Malformed request, or the statement failed (`sql_error` with `sqlstate`...)", body = ErrorBody),
        (status = 403, description = "The handle belongs to another token", body = ErrorBody),
        (status = 404, description = "No such handle (closed or expired)", body = ErrorBody),
        (status = 409, description = "A constraint violation or serialization failure; or the tenant is not READY", body = ErrorBody),
        (status = 410, description = "The tenant is deleted", body = ErrorBody),
        (status = 423, description = "The tenant is suspended", body = ErrorBody),
        (status = 408, description = "The statement ran past pools.statement_timeout", body = ErrorBody),
        (status = 413, description = "Body too large, or the result over pools.max_rows / pools.max_result_bytes", body = ErrorBody),
        (status = 507, description = "A write while the tenant is over its storage quota", body = ErrorBody),
    ))]
pub async fn handle_sql(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    Json(req): Json<SqlRequest>,
) -> Result<(HeaderMap, Json<SqlAnswer>), ApiError> {
    let handle = app.handles.get(&id, &caller.owner())?;
    // A suspended or deleted tenant's handles are closed; this catches a race with that.
    let tenant = lendable(&app, &caller, &handle.slug).await?;
    handle.touch();
    let connection = handle.connection.lock().await;
    let limits = limits(&app);
    let results = connection
        .run_guarded(deadline(&app), req.len(), |client| sqlhttp::run_raw(client, &req, &limits))
        .await;
    drop(connection);
    let expires_at = handle.touch();
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&expires_at.to_rfc3339()) {
        headers.insert("x-handle-expires-at", value);
    }
    Ok((headers, answer(&req, results.map_err(|e| refused(&tenant, e))?)?))
}

/// `DELETE /v1/handles/{handle}`: rollback, reset, back to the pool.
#[utoipa::path(delete, path = "/v1/handles/{handle}", tag = "lending", security(("admin" = []), ("tenant" = [])),
    params(("handle" = String, Path, description = "Handle id (`h_...`)")),
    responses(
        (status = 204, description = "Closed"),
        (status = 403, description = "The handle belongs to another token", body = ErrorBody),
        (status = 404, description = "No such handle (closed or expired)", body = ErrorBody),
    ))]
pub async fn close_handle(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    app.handles.close(&id, &caller.owner())?;
    Ok(StatusCode::NO_CONTENT)
}

/// The connection details of a READY tenant, through the resolver's cache (the CLI resolves
/// the same [`TenantTarget`] from the catalog directly).
pub async fn connection_details(app: &App, tenant: &TenantRecord) -> Result<ConnectionDetails, ApiError> {
    let server_name =
        tenant.server.as_deref().ok_or_else(|| ApiError::internal("READY tenant without a server"))?;
    let server = app.resolver.server(&app.catalog, server_name).await?;
    Ok(TenantTarget::new(tenant, &server, &app.keyring)?.details(&app.settings.pgbouncer))
}

/// `GET /v1/tenants/{slug}/connection`: host, port, dbname, user, password and URL of the
/// tenant's own role (for apps with their own pools, and for PgBouncer entries).
#[utoipa::path(get, path = "/v1/tenants/{slug}/connection", tag = "lending", security(("admin" = []), ("tenant" = [])),
    params(("slug" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "Connection details of the tenant's role", body = ConnectionDetails),
        (status = 403, description = "The token belongs to another tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The tenant is not READY (`tenant_not_ready`), or its schema is newer than this build", body = ErrorBody),
        (status = 410, description = "The tenant is deleted", body = ErrorBody),
        (status = 423, description = "The tenant is suspended", body = ErrorBody),
    ))]
pub async fn connection(
    caller: Caller,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
) -> Result<(HeaderMap, Json<ConnectionDetails>), ApiError> {
    let tenant = lendable(&app, &caller, &slug).await?;
    let mut headers = HeaderMap::new();
    headers.insert(axum::http::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok((headers, Json(connection_details(&app, &tenant).await?)))
}

/// `POST /v1/tenants/{slug}/tokens` (admin): replaces the tenant's token; the new one is
/// shown once, the old one stops working at once (in every daemon, via notification).
#[utoipa::path(post, path = "/v1/tenants/{slug}/tokens", tag = "lending", security(("admin" = [])),
    params(("slug" = String, Path, description = "Tenant slug")),
    responses(
        (status = 201, description = "The new token, shown once", body = TokenRotated),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ))]
pub async fn rotate_token(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
) -> Result<(StatusCode, Json<TokenRotated>), ApiError> {
    let token = crate::tenants::new_token();
    let hash = crate::crypto::token_hash(token.expose_secret());
    if !app.catalog.set_token_hash(&slug, &hash).await? {
        return Err(ApiError::not_found(format!("no tenant {slug:?}")));
    }
    app.resolver.invalidate(&slug);
    // Handles opened with the old token close with it (other daemons: on the notification).
    app.handles.close_stale(&slug, Some(&hash));
    let tenant = app.catalog.tenant(&slug).await?;
    app.catalog
        .record_event(tenant.id, crate::catalog::events::EventKind::TokenRotated, json!({}), "api")
        .await?;
    tracing::info!(tenant = %slug, "tenant token rotated");
    Ok((StatusCode::CREATED, Json(TokenRotated { slug, token: token.expose_secret().to_owned() })))
}

/// A tenant's new token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenRotated {
    /// The tenant.
    pub slug: String,
    /// Its new bearer token (the old one no longer works).
    pub token: String,
}
