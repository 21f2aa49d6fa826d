//! `/healthz`, `/readyz` and `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, Json, Query};
use crate::app::App;

/// Liveness: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Query of `/readyz`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadyQuery {
    /// Also check every server now.
    #[serde(default)]
    deep: bool,
}

/// Readiness: the catalog answers; with `?deep=true` (admin token) every server is checked
/// too, with its latency. 503 when anything is down.
pub async fn readyz(
    State(app): State<Arc<App>>,
    headers: axum::http::HeaderMap,
    Query(q): Query<ReadyQuery>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // The deep check names servers and logs in to each of them: admin only.
    if q.deep && !super::auth::is_admin(&headers, &app) {
        return Err(ApiError::unauthorized("/readyz?deep=true needs the admin token"));
    }
    let started = Instant::now();
    if let Err(e) = app.catalog.ping().await {
        tracing::warn!(error = %e, "readiness: catalog unreachable");
        return Err(ApiError::unavailable("catalog_unavailable", e.to_string(), 5));
    }
    let catalog_ms = started.elapsed().as_secs_f64() * 1000.0;
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

/// Prometheus text exposition. Tenant counts per status are read from the catalog at scrape
/// time (`tenantd_tenants{status}`); if the catalog is down the other metrics still render.
pub async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    match app.catalog.tenant_counts().await {
        Ok(counts) => {
            for status in crate::catalog::tenants::TenantStatus::ALL {
                let n = counts.iter().find(|(s, _)| s == status.as_str()).map_or(0, |(_, n)| *n);
                metrics::gauge!("tenantd_tenants", "status" => status.as_str()).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count tenants"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::metrics().render())
}
