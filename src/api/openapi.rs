//! The OpenAPI 3.1 document of the API (`GET /openapi.json`, `tenantd openapi`).
//!
//! Generated from the handlers' `#[utoipa::path]` annotations and the request and response
//! types' `ToSchema` derives, so it follows the code; `docs/openapi.json` is a committed copy
//! that a test compares with this one. Each handler lists the answers that are its own
//! (200, 404, 409...); [`CommonAnswers`] adds those that the extractors and the middleware give
//! every operation alike: 400 for a malformed path, query or body, 401 without a valid token,
//! 413/415 for bodies, 503 when the daemon is busy or a request times out, 500 for a bug.

use std::sync::OnceLock;

use serde::Serialize;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{self, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{events, health, lending, lifecycle, migrations, servers, tenants};

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tenantd",
        description = "A PostgreSQL database per tenant: servers, tenants, their life cycle, \
            SQL over HTTP and connection handles, upgrade runs, and the audit trail.",
        license(name = "see the repository")
    ),
    paths(
        health::healthz,
        health::readyz,
        health::metrics,
        document,
        servers::list,
        servers::add,
        servers::show,
        servers::patch,
        servers::remove,
        super::moves::drain,
        super::moves::start,
        super::moves::show,
        super::reconcile::last,
        tenants::list,
        tenants::create,
        tenants::show,
        lifecycle::patch,
        lifecycle::delete,
        lifecycle::suspend,
        lifecycle::resume,
        lifecycle::dump,
        lifecycle::rotate_password,
        tenants::events,
        tenants::retry,
        lending::sql,
        lending::open_handle,
        lending::connection,
        lending::rotate_token,
        lending::handle_sql,
        lending::close_handle,
        migrations::list,
        migrations::start,
        migrations::show,
        super::webhooks::add,
        super::webhooks::list,
        super::webhooks::show,
        super::webhooks::remove,
        super::webhooks::deliveries,
        super::console::index,
        super::console::script,
        super::console::style,
        events::list,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&CommonAnswers),
    tags(
        (name = "health", description = "Probes, metrics and this document (no token)"),
        (name = "servers", description = "Database servers that receive tenants (admin)"),
        (name = "tenants", description = "Tenants and their life cycle (admin)"),
        (name = "lending", description = "SQL over HTTP, handles, connection details (admin or the tenant's token)"),
        (name = "migrations", description = "Upgrade runs (admin)"),
        (name = "events", description = "The audit trail of every tenant (admin)"),
        (name = "webhooks", description = "Endpoints that receive signed tenant events, and their deliveries (admin)"),
        (name = "console", description = "The admin console's page and assets (no token; the page signs in)"),
    )
)]
pub struct ApiDoc;

/// Security scheme names used in the handlers' `security(...)`.
pub const ADMIN: &str = "admin";
/// The tenant token scheme (`tdt_...`, its own tenant only).
pub const TENANT: &str = "tenant";

/// The document, built once.
pub fn document_value() -> &'static openapi::OpenApi {
    static DOC: OnceLock<openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The document as pretty JSON with a final newline (what `docs/openapi.json` holds).
pub fn document_json() -> String {
    // Serialising a document of plain maps, strings and numbers cannot fail.
    let mut text = document_value().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object))
)]
pub async fn document() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document_json())
}

/// Every error answer: `{"error": {"code": "...", "message": "...", ...}}`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    /// The error.
    error: ErrorDetail,
}

/// The error object. Besides `code` and `message`, some errors carry more fields (a failed
/// SQL statement: `sqlstate`, `detail`, `hint`, `position`; an internal error or an outage:
/// `request_id`; an online move refused: `missing`, the list of its missing prerequisites).
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`not_found`, `invalid_json`, `tenant_not_ready`...).
    code: String,
    /// What went wrong, for people.
    message: String,
    /// The request's id (also the `x-request-id` header), under which the log has the detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<String>,
    /// SQLSTATE of a failed statement.
    #[serde(skip_serializing_if = "Option::is_none")]
    sqlstate: Option<String>,
    /// PostgreSQL's detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// PostgreSQL's hint.
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
    /// Character position of the error in the statement (1-based).
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u32>,
}

/// Adds the bearer schemes, and the answers every operation shares, to each operation.
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description.to_owned()))
                    .build(),
            )
        };
        components.add_security_scheme(ADMIN, bearer("The admin token (TENANTD_ADMIN_TOKEN): everything."));
        components.add_security_scheme(
            TENANT,
            bearer("A tenant's token (`tdt_...`, shown once at creation): its own tenant's data plane only."),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let probe = matches!(path.as_str(), "/healthz" | "/metrics" | "/openapi.json");
            let operations =
                [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                add_common(operation, probe);
            }
        }
    }
}

fn add_common(op: &mut Operation, probe: bool) {
    let has_input = op.parameters.as_ref().is_some_and(|p| !p.is_empty()) || op.request_body.is_some();
    // A token is required unless the operation lists an empty (anonymous) requirement.
    let secured = op.security.as_ref().is_some_and(|s| {
        !s.is_empty() && !s.iter().any(|r| serde_json::to_value(r).is_ok_and(|v| v == serde_json::json!({})))
    });
    let mut add = |status: &str, description: &str| {
        op.responses.responses.entry(status.to_owned()).or_insert_with(|| error(description));
    };
    if has_input {
        add("400", "Malformed path, query or body; `message` names the problem");
    }
    if secured {
        add("401", "Missing or invalid bearer token");
    }
    if op.request_body.is_some() {
        add("413", "Body larger than http.body_limit_bytes");
        add("415", "Body is not `application/json`");
    }
    if !probe {
        add(
            "503",
            "Busy (http.max_concurrent_requests), timed out, or the catalog or server is unavailable; see Retry-After",
        );
    }
    add("500", "tenantd's own failure; the log has the detail under `request_id`");
}

fn error(description: &str) -> RefOr<openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                openapi::ContentBuilder::new()
                    .schema(Some(RefOr::Ref(openapi::Ref::from_schema_name("ErrorBody"))))
                    .build(),
            )
            .build(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_operation_answers_500_and_has_a_description() {
        let doc = super::document_value();
        assert!(!doc.paths.paths.is_empty());
        for (path, item) in &doc.paths.paths {
            for op in [&item.get, &item.post, &item.patch, &item.delete].into_iter().flatten() {
                assert!(op.responses.responses.contains_key("500"), "{path}");
            }
        }
    }
}
