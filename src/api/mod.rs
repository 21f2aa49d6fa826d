//! The HTTP API (axum on hyper): routes, middleware and the server task.
//!
//! Every response body is JSON, errors included (404 and 405 too). Every request gets an id
//! (`x-request-id`, taken from the client when it sends a sane one) and a tracing span with
//! method, matched route, status and latency; requests are counted and timed per route for
//! `/metrics`; a panic in a handler is caught, logged and answered 500 without taking the
//! daemon down; the server stops accepting on shutdown and lets in-flight requests finish.

pub mod auth;
pub mod console;
pub mod error;
pub mod events;
pub mod health;
pub mod lending;
pub mod lifecycle;
pub mod migrations;
pub mod moves;
pub mod openapi;
pub mod reconcile;
pub mod serve;
pub mod servers;
pub mod signature;
pub mod tenants;
pub mod webhooks;

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use self::error::ApiError;
use crate::app::App;

/// Builds the router of one daemon: [`routes`] under [`layered`].
pub fn router(app: Arc<App>) -> Router {
    layered(routes(), app)
}

/// Every route of the API, without middleware.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/ui", get(console::index))
        .route("/ui/console.js", get(console::script))
        .route("/ui/console.css", get(console::style))
        .route("/v1/servers", get(servers::list).post(servers::add))
        .route("/v1/servers/{name}", get(servers::show).patch(servers::patch).delete(servers::remove))
        .route("/v1/servers/{name}/drain", post(moves::drain))
        .route("/v1/tenants", get(tenants::list).post(tenants::create))
        .route("/v1/tenants/{slug}", get(tenants::show).delete(lifecycle::delete).patch(lifecycle::patch))
        .route("/v1/tenants/{slug}/suspend", post(lifecycle::suspend))
        .route("/v1/tenants/{slug}/resume", post(lifecycle::resume))
        .route("/v1/tenants/{slug}/dumps", post(lifecycle::dump))
        .route("/v1/tenants/{slug}/move", post(moves::start))
        .route("/v1/operations/{id}", get(moves::show))
        .route("/v1/reconcile", get(reconcile::last))
        .route("/v1/tenants/{slug}/events", get(tenants::events))
        .route("/v1/tenants/{slug}/retry", post(tenants::retry))
        .route("/v1/tenants/{slug}/sql", post(lending::sql))
        .route("/v1/tenants/{slug}/handles", post(lending::open_handle))
        .route("/v1/tenants/{slug}/connection", get(lending::connection))
        .route("/v1/tenants/{slug}/tokens", post(lending::rotate_token))
        .route("/v1/tenants/{slug}/password", post(lifecycle::rotate_password))
        .route("/v1/handles/{handle}/sql", post(lending::handle_sql))
        .route("/v1/handles/{handle}", axum::routing::delete(lending::close_handle))
        .route("/v1/migrations", get(migrations::list).post(migrations::start))
        .route("/v1/migrations/{id}", get(migrations::show))
        .route("/v1/events", get(events::list))
        .route("/v1/webhooks", get(webhooks::list).post(webhooks::add))
        .route("/v1/webhooks/{id}", get(webhooks::show).delete(webhooks::remove))
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
}

/// Adds the fallbacks and middleware (body limit, timeout and metrics, panic catcher) to
/// `routes` and binds the state.
pub fn layered(routes: Router<Arc<App>>, app: Arc<App>) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(app.settings.http.body_limit_bytes))
        .layer(middleware::from_fn_with_state(app.clone(), signature::check))
        // Inside `observe`: a panic's 500 carries the request id and is counted like any answer.
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Serves the API on `listener` until shutdown (HTTPS with `https`), on the daemon's task
/// tracker.
pub fn spawn(app: Arc<App>, listener: tokio::net::TcpListener, https: Option<Arc<serve::Https>>) {
    serve::spawn(app.clone(), router(app), listener, https);
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled (`-` outside a request).
pub(crate) fn request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_else(|_| "-".to_owned())
}

/// The client's `x-request-id` when it is short and printable, else a new one.
fn request_id_of(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

/// Gives the request its id and span, times it out with a JSON 503, and records per-route
/// metrics.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    // Any string is a valid HTTP method: only the known ones become metric labels.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_owned(),
        _ => "other".to_owned(),
    };
    let id = request_id_of(&req);
    let span = tracing::info_span!("request", request_id = %id, %method, %route, status = tracing::field::Empty, ms = tracing::field::Empty);
    let mut response = REQUEST_ID
        .scope(id.clone(), timed(app, route.clone(), method, req, next))
        .instrument(span.clone())
        .await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn timed(app: Arc<App>, route: String, method: String, req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Probes and scrapes answer whatever the load; everything else takes a permit first, so
    // a flood of requests cannot hold unbounded bodies and results in memory.
    let _permit = if matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics") {
        None
    } else {
        match app.requests.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                metrics::counter!("tenantd_http_rejected_busy_total").increment(1);
                return ApiError::unavailable("busy", "too many requests in progress; retry shortly", 1)
                    .into_response();
            }
        }
    };
    // A dump takes as long as the tenant's data needs; every other request is bounded.
    let limit = if route == "/v1/tenants/{slug}/dumps" {
        Duration::from_secs(24 * 3600)
    } else {
        app.settings.http.request_timeout
    };
    let response = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(%route, %method, ?limit, "request timed out");
            ApiError::unavailable("timeout", format!("request took longer than {limit:?}"), 1).into_response()
        }
    };
    let status = response.status().as_u16().to_string();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let span = tracing::Span::current();
    span.record("status", status.as_str());
    span.record("ms", ms);
    tracing::debug!("request finished");
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("tenantd_http_requests_total", &labels).increment(1);
    metrics::histogram!("tenantd_http_request_seconds", &labels[..2]).record(started.elapsed().as_secs_f64());
    response
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    metrics::counter!("tenantd_http_panics_total").increment(1);
    // The detail goes to the log only (under the request id): it may quote internal state.
    ApiError::internal(format!("a request handler panicked: {detail}")).into_response()
}
