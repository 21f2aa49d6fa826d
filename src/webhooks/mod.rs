//! Webhooks: tenant events pushed to operators' endpoints as signed HTTP POSTs, following
//! Standard Webhooks (<https://www.standardwebhooks.com>).
//!
//! - Endpoints are added with a URL and the event types they want ([`add`]); the signing
//!   secret (`whsec_` + base64 of 32 random bytes) is shown once and stored sealed with the
//!   master key, bound to the endpoint's id.
//! - The outbox: a trigger on the catalog's event log writes one delivery per subscribed
//!   endpoint in the transaction of the event (schema `V9__webhooks.sql`), so no event is
//!   lost across a crash.
//! - [`delivery`]: any daemon claims due deliveries (`SKIP LOCKED`, with a lease), signs and
//!   POSTs them with the same `webhook-id` on every attempt, retries on the
//!   `webhooks.retry_delays` schedule, then gives up; a 410 disables the endpoint.
//! - [`address`]: loopback, private and link-local addresses are refused (unless
//!   `webhooks.allow_private`), when an endpoint is added and again on every connection.

pub mod address;
pub mod delivery;
pub mod signing;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::catalog::events::EventKind;
use crate::catalog::webhooks::{DeliveryRecord, WebhookRecord};
use crate::catalog::{Catalog, CatalogError};
use crate::core::Core;

/// An event type endpoints subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookEvent {
    /// The tenant is READY.
    TenantReady,
    /// The tenant went to ERROR.
    TenantError,
    /// The tenant was suspended.
    TenantSuspended,
    /// The tenant was resumed.
    TenantResumed,
    /// The tenant was deleted.
    TenantDeleted,
    /// An upgrade of the tenant failed.
    UpgradeFailed,
    /// A backup of the tenant failed.
    BackupFailed,
    /// The tenant moved to another server (its connection details changed).
    TenantMoved,
}

impl WebhookEvent {
    /// Every event type.
    pub const ALL: [WebhookEvent; 8] = [
        Self::TenantReady,
        Self::TenantError,
        Self::TenantSuspended,
        Self::TenantResumed,
        Self::TenantDeleted,
        Self::UpgradeFailed,
        Self::BackupFailed,
        Self::TenantMoved,
    ];

    /// The name in payloads and subscriptions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TenantReady => "tenant.ready",
            Self::TenantError => "tenant.error",
            Self::TenantSuspended => "tenant.suspended",
            Self::TenantResumed => "tenant.resumed",
            Self::TenantDeleted => "tenant.deleted",
            Self::UpgradeFailed => "upgrade.failed",
            Self::BackupFailed => "backup.failed",
            Self::TenantMoved => "tenant.moved",
        }
    }

    /// The webhook event a catalog event is announced as, if any. The outbox trigger
    /// (`schema/V9__webhooks.sql`) holds the same mapping; a unit test compares them.
    pub fn from_kind(kind: EventKind) -> Option<WebhookEvent> {
        Some(match kind {
            EventKind::Ready => Self::TenantReady,
            EventKind::Error => Self::TenantError,
            EventKind::Suspended => Self::TenantSuspended,
            EventKind::Resumed => Self::TenantResumed,
            EventKind::Deleted => Self::TenantDeleted,
            EventKind::UpgradeFailed => Self::UpgradeFailed,
            EventKind::BackupFailed => Self::BackupFailed,
            EventKind::MoveFinished => Self::TenantMoved,
            _ => return None,
        })
    }

    /// Parses an event type name.
    pub fn parse(name: &str) -> Option<WebhookEvent> {
        Self::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// Why a webhook operation failed. Never contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The request breaks a rule (URL, event names).
    #[error("{0}")]
    Invalid(String),
    /// The URL points at an address webhooks may not reach.
    #[error("{0}")]
    Refused(#[from] address::AddressError),
    /// A sealed secret does not open.
    #[error("webhook {id}: its secret does not open: {source}")]
    Sealed {
        /// The endpoint.
        id: Uuid,
        /// Why.
        source: crate::crypto::CryptoError,
    },
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// `POST /v1/webhooks`, `tenantd webhook add`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddWebhook {
    /// `http://` or `https://` URL deliveries are POSTed to.
    pub url: String,
    /// Event types to receive (at least one).
    pub events: Vec<String>,
}

/// A new endpoint and its signing secret, shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Added {
    /// The endpoint.
    #[serde(flatten)]
    pub webhook: WebhookRecord,
    /// `whsec_...`: the key of the signatures (base64 after the prefix).
    #[serde(serialize_with = "expose")]
    #[schema(value_type = String)]
    pub secret: SecretString,
}

fn expose<S: serde::Serializer>(secret: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(secret.expose_secret())
}

/// Most deliveries one listing shows.
pub const MAX_DELIVERIES_LISTED: i64 = 1000;

/// Checks and stores a new endpoint; its secret is returned once and stored sealed.
pub async fn add(core: &Core, req: &AddWebhook) -> Result<Added, WebhookError> {
    let url = address::parse_url(&req.url)?;
    if req.events.is_empty() {
        return Err(WebhookError::Invalid("events: name at least one event type".into()));
    }
    let mut events = Vec::new();
    for name in &req.events {
        let event = WebhookEvent::parse(name).ok_or_else(|| {
            let known: Vec<&str> = WebhookEvent::ALL.iter().map(|e| e.as_str()).collect();
            WebhookError::Invalid(format!(
                "events: unknown event type {name:?} (known: {})",
                known.join(", ")
            ))
        })?;
        if !events.contains(&event.as_str().to_owned()) {
            events.push(event.as_str().to_owned());
        }
    }
    address::check_url(&url, core.settings.webhooks.allow_private).await?;
    let id = Uuid::new_v4();
    let secret = signing::new_secret();
    let sealed = core.keyring.seal(secret.expose_secret(), &crate::crypto::webhook_aad(id));
    let webhook = core.catalog.insert_webhook(id, url.as_str(), &events, &sealed).await?;
    // Not the URL: many carry a token of their own in the path.
    tracing::info!(webhook = %id, events = ?webhook.events, "webhook added");
    Ok(Added { webhook, secret })
}

/// Every endpoint.
pub async fn list(catalog: &Catalog) -> Result<Vec<WebhookRecord>, WebhookError> {
    Ok(catalog.webhooks().await?)
}

/// One endpoint.
pub async fn show(catalog: &Catalog, id: Uuid) -> Result<WebhookRecord, WebhookError> {
    Ok(catalog.webhook(id).await?)
}

/// Removes an endpoint and its deliveries (pending ones are not sent).
pub async fn remove(catalog: &Catalog, id: Uuid) -> Result<(), WebhookError> {
    catalog.delete_webhook(id).await?;
    tracing::info!(webhook = %id, "webhook removed");
    Ok(())
}

/// An endpoint's latest deliveries, newest first.
pub async fn deliveries(
    catalog: &Catalog,
    id: Uuid,
    limit: i64,
) -> Result<Vec<DeliveryRecord>, WebhookError> {
    if !(1..=MAX_DELIVERIES_LISTED).contains(&limit) {
        return Err(WebhookError::Invalid(format!("limit must be between 1 and {MAX_DELIVERIES_LISTED}")));
    }
    Ok(catalog.webhook_deliveries(id, limit).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_trigger_maps_event_kinds_like_the_code() {
        let schema = include_str!("../../schema/V9__webhooks.sql");
        let mut mapped = 0;
        for kind in EventKind::ALL {
            let line = WebhookEvent::from_kind(kind)
                .map(|e| format!("WHEN '{}' THEN '{}'", kind.as_str(), e.as_str()));
            if let Some(line) = line {
                assert!(schema.contains(&line), "the trigger lacks {line}");
                mapped += 1;
            }
        }
        assert_eq!(
            schema.matches("        WHEN '").count(),
            mapped,
            "the trigger maps kinds the code does not"
        );
        assert_eq!(mapped, WebhookEvent::ALL.len(), "every webhook event comes from a catalog event");
    }

    #[test]
    fn event_names_parse_back() {
        for event in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(event.as_str()), Some(event));
        }
        assert_eq!(WebhookEvent::parse("tenant.created"), None);
    }
}
