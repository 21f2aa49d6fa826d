//! `GET /v1/events` (admin): the audit trail of every tenant, paged by event id.

use std::sync::Arc;

use axum::extract::State;
use serde::{Deserialize, Serialize};

use super::auth::Admin;
use super::error::{ApiError, Json, Query};
use super::openapi::ErrorBody;
use crate::app::App;
use crate::catalog::events::{EventKind, FeedEvent, FeedFilter};

/// Page size when the query names none.
const DEFAULT_LIMIT: i64 = 100;
/// Largest page.
const MAX_LIMIT: i64 = 1000;

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Events after this id: 0 (the default) for the start, then the previous page's `next`.
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only events of this kind (`ready`, `error`, `step.migrated`...).
    kind: Option<String>,
    /// Only events of this tenant (slug).
    tenant: Option<String>,
}

/// A page of the trail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeedPage {
    /// Events, oldest first.
    pub events: Vec<FeedEvent>,
    /// Pass as `after` for the next page: the last event's id, or `after` again when the page
    /// is empty (poll with it to follow the trail).
    pub next: i64,
}

/// `GET /v1/events[?after=ID&limit=N&kind=K&tenant=SLUG]`: every tenant's events, oldest first.
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("admin" = [])),
    params(FeedQuery),
    responses(
        (status = 200, description = "A page of events", body = FeedPage),
        (status = 404, description = "`tenant` names no tenant", body = ErrorBody),
    ))]
pub async fn list(
    _: Admin,
    State(app): State<Arc<App>>,
    Query(q): Query<FeedQuery>,
) -> Result<Json<FeedPage>, ApiError> {
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request("invalid_query", "after must be 0 or more"));
    }
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let kind = q
        .kind
        .as_deref()
        .map(|k| {
            EventKind::parse(k).ok_or_else(|| {
                let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::bad_request(
                    "invalid_query",
                    format!("unknown kind {k:?}; one of {}", known.join(", ")),
                )
            })
        })
        .transpose()?;
    let tenant = match q.tenant.as_deref() {
        Some(slug) => Some(app.catalog.tenant(slug).await?.id),
        None => None,
    };
    let filter = FeedFilter { after, limit, kind, tenant, newest: false };
    let events = app.catalog.event_feed(&filter).await?;
    let next = events.last().map_or(after, |e| e.id);
    Ok(Json(FeedPage { events, next }))
}
