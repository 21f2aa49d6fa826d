//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::{ApiError, Json, Query};
use super::openapi::ErrorBody;
use crate::app::App;

/// Answer of `/healthz`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Alive {
    /// Always `ok`.
    pub status: String,
}

/// Answer of `/readyz` (built as JSON in [`readyz`]; this type gives its schema).
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    /// `ready`, or `degraded` when a server failed the deep check.
    status: String,
    /// The catalog's round trip.
    catalog: CatalogCheck,
    /// With `?deep=true`: every server, checked now.
    #[serde(skip_serializing_if = "Option::is_none")]
    servers: Option<Vec<ServerCheck>>,
}

/// The catalog's part of `/readyz`.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CatalogCheck {
    /// Round trip, ms.
    latency_ms: f64,
}

/// One server in `/readyz?deep=true`.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ServerCheck {
    /// Server name.
    name: String,
    /// Its placement status.
    status: crate::catalog::servers::ServerStatus,
    /// It answered.
    healthy: bool,
    /// Round trip, ms (when healthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
    /// Why not (when unhealthy).
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Tenants placed there.
    tenants: i64,
}

/// A 503 of `/readyz`: a degraded deep check, or an error (catalog down, busy).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum NotReady {
    /// A server failed the deep check.
    Degraded(Readiness),
    /// The catalog is unreachable, or the daemon is busy.
    Error(ErrorBody),
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process answers", body = Alive)))]
pub async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok".to_owned() })
}

/// Query of `/readyz`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadyQuery {
    /// Also check every server now.
    #[serde(default)]
    deep: bool,
}

/// Readiness: the catalog answers; with `?deep=true` (admin token) every server is checked
/// too, with its latency. 503 when anything is down.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    params(ReadyQuery),
    security((), ("admin" = [])),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 401, description = "`deep=true` without the admin token", body = ErrorBody),
        (status = 503, description = "The catalog is unreachable, or (deep) a server is down", body = NotReady),
    )
)]
pub async fn readyz(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    Query(q): Query<ReadyQuery>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // The deep check names servers and logs in to each of them: admin only.
    if q.deep && !super::auth::is_admin(&headers, &app) {
        return Err(ApiError::unauthorized("/readyz?deep=true needs the admin token"));
    }
    let catalog_ms = match catalog_check(&app).await {
        Ok(ms) => ms,
        Err(e) => {
            // The catalog logs an outage once; probes come every few seconds.
            tracing::debug!(error = %e, "readiness: catalog unreachable");
            return Err(ApiError::unavailable("catalog_unavailable", "the catalog is unreachable", 5));
        }
    };
    let mut body = json!({ "status": "ready", "catalog": { "latency_ms": catalog_ms } });
    if !q.deep {
        return Ok((StatusCode::OK, Json(body)));
    }
    let servers = app.catalog.servers().await?;
    let checks = servers.iter().map(|s| crate::servers::check_health(s, &app.keyring));
    let results = futures::future::join_all(checks).await;
    let mut all_ok = true;
    let report: Vec<Value> = servers
        .iter()
        .zip(results)
        .map(|(s, r)| match r {
            Ok(ms) => json!({ "name": s.name, "status": s.status, "healthy": true, "latency_ms": ms, "tenants": s.tenants }),
            Err(error) => {
                all_ok = false;
                json!({ "name": s.name, "status": s.status, "healthy": false, "error": error.to_string(), "tenants": s.tenants })
            }
        })
        .collect();
    body["servers"] = Value::Array(report);
    if !all_ok {
        body["status"] = json!("degraded");
    }
    let status = if all_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok((status, Json(body)))
}

/// The catalog's latency, checked at most once a second.
async fn catalog_check(app: &App) -> Result<f64, String> {
    let recent = |cached: &Option<(Instant, Result<f64, String>)>| {
        cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < std::time::Duration::from_secs(1))
            .map(|(_, r)| r.clone())
    };
    if let Some(result) = recent(&app.readiness.lock().unwrap_or_else(std::sync::PoisonError::into_inner)) {
        return result;
    }
    let started = Instant::now();
    let result = app
        .catalog
        .ping()
        .await
        .map(|()| started.elapsed().as_secs_f64() * 1000.0)
        .map_err(|e| e.to_string());
    *app.readiness.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some((Instant::now(), result.clone()));
    result
}

/// Prometheus text exposition, from memory: scraping costs no catalog query (tenant counts
/// per status, `tenantd_tenants{status}`, are refreshed by the health task).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String))
)]
pub async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::metrics().render())
}
