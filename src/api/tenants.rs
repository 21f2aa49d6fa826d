//! `/v1/tenants` (admin token): create, list, show, events, retry.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::auth::Admin;
use super::error::{ApiError, Json, Path, Query};
use super::openapi::ErrorBody;
use crate::app::App;
use crate::catalog::events::Event;
use crate::catalog::tenants::{TenantFilter, TenantRecord, TenantStatus};
use crate::tenants::{CreateTenant, Created};

/// Query of `POST /v1/tenants`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    /// Seconds to wait for READY or ERROR before answering (at most http.request_timeout
    /// less one second).
    #[param(minimum = 0)]
    #[serde(default)]
    wait: Option<f64>,
}

/// `POST /v1/tenants {slug, server?, region?, labels?}[?wait=SECONDS]`: 201 when created (with
/// the tenant token, shown once), 200 when the slug exists already with the same request.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", security(("admin" = [])),
    params(CreateQuery),
    request_body = CreateTenant,
    responses(
        (status = 201, description = "Created; `token` is shown this once", body = Created),
        (status = 200, description = "The slug exists already (an idempotent retry)", body = Created),
        (status = 404, description = "`server` names no server", body = ErrorBody),
        (status = 409, description = "The slug exists with another placement, or its names collide with another tenant's", body = ErrorBody),
        (status = 422, description = "`region` has no server", body = ErrorBody),
    ))]
pub async fn create(
    _: Admin,
    State(app): State<Arc<App>>,
    Query(q): Query<CreateQuery>,
    Json(req): Json<CreateTenant>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let wait = wait_duration(&app, q.wait)?;
    let changes = app.changes.subscribe();
    let mut created = crate::tenants::create(&app.catalog, &app.settings, &req).await?;
    if let Some(wait) = wait {
        let recheck = app.settings.workers.poll_interval.min(Duration::from_secs(1));
        created.tenant = crate::tenants::wait_settled(
            &app.catalog,
            &created.tenant.slug,
            Some(changes),
            wait,
            recheck,
            app.shutdown.token(),
        )
        .await?;
    }
    let status = if created.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(created)))
}

fn wait_duration(app: &App, wait: Option<f64>) -> Result<Option<Duration>, ApiError> {
    let Some(seconds) = wait else { return Ok(None) };
    // Leave a second for the answer itself within the request timeout.
    let max = app.settings.http.request_timeout.saturating_sub(Duration::from_secs(1)).as_secs_f64();
    if !seconds.is_finite() || seconds < 0.0 || seconds > max {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("wait must be between 0 and {max} seconds"),
        ));
    }
    Ok(Some(Duration::from_secs_f64(seconds)))
}

/// Query of `GET /v1/tenants`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only tenants in this state (case-insensitive).
    #[param(value_type = Option<TenantStatus>)]
    status: Option<String>,
    /// Only tenants on this server.
    server: Option<String>,
    /// The `next` of the previous page: tenants after this slug.
    after: Option<String>,
    /// Only tenants whose slug contains this text.
    q: Option<String>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// A page of tenants.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = TenantPage)]
pub struct Page {
    /// Tenants, by slug.
    pub tenants: Vec<TenantRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `GET /v1/tenants[?status=&server=&q=&limit=&after=]` (`q`: slugs containing it).
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", security(("admin" = [])),
    params(ListQuery),
    responses((status = 200, description = "A page of tenants, by slug", body = Page)))]
pub async fn list(
    _: Admin,
    State(app): State<Arc<App>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Page>, ApiError> {
    let status = q
        .status
        .as_deref()
        .map(|s| {
            TenantStatus::parse(s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("unknown status {s:?}; one of {:?}", TenantStatus::ALL.map(TenantStatus::as_str)),
                )
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 1000"));
    }
    let text = q.q.filter(|t| !t.is_empty());
    if text.as_ref().is_some_and(|t| t.len() > 200) {
        return Err(ApiError::bad_request("invalid_query", "q must be at most 200 bytes"));
    }
    let filter = TenantFilter { status, server: q.server, after: q.after, q: text, limit: limit + 1 };
    let mut tenants = app.catalog.tenants(&filter).await?;
    let next = (tenants.len() as i64 > limit).then(|| {
        tenants.truncate(limit as usize);
        tenants.last().map(|t| t.slug.clone())
    });
    Ok(Json(Page { tenants, next: next.flatten() }))
}

/// A tenant with its schema position relative to this build.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = TenantShown)]
pub struct Shown {
    /// The tenant.
    #[serde(flatten)]
    pub tenant: TenantRecord,
    /// Newest migration of this build.
    pub latest_version: i32,
    /// Migrations this build would apply to it.
    pub pending_migrations: Vec<crate::tenant_migrations::Known>,
    /// This daemon's connection pool for the tenant (`null` when none is open).
    pub pool: Option<crate::pools::PoolStatus>,
}

/// `GET /v1/tenants/{slug}`: the tenant, with `latest_version` and `pending_migrations`.
#[utoipa::path(get, path = "/v1/tenants/{slug}", tag = "tenants", security(("admin" = [])),
    params(("slug" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "The tenant", body = Shown),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ))]
pub async fn show(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
) -> Result<Json<Shown>, ApiError> {
    let tenant = app.catalog.tenant(&slug).await?;
    let pending = if tenant.status.is_settled() {
        app.migrations.pending_after(tenant.schema_version)
    } else {
        Vec::new()
    };
    let pool = app.pools.tenant_status(&tenant.slug);
    Ok(Json(Shown {
        tenant,
        latest_version: app.migrations.latest_version(),
        pending_migrations: pending,
        pool,
    }))
}

/// Query of the events listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Events after this id.
    after: Option<i64>,
    /// At most this many (default 500, at most 5000).
    limit: Option<i64>,
}

/// `GET /v1/tenants/{slug}/events[?after=ID&limit=N]`: the audit log, oldest first.
#[utoipa::path(get, path = "/v1/tenants/{slug}/events", tag = "tenants", security(("admin" = [])),
    params(("slug" = String, Path, description = "Tenant slug"), EventsQuery),
    responses(
        (status = 200, description = "The tenant's events, oldest first", body = Vec<Event>),
        (status = 404, description = "No such tenant", body = ErrorBody),
    ))]
pub async fn events(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let tenant = app.catalog.tenant(&slug).await?;
    let limit = q.limit.unwrap_or(500).clamp(1, 5000);
    Ok(Json(app.catalog.events(tenant.id, q.after.unwrap_or(0), limit).await?))
}

/// `POST /v1/tenants/{slug}/retry`: start a tenant in ERROR again.
#[utoipa::path(post, path = "/v1/tenants/{slug}/retry", tag = "tenants", security(("admin" = [])),
    params(("slug" = String, Path, description = "Tenant slug")),
    responses(
        (status = 200, description = "The tenant, PENDING again", body = TenantRecord),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The tenant is not in ERROR", body = ErrorBody),
    ))]
pub async fn retry(
    _: Admin,
    State(app): State<Arc<App>>,
    Path(slug): Path<String>,
) -> Result<Json<TenantRecord>, ApiError> {
    Ok(Json(crate::tenants::retry(&app.catalog, &slug, "api").await?))
}
