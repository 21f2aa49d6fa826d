//! Tenants as users ask for them: create (idempotent by slug), wait until settled, retry.
//!
//! One code path for `POST /v1/tenants` and `tenantd tenant create`. Creating only writes the
//! catalog row (with derived names, checked for collisions up front); the workers do the
//! rest. A plain `INSERT INTO tenantd.tenants (slug) VALUES (...)` is just as valid: the
//! workers derive the names themselves.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::catalog::Change;
use crate::catalog::tenants::{NewTenant, TenantRecord, TenantStatus};
use crate::catalog::{Catalog, CatalogError};
use crate::config::Settings;
use crate::crypto;
use crate::names::{NameError, PgIdent, TenantSlug};

/// Prefix of tenant bearer tokens (easy to spot for secret scanners).
pub const TOKEN_PREFIX: &str = "tdt_";

/// A tenant problem, as users see it.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// Bad slug.
    #[error("{0}")]
    Name(#[from] NameError),
    /// Bad labels or other field.
    #[error("{0}")]
    Invalid(String),
    /// The requested server is not registered.
    #[error("unknown server {0:?}")]
    UnknownServer(String),
    /// No server in the requested region.
    #[error("no server is registered in region {0:?}")]
    UnknownRegion(String),
    /// The slug exists with a different request, or its names collide.
    #[error("{0}")]
    Conflict(String),
    /// The operation does not apply to the tenant in its current state.
    #[error("{0}")]
    WrongState(String),
    /// Catalog failure (not found included).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// A request for a tenant.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Slug: `^[a-z][a-z0-9_-]{2,47}$`.
    pub slug: String,
    /// Place on this server.
    #[serde(default)]
    pub server: Option<String>,
    /// Place in this region.
    #[serde(default)]
    pub region: Option<String>,
    /// Free-form labels (a JSON object).
    #[serde(default)]
    pub labels: Option<serde_json::Value>,
}

/// The result of a create request.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Created {
    /// The tenant as it is now.
    #[serde(flatten)]
    pub tenant: TenantRecord,
    /// True when this request created it; false when the slug existed (idempotent retry).
    #[serde(skip)]
    pub created: bool,
    /// The tenant's bearer token: shown once, on creation only.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "expose")]
    #[schema(value_type = Option<String>)]
    pub token: Option<SecretString>,
}

fn expose<S: serde::Serializer>(token: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match token {
        Some(t) => s.serialize_str(t.expose_secret()),
        None => s.serialize_none(),
    }
}

/// A fresh tenant bearer token: `tdt_` + 32 random bytes.
pub fn new_token() -> SecretString {
    SecretString::from(format!("{TOKEN_PREFIX}{}", crypto::random_secret(32).expose_secret()))
}

/// Creates a tenant, or returns the existing one with the same slug and request.
pub async fn create(
    catalog: &Catalog,
    settings: &Settings,
    req: &CreateTenant,
) -> Result<Created, TenantError> {
    create_from(catalog, settings, req, None).await
}

/// Like [`create`], for a tenant to be filled from the dump `restore_source` (by `tenant
/// restore`, which alone drives it). An existing slug is a conflict here.
pub async fn create_from(
    catalog: &Catalog,
    settings: &Settings,
    req: &CreateTenant,
    restore_source: Option<&str>,
) -> Result<Created, TenantError> {
    let slug = TenantSlug::parse(&req.slug)?;
    let labels = req.labels.clone().unwrap_or_else(|| serde_json::json!({}));
    if !labels.is_object() {
        return Err(TenantError::Invalid("labels must be a JSON object".into()));
    }
    let server = req.server.clone().filter(|s| !s.is_empty());
    let region = req.region.clone().filter(|r| !r.is_empty());
    if let Some(name) = &server {
        match catalog.server(name).await {
            Ok(_) => {}
            Err(CatalogError::NotFound(_)) => return Err(TenantError::UnknownServer(name.clone())),
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(region) = &region
        && !catalog.servers().await?.iter().any(|s| s.region.as_deref() == Some(region.as_str()))
    {
        return Err(TenantError::UnknownRegion(region.clone()));
    }
    let name = PgIdent::for_tenant(&settings.names.prefix, &slug);
    let token = new_token();
    let new = NewTenant {
        slug: slug.to_string(),
        database_name: name.to_string(),
        role_name: name.to_string(),
        requested_server: server.clone(),
        requested_region: region.clone(),
        labels,
        token_hash: crypto::token_hash(token.expose_secret()),
        restore_source: restore_source.map(str::to_owned),
    };
    let (tenant, created) = catalog.insert_tenant(&new).await.map_err(|e| match e {
        CatalogError::Conflict(m) => TenantError::Conflict(m),
        other => other.into(),
    })?;
    if !created && restore_source.is_some() {
        return Err(TenantError::Conflict(format!("tenant {slug:?} exists already")));
    }
    if !created
        && tenant.restore_source.is_some()
        && (tenant.status.is_in_progress() || tenant.status == TenantStatus::Error)
    {
        return Err(TenantError::Conflict(format!(
            "tenant {slug:?} is being restored from a dump ({}); `tenantd tenant restore` carries it on",
            tenant.status
        )));
    }
    if !created && (tenant.requested_server != server || tenant.requested_region != region) {
        return Err(TenantError::Conflict(format!(
            "tenant {slug:?} exists already with a different placement request (server {:?}, region {:?})",
            tenant.requested_server, tenant.requested_region
        )));
    }
    if created {
        tracing::info!(tenant = %slug, "tenant requested");
        metrics::counter!("tenantd_tenants_created_total").increment(1);
    }
    Ok(Created { tenant, created, token: created.then_some(token) })
}

/// Waits until a tenant is READY or ERROR (or `timeout`, or `cancel`), then returns it as it
/// is. Woken by catalog notifications when `changes` is given, and re-reads at least every
/// `recheck` in case one was lost.
pub async fn wait_settled(
    catalog: &Catalog,
    slug: &str,
    mut changes: Option<broadcast::Receiver<Change>>,
    timeout: Duration,
    recheck: Duration,
    cancel: &CancellationToken,
) -> Result<TenantRecord, CatalogError> {
    let deadline = Instant::now() + timeout;
    loop {
        let tenant = catalog.tenant(slug).await?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if tenant.status.is_settled() || remaining.is_zero() || cancel.is_cancelled() {
            return Ok(tenant);
        }
        let pause = remaining.min(recheck);
        let changed = async {
            match changes.as_mut() {
                Some(rx) => loop {
                    match rx.recv().await {
                        Ok(change) if change.table == "tenants" && change.key == slug => break,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = changed => {},
            () = tokio::time::sleep(pause) => {},
            () = cancel.cancelled() => {},
        }
    }
}

/// Starts a tenant in ERROR again (attempts reset); a tenant waiting to be placed or between
/// attempts is made due now.
pub async fn retry(catalog: &Catalog, slug: &str, actor: &str) -> Result<TenantRecord, TenantError> {
    let tenant = catalog.tenant(slug).await?;
    if let Some(source) = &tenant.restore_source
        && tenant.status != TenantStatus::Ready
    {
        // Only the restore command has the dump; a daemon would never pick this tenant up.
        return Err(TenantError::WrongState(format!(
            "tenant {slug:?} is a restore from {source}; run `tenantd tenant restore {slug} -i {source}` \
             again to carry it on, or drop it"
        )));
    }
    retry_unchecked(catalog, &tenant, actor).await
}

/// [`retry`] without the restore check (the restore command itself).
pub async fn retry_unchecked(
    catalog: &Catalog,
    tenant: &TenantRecord,
    actor: &str,
) -> Result<TenantRecord, TenantError> {
    let slug = tenant.slug.as_str();
    if !catalog.retry_tenant(slug).await? {
        return Err(TenantError::WrongState(format!(
            "tenant {slug:?} is {}; only tenants in ERROR or still provisioning can be retried",
            tenant.status
        )));
    }
    catalog
        .record_event(
            tenant.id,
            crate::catalog::events::EventKind::Retry,
            serde_json::json!({ "from": tenant.status }),
            actor,
        )
        .await?;
    tracing::info!(tenant = %slug, from = %tenant.status, "retry requested");
    Ok(catalog.tenant(slug).await?)
}
