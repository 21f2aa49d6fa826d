//! The one place where domain errors become HTTP statuses.
//!
//! Every error response is `{"error": {"code": "...", "message": "..."}}`. A client's mistake
//! is a 4xx naming the problem; only tenantd's own failures are 5xx. An internal error is
//! answered with a generic message and the request's id (also in the `x-request-id` header);
//! its detail goes to the log only, under that id.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::admin::AdminError;
use crate::catalog::CatalogError;
use crate::servers::ServerError;
use crate::target::TargetError;
use crate::tenants::TenantError;

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    extra: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error with a given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None, extra: serde_json::Map::new() }
    }

    /// Adds a field next to `code` and `message` in the error object (e.g. `sqlstate`).
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// 400: the request is malformed or a value breaks a rule.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message) }
    }

    /// 500: tenantd's own failure. The detail is logged here, under the request's id, so it
    /// is never lost; the client sees only a generic message with that id.
    pub fn internal(detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let request = super::request_id();
        tracing::error!(error = %detail, request_id = %request, "internal error answered as 500");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error; the daemon's log has the detail under request id {request}"),
        )
        .with("request_id", request)
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = self.extra;
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        let body = json!({ "error": error });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::Conflict(m) => Self::conflict(m),
            CatalogError::NotFound(m) => Self::not_found(m),
            // Class 22 (data exception): a value the client sent cannot be stored or compared,
            // such as a NUL character in a slug or a label.
            CatalogError::Query(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
                Self::bad_request("invalid", format!("invalid value: {}", crate::pg::describe(&e)))
            }
            // Unreachable, shutting down, or out of a shared resource (lock table, NOTIFY
            // queue, connections, disk): not the client's fault, and worth a retry. An outage
            // is logged once by the catalog, so each answer to one only at debug level.
            e if e.is_unavailable() => {
                let request = super::request_id();
                if e.is_outage() {
                    tracing::debug!(error = %e, request_id = %request, "catalog unreachable; answered 503");
                } else {
                    tracing::error!(error = %e, request_id = %request, "catalog cannot answer; answered 503");
                }
                Self::unavailable("catalog_unavailable", "the catalog cannot answer now; retry shortly", 5)
                    .with("request_id", request)
            }
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<ServerError> for ApiError {
    fn from(e: ServerError) -> Self {
        match e {
            ServerError::Name(_)
            | ServerError::Admin(AdminError::BadUrl(_) | AdminError::Tls(_))
            | ServerError::BadValue(_) => Self::bad_request("invalid", e.to_string()),
            ServerError::Admin(AdminError::Unreachable { .. }) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "server_unreachable", e.to_string())
            }
            ServerError::Unsafe(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "server_unsafe", e.to_string())
            }
            ServerError::MissingPrivileges { .. } | ServerError::TooOld(..) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "server_unsuitable", e.to_string())
            }
            ServerError::Admin(AdminError::Sealed { .. })
            | ServerError::TenantSealed { .. }
            | ServerError::WebhookSealed { .. } => Self::internal(e.to_string()),
            ServerError::Catalog(c) => c.into(),
        }
    }
}

impl From<crate::spares::SpareError> for ApiError {
    fn from(e: crate::spares::SpareError) -> Self {
        use crate::spares::SpareError;
        match e {
            SpareError::Catalog(c) => c.into(),
            SpareError::Foreign { .. } => Self::new(StatusCode::CONFLICT, "foreign_object", e.to_string()),
            SpareError::Admin { .. } | SpareError::Server { .. } => {
                Self::unavailable("server_unavailable", e.to_string(), 5)
            }
        }
    }
}

impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> Self {
        match e {
            TenantError::Name(_) | TenantError::Invalid(_) => Self::bad_request("invalid", e.to_string()),
            TenantError::UnknownServer(_) => Self::not_found(e.to_string()),
            TenantError::UnknownRegion(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_region", e.to_string())
            }
            TenantError::Conflict(m) => Self::conflict(m),
            TenantError::WrongState(m) => Self::new(StatusCode::CONFLICT, "wrong_state", m),
            TenantError::Catalog(c) => c.into(),
        }
    }
}

impl From<crate::pools::LendError> for ApiError {
    fn from(e: crate::pools::LendError) -> Self {
        use crate::pools::LendError;
        match e {
            LendError::Saturated { .. } => Self::unavailable("saturated", e.to_string(), 1),
            LendError::TenantBusy(_) => Self::unavailable("tenant_busy", e.to_string(), 1),
            LendError::Closed => Self::unavailable("pool_closed", e.to_string(), 1),
            // The health check logs the server's outage once; each answer only at debug level.
            LendError::ServerDown { .. } => {
                tracing::debug!(error = %e, "cannot lend a connection: server unavailable");
                Self::unavailable("server_unavailable", e.to_string(), 5)
            }
            LendError::Connect(_) => {
                tracing::warn!(error = %e, "cannot lend a connection");
                Self::unavailable("tenant_unreachable", e.to_string(), 5)
            }
            LendError::Target(t) => t.into(),
        }
    }
}

impl From<crate::lifecycle::LifecycleError> for ApiError {
    fn from(e: crate::lifecycle::LifecycleError) -> Self {
        use crate::lifecycle::LifecycleError;
        match e {
            LifecycleError::WrongState(m) => Self::new(StatusCode::CONFLICT, "wrong_state", m),
            LifecycleError::Catalog(c) => c.into(),
            LifecycleError::Target(t) => t.into(),
            LifecycleError::Server(m) => Self::unavailable("server_unavailable", m, 5),
            LifecycleError::Dump(crate::dumps::DumpError::NotOurs(m)) => {
                Self::new(StatusCode::CONFLICT, "wrong_state", m)
            }
            LifecycleError::Dump(crate::dumps::DumpError::Server(m)) => {
                Self::unavailable("server_unavailable", m, 5)
            }
            LifecycleError::Dump(d) => Self::internal(d.to_string()),
            LifecycleError::Exists(m) => Self::conflict(m),
            LifecycleError::Invalid(m) => Self::bad_request("invalid", m),
            LifecycleError::Tenant(t) => t.into(),
        }
    }
}

impl From<crate::webhooks::WebhookError> for ApiError {
    fn from(e: crate::webhooks::WebhookError) -> Self {
        use crate::webhooks::WebhookError;
        use crate::webhooks::address::AddressError;
        match e {
            WebhookError::Invalid(_) | WebhookError::Refused(AddressError::BadUrl(_)) => {
                Self::bad_request("invalid", e.to_string())
            }
            WebhookError::Refused(_) => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "url_refused", e.to_string())
            }
            WebhookError::Sealed { .. } => Self::internal(e.to_string()),
            WebhookError::Catalog(c) => c.into(),
        }
    }
}

impl From<crate::moves::MoveError> for ApiError {
    fn from(e: crate::moves::MoveError) -> Self {
        use crate::moves::MoveError;
        match e {
            MoveError::WrongState(m) => Self::new(StatusCode::CONFLICT, "wrong_state", m),
            MoveError::UnknownServer(_) => Self::not_found(e.to_string()),
            MoveError::Invalid(m) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_move", m),
            MoveError::OnlineRefused(ref missing) => {
                let missing = missing.clone();
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "online_prerequisites_missing", e.to_string())
                    .with("missing", missing)
            }
            MoveError::OnlineNotImplemented => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "online_not_implemented", e.to_string())
            }
            MoveError::TargetDown(m) | MoveError::Server(m) => Self::unavailable("server_unavailable", m, 5),
            MoveError::Catalog(c) => c.into(),
            MoveError::Target(t) => t.into(),
            MoveError::LeaseLost | MoveError::Interrupted => {
                Self::unavailable("tenant_busy", e.to_string(), 1)
            }
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<TargetError> for ApiError {
    fn from(e: TargetError) -> Self {
        match e {
            TargetError::Catalog(c) => c.into(),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<crate::target::NotLendable> for ApiError {
    fn from(e: crate::target::NotLendable) -> Self {
        use crate::target::NotLendable;
        if let NotLendable::Moving(_) = e {
            return Self::unavailable("tenant_moving", e.to_string(), 2);
        }
        let (status, code) = match &e {
            NotLendable::SchemaNewer { .. } => (StatusCode::CONFLICT, "tenant_schema_newer"),
            NotLendable::Suspended(_) => (StatusCode::LOCKED, "tenant_suspended"),
            NotLendable::Deleted(..) => (StatusCode::GONE, "tenant_deleted"),
            NotLendable::NotReady(..) | NotLendable::Moving(_) => (StatusCode::CONFLICT, "tenant_not_ready"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<crate::handles::HandleError> for ApiError {
    fn from(e: crate::handles::HandleError) -> Self {
        use crate::handles::HandleError;
        match e {
            HandleError::NotFound => Self::not_found(e.to_string()),
            HandleError::Forbidden => Self::forbidden(e.to_string()),
            HandleError::TooMany { .. } => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_handles", e.to_string())
            }
        }
    }
}

impl From<crate::sqlhttp::SqlError> for ApiError {
    fn from(e: crate::sqlhttp::SqlError) -> Self {
        use crate::sqlhttp::SqlError;
        match e {
            SqlError::BadRequest(m) => Self::bad_request("invalid_sql_request", m),
            SqlError::TooLarge(m) => Self::new(StatusCode::PAYLOAD_TOO_LARGE, "result_too_large", m),
            // The connection broke under the request: the server went away (or the network).
            SqlError::Connection(m) => Self::unavailable("server_unavailable", m, 1),
            SqlError::Timeout(m) => Self::new(StatusCode::REQUEST_TIMEOUT, "statement_timeout", m),
            SqlError::Postgres { sqlstate, message, detail, hint, position } => {
                let status = sql_status(&sqlstate);
                // The server shutting down or starting up under the statement.
                let code = if crate::pg::is_unavailable_sqlstate(&sqlstate) {
                    "server_unavailable"
                } else {
                    "sql_error"
                };
                let mut error = if status.is_server_error() {
                    Self { retry_after: Some(1), ..Self::new(status, code, message) }
                } else {
                    Self::new(status, "sql_error", message)
                };
                error = error.with("sqlstate", sqlstate);
                if let Some(d) = detail {
                    error = error.with("detail", d);
                }
                if let Some(h) = hint {
                    error = error.with("hint", h);
                }
                if let Some(p) = position {
                    error = error.with("position", p);
                }
                error
            }
        }
    }
}

/// HTTP status of a SQLSTATE from a tenant database: the client's statement is at fault
/// (4xx) unless the server is short of resources or going away (503).
fn sql_status(sqlstate: &str) -> StatusCode {
    match sqlstate {
        "57014" => StatusCode::REQUEST_TIMEOUT,    // statement timeout / cancel
        "40001" | "40P01" => StatusCode::CONFLICT, // serialization failure, deadlock
        s if s.starts_with("23") => StatusCode::CONFLICT, // integrity constraint
        s if s.starts_with("42501") => StatusCode::FORBIDDEN, // insufficient privilege
        s if s.starts_with("53") || s.starts_with("08") || s.starts_with("57P") => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let (status, code) = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            _ => (StatusCode::BAD_REQUEST, "invalid_json"),
        };
        Self::new(status, code, r.body_text())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", r.body_text())
            }
            _ => Self::bad_request("invalid_body", r.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::bad_request("invalid_path", r.body_text())
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s (JSON bodies, 400/413/415).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Json(value))
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);
