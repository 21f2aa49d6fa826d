//! Delivering the outbox: claim due deliveries, sign, POST, record the outcome.
//!
//! At least once: a delivery is claimed with a lease longer than one attempt can take, and is
//! marked delivered only after the endpoint's 2xx; a daemon that dies in between leaves the
//! lease to run out, and any daemon sends it again, with the same `webhook-id`. Every outcome
//! is recorded on the delivery row, logged and counted (`tenantd_webhook_deliveries_total`
//! by `result`: `delivered`, `retry`, `failed`, `gone`).

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::address::{self, CheckedResolver};
use super::signing;
use crate::catalog::CatalogError;
use crate::catalog::webhooks::ClaimedDelivery;
use crate::config::WebhookSettings;
use crate::core::Core;

/// Deliveries claimed (and sent concurrently) at once by one daemon.
const BATCH: i64 = 16;
/// Longest part of an endpoint's answer kept on the delivery row.
const ANSWER_KEPT: usize = 512;

/// Why the delivery client cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {0}")]
pub struct ClientError(String);

/// The HTTP client of deliveries: no redirects, no proxy, `webhooks.timeout`, and a resolver
/// that refuses private addresses at every connection (unless `webhooks.allow_private`).
#[derive(Debug, Clone)]
pub struct Deliverer {
    client: reqwest::Client,
    settings: WebhookSettings,
}

impl Deliverer {
    /// Builds the client for `settings`.
    pub fn new(settings: &WebhookSettings) -> Result<Deliverer, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!("no trusted CA certificates found: webhooks to https:// URLs will fail");
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(crate::pgtls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .dns_resolver(Arc::new(CheckedResolver { allow_private: settings.allow_private }))
            .user_agent(concat!("tenantd-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError(e.to_string()))?;
        Ok(Deliverer { client, settings: settings.clone() })
    }

    /// How long a claim lasts: longer than any one attempt.
    fn lease(&self) -> Duration {
        self.settings.timeout + Duration::from_secs(5)
    }
}

/// Delivers what is due now, batch by batch, until nothing is; returns how many deliveries
/// were attempted. A catalog failure ends the round (the next one tries again).
pub async fn round(core: &Core, deliverer: &Deliverer) -> Result<usize, CatalogError> {
    let mut attempted = 0;
    loop {
        let claimed = core.catalog.claim_deliveries(&core.instance, deliverer.lease(), BATCH).await?;
        let n = claimed.len();
        attempted += n;
        let outcomes = futures::future::join_all(claimed.into_iter().map(|d| attempt(core, deliverer, d))).await;
        for outcome in outcomes {
            outcome?;
        }
        if n < usize::try_from(BATCH).unwrap_or(usize::MAX) {
            return Ok(attempted);
        }
    }
}

/// What one attempt came to.
enum Answer {
    /// 2xx.
    Delivered(u16),
    /// 410 Gone: the endpoint does not want more.
    Gone,
    /// Anything else: worth another attempt (`status` when the endpoint answered).
    Failed { status: Option<u16>, error: String },
}

/// One attempt at one claimed delivery, its outcome recorded.
async fn attempt(core: &Core, deliverer: &Deliverer, d: ClaimedDelivery) -> Result<(), CatalogError> {
    let span = tracing::info_span!("webhook", webhook = %d.webhook_id, delivery = d.id, event = %d.event_type, attempt = d.attempts);
    let answer = match core.keyring.open(&d.secret_sealed, &crate::crypto::webhook_aad(d.webhook_id)) {
        Ok(secret) => send(deliverer, &d, &secret).await,
        Err(e) => Answer::Failed { status: None, error: format!("the webhook's secret does not open: {e}") },
    };
    let owner = core.instance.as_str();
    let recorded = match answer {
        Answer::Delivered(status) => {
            metrics::counter!("tenantd_webhook_deliveries_total", "result" => "delivered").increment(1);
            tracing::debug!(parent: &span, status, "webhook delivered");
            core.catalog.record_delivered(d.id, owner, i32::from(status)).await?
        }
        Answer::Gone => {
            metrics::counter!("tenantd_webhook_deliveries_total", "result" => "gone").increment(1);
            tracing::warn!(parent: &span, url = %d.url, "webhook endpoint answered 410 Gone: endpoint disabled");
            let reason = "the endpoint answered 410 Gone";
            core.catalog.record_gone(d.id, owner, d.webhook_id, reason).await?;
            true
        }
        Answer::Failed { status, error } => {
            let retry_in = usize::try_from(d.attempts - 1)
                .ok()
                .and_then(|i| deliverer.settings.retry_delays.get(i))
                .copied();
            let status = status.map(i32::from);
            if let Some(delay) = retry_in {
                metrics::counter!("tenantd_webhook_deliveries_total", "result" => "retry").increment(1);
                tracing::warn!(parent: &span, url = %d.url, %error, retry_in = ?delay, "webhook delivery failed; will retry");
            } else {
                metrics::counter!("tenantd_webhook_deliveries_total", "result" => "failed").increment(1);
                tracing::error!(parent: &span, url = %d.url, %error, "webhook delivery failed; retries exhausted, given up");
            }
            core.catalog.record_attempt_failed(d.id, owner, status, &error, retry_in).await?
        }
    };
    if !recorded {
        tracing::info!(parent: &span, "webhook delivery was taken over by another daemon meanwhile; its outcome is theirs");
    }
    Ok(())
}

/// Signs and POSTs the delivery.
async fn send(deliverer: &Deliverer, d: &ClaimedDelivery, secret: &SecretString) -> Answer {
    let failed = |error: String| Answer::Failed { status: None, error };
    // Names are checked by the client's resolver at connection time; an address written in
    // the URL never reaches a resolver, so it is checked here.
    let url = match address::parse_url(&d.url) {
        Ok(url) => url,
        Err(e) => return failed(e.to_string()),
    };
    if let Some(host) = url.host_str()
        && let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>()
        && !deliverer.settings.allow_private
        && !address::is_public(ip)
    {
        return failed(address::AddressError::Private { host: host.to_owned(), addr: ip }.to_string());
    }
    let body = match serde_json::to_vec(&d.payload) {
        Ok(body) => body,
        Err(e) => return failed(format!("cannot serialise the payload: {e}")),
    };
    let timestamp = chrono::Utc::now().timestamp();
    let signature = match signing::sign(secret, &d.message_id, timestamp, &body) {
        Ok(s) => s,
        Err(e) => return failed(e.to_string()),
    };
    let sent = deliverer
        .client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &d.message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let mut response = match sent {
        Ok(r) => r,
        Err(e) => return failed(describe(&e, deliverer.settings.timeout)),
    };
    let status = response.status();
    if status.is_success() {
        return Answer::Delivered(status.as_u16());
    }
    if status == reqwest::StatusCode::GONE {
        return Answer::Gone;
    }
    // Keep the start of the answer for the operator; never read more than that.
    let mut kept = Vec::new();
    while kept.len() < ANSWER_KEPT {
        match response.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    kept.truncate(ANSWER_KEPT);
    let text = String::from_utf8_lossy(&kept);
    let what = if status.is_redirection() { " (redirects are not followed)" } else { "" };
    Answer::Failed {
        status: Some(status.as_u16()),
        error: format!("the endpoint answered {status}{what}: {}", text.trim()),
    }
}

/// A transport error as one line, with its causes.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no answer within {timeout:?}");
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
