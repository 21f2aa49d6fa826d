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

use super::address;
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

/// The HTTP client of deliveries: HTTP/1.1 over TCP (TLS for `https`), connecting only to
/// addresses [`address::resolve_checked`] let through (so a name cannot be re-pointed at a
/// private address between the check and the connection), no redirects followed, no proxy,
/// `webhooks.timeout` for the whole exchange.
#[derive(Debug, Clone)]
pub struct Deliverer {
    tls: Arc<rustls::ClientConfig>,
    settings: WebhookSettings,
}

impl Deliverer {
    /// Builds the client for `settings`: TLS with the system's trusted CA certificates.
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
        Ok(Deliverer { tls: Arc::new(tls), settings: settings.clone() })
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
        let outcomes =
            futures::future::join_all(claimed.into_iter().map(|d| attempt(core, deliverer, d))).await;
        // The first failure ends the round (its caller logs and counts it); any others of the
        // same batch are logged here. Their deliveries keep their leases and are tried again
        // once those run out.
        let mut failures = outcomes.into_iter().filter_map(Result::err);
        if let Some(first) = failures.next() {
            for other in failures {
                tracing::warn!(error = %other, "webhook delivery outcome could not be recorded");
            }
            return Err(first);
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
            tracing::warn!(parent: &span, "webhook endpoint answered 410 Gone: endpoint disabled");
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
                tracing::warn!(parent: &span, %error, retry_in = ?delay, "webhook delivery failed; will retry");
            } else {
                metrics::counter!("tenantd_webhook_deliveries_total", "result" => "failed").increment(1);
                tracing::error!(parent: &span, %error, "webhook delivery failed; retries exhausted, given up");
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
    let url = match address::parse_url(&d.url) {
        Ok(url) => url,
        Err(e) => return failed(e.to_string()),
    };
    let body = match serde_json::to_string(&d.payload) {
        Ok(body) => body,
        Err(e) => return failed(format!("cannot serialise the payload: {e}")),
    };
    let timestamp = chrono::Utc::now().timestamp();
    let signature = match signing::sign(secret, &d.message_id, timestamp, body.as_bytes()) {
        Ok(s) => s,
        Err(e) => return failed(e.to_string()),
    };
    let headers = [
        ("content-type", "application/json".to_owned()),
        ("user-agent", concat!("tenantd-webhooks/", env!("CARGO_PKG_VERSION")).to_owned()),
        ("webhook-id", d.message_id.clone()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", signature),
    ];
    let timeout = deliverer.settings.timeout;
    let (status, answer) = match tokio::time::timeout(timeout, post(deliverer, &url, &headers, body)).await {
        Err(_) => return failed(format!("no answer within {timeout:?}")),
        Ok(Err(error)) => return failed(error),
        Ok(Ok(answer)) => answer,
    };
    if status.is_success() {
        return Answer::Delivered(status.as_u16());
    }
    if status == hyper::StatusCode::GONE {
        return Answer::Gone;
    }
    let text = String::from_utf8_lossy(&answer);
    let what = if status.is_redirection() { " (redirects are not followed)" } else { "" };
    Answer::Failed {
        status: Some(status.as_u16()),
        error: format!("the endpoint answered {status}{what}: {}", text.trim()),
    }
}

/// One POST on a new connection: the status and the start of the answer's body.
async fn post(
    deliverer: &Deliverer,
    url: &url::Url,
    headers: &[(&str, String)],
    body: String,
) -> Result<(hyper::StatusCode, Vec<u8>), String> {
    let host = url.host_str().unwrap_or_default();
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(443);
    // Resolved and checked now, at every attempt; only these addresses are connected to.
    let addrs = address::resolve_checked(bare_host, port, deliverer.settings.allow_private)
        .await
        .map_err(|e| e.to_string())?;
    let tcp = connect(&addrs).await?;
    let mut request = hyper::Request::post(&url[url::Position::BeforePath..url::Position::AfterQuery])
        .header(hyper::header::HOST, &url[url::Position::BeforeHost..url::Position::AfterPort]);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    let request = request.body(body).map_err(|e| format!("cannot build the request: {e}"))?;
    let response = if url.scheme() == "https" {
        let name = rustls::pki_types::ServerName::try_from(bare_host.to_owned())
            .map_err(|e| format!("{host} is not a valid TLS server name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(deliverer.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host} failed: {e}"))?;
        exchange(stream, request, deliverer.settings.timeout).await?
    } else {
        exchange(tcp, request, deliverer.settings.timeout).await?
    };
    let status = response.status();
    let mut body = response.into_body();
    let mut kept = Vec::new();
    while kept.len() < ANSWER_KEPT {
        let frame =
            std::future::poll_fn(|cx| hyper::body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)).await;
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    kept.extend_from_slice(data);
                }
            }
            // The status is what counts; a body cut short does not change it.
            Some(Err(_)) | None => break,
        }
    }
    kept.truncate(ANSWER_KEPT);
    Ok((status, kept))
}

/// A TCP connection to the first of `addrs` that accepts.
async fn connect(addrs: &[std::net::SocketAddr]) -> Result<tokio::net::TcpStream, String> {
    let mut errors = Vec::new();
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    Err(format!("cannot connect: {}", errors.join("; ")))
}

/// Sends `request` over `stream` with HTTP/1.1.
async fn exchange<S>(
    stream: S,
    request: hyper::Request<String>,
    timeout: Duration,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| describe(&e))?;
    // The connection is driven beside the request; it ends when the answer has been read and
    // `sender` is dropped, and at the latest after `timeout` (an endpoint that never answers
    // does not keep a socket open).
    let driven = tokio::spawn(async move {
        match tokio::time::timeout(timeout, connection).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "webhook connection ended with an error"),
            Err(_) => tracing::debug!("webhook connection closed after the timeout"),
        }
    });
    let answer = sender.send_request(request).await.map_err(|e| describe(&e));
    if answer.is_err() {
        driven.abort();
    }
    answer
}

/// An error as one line, with its causes.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
