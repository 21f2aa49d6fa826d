//! The admin console: one page, its script and its style, embedded in the binary (no CDN, no
//! build step). It signs in with the admin token, kept in the tab's session storage, and uses
//! the same admin API as everyone else; the page itself holds nothing secret, so it is served
//! without a token, under a strict Content-Security-Policy (only its own script, no inline
//! code, no framing).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self' data: blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /ui`: the console page.
#[utoipa::path(get, path = "/ui", tag = "console",
    responses((status = 200, description = "The console page", content_type = "text/html", body = String)))]
pub async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

/// `GET /ui/console.js`.
#[utoipa::path(get, path = "/ui/console.js", tag = "console",
    responses((status = 200, description = "The console's script", content_type = "text/javascript", body = String)))]
pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /ui/console.css`.
#[utoipa::path(get, path = "/ui/console.css", tag = "console",
    responses((status = 200, description = "The console's style sheet", content_type = "text/css", body = String)))]
pub async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}
