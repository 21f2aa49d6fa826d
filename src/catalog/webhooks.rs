//! Webhook endpoints (`tenantd.webhooks`) and their outbox of deliveries
//! (`tenantd.webhook_deliveries`).
//!
//! Deliveries are written by a trigger on `tenantd.tenant_events` (schema `V9__webhooks.sql`),
//! in the transaction of the event. Any daemon claims due ones with `FOR UPDATE SKIP LOCKED`
//! and a lease; a claim whose holder died is taken again once its lease runs out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Catalog, CatalogError};

/// A webhook endpoint, as shown to operators (never its secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookRecord {
    /// Its id.
    pub id: Uuid,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Event types it receives.
    pub events: Vec<String>,
    /// False once the endpoint answered 410 Gone: nothing more is sent.
    pub enabled: bool,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
}

/// The state of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Not delivered yet; tried again at `next_attempt_at`.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up: the retries ran out, or the endpoint answered 410.
    Failed,
    /// Not sent: the endpoint was disabled first.
    Cancelled,
}

impl DeliveryStatus {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One delivery of one event to one endpoint, as shown to operators.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeliveryRecord {
    /// Sequence number.
    pub id: i64,
    /// The `webhook-id` header, the same on every attempt.
    pub message_id: String,
    /// Event type, e.g. `tenant.ready`.
    pub event_type: String,
    /// `pending`, `delivered`, `failed` or `cancelled`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i32,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: DateTime<Utc>,
    /// When it was last tried.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// HTTP status of the last answer.
    pub last_status: Option<i32>,
    /// What went wrong the last time.
    pub last_error: Option<String>,
    /// When the endpoint took it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// When the event happened.
    pub created_at: DateTime<Utc>,
    /// The body that is sent.
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// A delivery claimed by one daemon, with what it needs to send it.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// The delivery's id.
    pub id: i64,
    /// The `webhook-id` header.
    pub message_id: String,
    /// Event type.
    pub event_type: String,
    /// The body.
    pub payload: serde_json::Value,
    /// Attempts including this one.
    pub attempts: i32,
    /// The endpoint.
    pub webhook_id: Uuid,
    /// Its URL.
    pub url: String,
    /// Its sealed secret (opened only to sign).
    pub secret_sealed: String,
}

const WEBHOOK_COLUMNS: &str = "id, url, events, enabled, disabled_reason, created_at";
const DELIVERY_COLUMNS: &str = "id, message_id, event_type, status, attempts, next_attempt_at, \
     last_attempt_at, last_status, last_error, delivered_at, created_at, payload";

fn webhook(r: &tokio_postgres::Row) -> WebhookRecord {
    WebhookRecord {
        id: r.get(0),
        url: r.get(1),
        events: r.get(2),
        enabled: r.get(3),
        disabled_reason: r.get(4),
        created_at: r.get(5),
    }
}

fn delivery(r: &tokio_postgres::Row) -> DeliveryRecord {
    DeliveryRecord {
        id: r.get(0),
        message_id: r.get(1),
        event_type: r.get(2),
        status: r.get(3),
        attempts: r.get(4),
        next_attempt_at: r.get(5),
        last_attempt_at: r.get(6),
        last_status: r.get(7),
        last_error: r.get(8),
        delivered_at: r.get(9),
        created_at: r.get(10),
        payload: r.get(11),
    }
}

fn not_found(id: Uuid) -> CatalogError {
    CatalogError::NotFound(format!("no webhook with id {id}"))
}

impl Catalog {
    /// Adds an endpoint with its sealed secret.
    pub async fn insert_webhook(
        &self,
        id: Uuid,
        url: &str,
        events: &[String],
        secret_sealed: &str,
    ) -> Result<WebhookRecord, CatalogError> {
        let row = self
            .query_one(
                &format!(
                    "INSERT INTO tenantd.webhooks (id, url, events, secret_sealed) VALUES ($1, $2, $3, $4) \
                     RETURNING {WEBHOOK_COLUMNS}"
                ),
                &[&id, &url, &events, &secret_sealed],
            )
            .await?;
        Ok(webhook(&row))
    }

    /// Every endpoint, oldest first.
    pub async fn webhooks(&self) -> Result<Vec<WebhookRecord>, CatalogError> {
        let rows = self
            .query(&format!("SELECT {WEBHOOK_COLUMNS} FROM tenantd.webhooks ORDER BY created_at, id"), &[])
            .await?;
        Ok(rows.iter().map(webhook).collect())
    }

    /// One endpoint; [`CatalogError::NotFound`] when there is none.
    pub async fn webhook(&self, id: Uuid) -> Result<WebhookRecord, CatalogError> {
        let row = self
            .query_opt(&format!("SELECT {WEBHOOK_COLUMNS} FROM tenantd.webhooks WHERE id = $1"), &[&id])
            .await?;
        row.as_ref().map(webhook).ok_or_else(|| not_found(id))
    }

    /// Removes an endpoint and its deliveries.
    pub async fn delete_webhook(&self, id: Uuid) -> Result<(), CatalogError> {
        let n = self.execute("DELETE FROM tenantd.webhooks WHERE id = $1", &[&id]).await?;
        if n == 1 { Ok(()) } else { Err(not_found(id)) }
    }

    /// An endpoint's deliveries, newest first, at most `limit`.
    pub async fn webhook_deliveries(
        &self,
        id: Uuid,
        limit: i64,
    ) -> Result<Vec<DeliveryRecord>, CatalogError> {
        self.webhook(id).await?;
        let rows = self
            .query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM tenantd.webhook_deliveries WHERE webhook_id = $1 \
                     ORDER BY id DESC LIMIT $2"
                ),
                &[&id, &limit],
            )
            .await?;
        Ok(rows.iter().map(delivery).collect())
    }

    /// Claims up to `limit` due deliveries of enabled endpoints for `owner` for `lease`, and
    /// counts the attempt. Rows another daemon is claiming are skipped, not waited for.
    pub async fn claim_deliveries(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>, CatalogError> {
        let rows = self
            .query(
                concat!(
                    "WITH due AS (SELECT d.id FROM tenantd.webhook_deliveries d \
                       JOIN tenantd.webhooks w ON w.id = d.webhook_id \
                       WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND w.enabled AND ",
                    "(d.lease_until IS NULL OR d.lease_until < now())",
                    " ORDER BY d.next_attempt_at LIMIT $3 FOR UPDATE OF d SKIP LOCKED) \
                     UPDATE tenantd.webhook_deliveries d SET lease_owner = $1, \
                       lease_until = now() + make_interval(secs => $2), attempts = d.attempts + 1 \
                     FROM due, tenantd.webhooks w WHERE d.id = due.id AND w.id = d.webhook_id \
                     RETURNING d.id, d.message_id, d.event_type, d.payload, d.attempts, w.id, w.url, w.secret_sealed"
                ),
                &[&owner, &lease.as_secs_f64(), &limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ClaimedDelivery {
                id: r.get(0),
                message_id: r.get(1),
                event_type: r.get(2),
                payload: r.get(3),
                attempts: r.get(4),
                webhook_id: r.get(5),
                url: r.get(6),
                secret_sealed: r.get(7),
            })
            .collect())
    }

    /// Records the endpoint's 2xx answer. False when the claim was lost meanwhile (another
    /// daemon took it over after our lease ran out; it delivers again: at least once).
    pub async fn record_delivered(&self, id: i64, owner: &str, status: i32) -> Result<bool, CatalogError> {
        let n = self
            .execute(
                "UPDATE tenantd.webhook_deliveries SET status = $4, delivered_at = now(), \
                 last_attempt_at = now(), last_status = $3, last_error = NULL, lease_owner = NULL, \
                 lease_until = NULL WHERE id = $1 AND lease_owner = $2 AND status = $5",
                &[
                    &id,
                    &owner,
                    &status,
                    &DeliveryStatus::Delivered.as_str(),
                    &DeliveryStatus::Pending.as_str(),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Records a failed attempt: tried again after `retry_in`, or given up (`None`).
    pub async fn record_attempt_failed(
        &self,
        id: i64,
        owner: &str,
        status: Option<i32>,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<bool, CatalogError> {
        let next = if retry_in.is_some() { DeliveryStatus::Pending } else { DeliveryStatus::Failed };
        let n = self
            .execute(
                "UPDATE tenantd.webhook_deliveries SET status = $3, last_attempt_at = now(), last_status = $4, \
                 last_error = $5, next_attempt_at = now() + make_interval(secs => $6), lease_owner = NULL, \
                 lease_until = NULL WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                &[&id, &owner, &next.as_str(), &status, &error, &retry_in.map_or(0.0, |d| d.as_secs_f64())],
            )
            .await?;
        Ok(n == 1)
    }

    /// The endpoint answered 410 Gone: this delivery failed, the endpoint is disabled and its
    /// other pending deliveries are cancelled, in one statement.
    pub async fn record_gone(
        &self,
        id: i64,
        owner: &str,
        webhook: Uuid,
        reason: &str,
    ) -> Result<(), CatalogError> {
        self.execute(
            "WITH this AS (UPDATE tenantd.webhook_deliveries SET status = $5, last_attempt_at = now(), \
               last_status = 410, last_error = $4, lease_owner = NULL, lease_until = NULL \
               WHERE id = $1 AND lease_owner = $2 AND status = $6 RETURNING id), \
             hook AS (UPDATE tenantd.webhooks SET enabled = false, disabled_reason = $4 WHERE id = $3 RETURNING id) \
             UPDATE tenantd.webhook_deliveries SET status = $7, \
               last_error = 'endpoint disabled: ' || $4, lease_owner = NULL, lease_until = NULL \
             WHERE webhook_id IN (SELECT id FROM hook) AND status = $6 \
               AND id NOT IN (SELECT id FROM this)",
            &[
                &id,
                &owner,
                &webhook,
                &reason,
                &DeliveryStatus::Failed.as_str(),
                &DeliveryStatus::Pending.as_str(),
                &DeliveryStatus::Cancelled.as_str(),
            ],
        )
        .await?;
        Ok(())
    }

    /// Every endpoint's sealed secret, for key rotation: (id, sealed).
    pub async fn webhook_secrets(&self) -> Result<Vec<(Uuid, String)>, CatalogError> {
        let rows = self.query("SELECT id, secret_sealed FROM tenantd.webhooks ORDER BY id", &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Replaces an endpoint's sealed secret if it is still `old` (compare and swap); true
    /// when replaced.
    pub async fn reseal_webhook_secret(&self, id: Uuid, old: &str, new: &str) -> Result<bool, CatalogError> {
        let n = self
            .execute(
                "UPDATE tenantd.webhooks SET secret_sealed = $3 WHERE id = $1 AND secret_sealed = $2",
                &[&id, &old, &new],
            )
            .await?;
        Ok(n == 1)
    }
}
