//! Signed admin requests (`http.require_signature`): on top of the bearer token, every request
//! to `/v1/...` carrying the admin token must carry
//! `X-Tenantd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` of
//! `"<t>.<METHOD>.<path and query>.<body>"`, keyed with `http.signature_secret`, and `t` within
//! five minutes of the daemon's clock. A leaked token alone then cannot call the admin API,
//! and a captured request cannot be replayed after the window or against another route.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::ExposeSecret;

use super::error::ApiError;
use crate::app::App;

/// The header carrying the signature.
pub const HEADER: &str = "x-tenantd-signature";
/// Largest difference between the request's `t` and the daemon's clock, in seconds.
pub const WINDOW_SECS: i64 = 300;

/// Middleware: checks the signature of admin requests when `http.require_signature` is set.
pub async fn check(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let secret = match &app.settings.http.signature_secret {
        Some(secret) if app.settings.http.require_signature => secret,
        _ => return next.run(req).await,
    };
    // The API under /v1; probes and metrics answer as without signatures.
    if !req.uri().path().starts_with("/v1/") || !super::auth::is_admin(req.headers(), &app) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, app.settings.http.body_limit_bytes).await {
        Ok(body) => body,
        Err(_) => {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "request body too large")
                .into_response();
        }
    };
    let header = parts.headers.get(HEADER).and_then(|v| v.to_str().ok());
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let now = chrono::Utc::now().timestamp();
    if let Err(why) =
        verify(secret.expose_secret().as_bytes(), header, parts.method.as_str(), target, &body, now)
    {
        metrics::counter!("tenantd_http_auth_failures_total").increment(1);
        return ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", why).into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(body))).await
}

/// Checks one request's signature header; the reason when it does not hold.
pub fn verify(
    key: &[u8],
    header: Option<&str>,
    method: &str,
    target: &str,
    body: &[u8],
    now: i64,
) -> Result<(), String> {
    let header = header.ok_or_else(|| format!("admin requests must be signed ({HEADER} header)"))?;
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    let t = t.ok_or_else(|| format!("{HEADER}: expected t=<unix seconds>,v1=<hex HMAC-SHA256>"))?;
    if (now - t).abs() > WINDOW_SECS {
        return Err(format!("{HEADER}: timestamp is more than {WINDOW_SECS} s away from the daemon's clock"));
    }
    let signed = |mac: &mut Hmac<sha2::Sha256>| {
        mac.update(format!("{t}.{method}.{target}.").as_bytes());
        mac.update(body);
    };
    for signature in signatures {
        let Ok(bytes) = hex::decode(signature) else { continue };
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).map_err(|e| e.to_string())?;
        signed(&mut mac);
        if mac.verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    Err(format!("{HEADER}: signature does not match"))
}

/// The header value for a request (for clients and tests).
pub fn sign(key: &[u8], method: &str, target: &str, body: &[u8], t: i64) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{t}.{method}.{target}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_time_method_target_and_body() {
        let key = b"0123456789abcdef0123456789abcdef";
        let header = sign(key, "POST", "/v1/tenants?wait=5", b"{}", 1000);
        assert!(verify(key, Some(&header), "POST", "/v1/tenants?wait=5", b"{}", 1100).is_ok());
        assert!(
            verify(key, Some(&header), "POST", "/v1/tenants?wait=5", b"{}", 1000 + 301).is_err(),
            "replay window"
        );
        assert!(verify(key, Some(&header), "DELETE", "/v1/tenants?wait=5", b"{}", 1000).is_err(), "method");
        assert!(verify(key, Some(&header), "POST", "/v1/servers", b"{}", 1000).is_err(), "route");
        assert!(verify(key, Some(&header), "POST", "/v1/tenants?wait=5", b"{ }", 1000).is_err(), "body");
        assert!(
            verify(
                b"another key, as long as the first",
                Some(&header),
                "POST",
                "/v1/tenants?wait=5",
                b"{}",
                1000
            )
            .is_err()
        );
        assert!(verify(key, None, "GET", "/", b"", 1000).is_err());
        assert!(verify(key, Some("garbage"), "GET", "/", b"", 1000).is_err());
    }
}
