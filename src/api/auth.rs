//! Bearer-token authentication of the HTTP API.
//!
//! The admin token may do everything. Tokens are compared in constant time (on their SHA-256
//! digests, so the length does not leak either). A missing or wrong token is 401; a valid
//! token that may not do what it asks is 403.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::app::App;
use crate::crypto;

/// Who is calling the data plane: the admin, or a tenant with its own token.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The admin token: every tenant.
    Admin,
    /// A tenant token: its own tenant only.
    Tenant {
        /// The tenant's slug.
        slug: String,
        /// Hash of the presented token (owns the handles it opens).
        token_hash: String,
    },
}

impl Caller {
    /// Fails with 403 unless the caller may use tenant `slug`.
    pub fn may_use(&self, slug: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant { slug: own, .. } if own == slug => Ok(()),
            Caller::Tenant { .. } => Err(ApiError::forbidden("this token belongs to another tenant")),
        }
    }

    /// The owner recorded on handles this caller opens.
    pub fn owner(&self) -> String {
        match self {
            Caller::Admin => crate::handles::ADMIN_OWNER.to_owned(),
            Caller::Tenant { token_hash, .. } => token_hash.clone(),
        }
    }
}

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if crypto::token_matches(token, &app.admin_token) {
            return Ok(Caller::Admin);
        }
        if token.starts_with(crate::tenants::TOKEN_PREFIX) {
            let hash = crypto::token_hash(token);
            if let Some(tenant) = app.resolver.by_token_hash(&app.catalog, &hash).await? {
                return Ok(Caller::Tenant { slug: tenant.slug.clone(), token_hash: hash });
            }
        }
        metrics::counter!("tenantd_http_auth_failures_total").increment(1);
        Err(ApiError::unauthorized("invalid token"))
    }
}

/// True when the headers carry the admin token.
pub fn is_admin(headers: &axum::http::HeaderMap, app: &App) -> bool {
    headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.split_once(' ')).is_some_and(
        |(scheme, token)| {
            scheme.eq_ignore_ascii_case("bearer") && crypto::token_matches(token.trim(), &app.admin_token)
        },
    )
}

/// Proof that the request carries the admin token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token> header"))?;
    let text = value.to_str().map_err(|_| ApiError::unauthorized("Authorization header is not ASCII"))?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(token.trim())
        }
        _ => Err(ApiError::unauthorized("Authorization header must be `Bearer <token>`")),
    }
}

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        if crypto::token_matches(token, &app.admin_token) {
            Ok(Admin)
        } else {
            metrics::counter!("tenantd_http_auth_failures_total").increment(1);
            Err(ApiError::unauthorized("invalid token"))
        }
    }
}
