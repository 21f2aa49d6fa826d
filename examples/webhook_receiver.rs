//! A webhook receiver that verifies tenantd's signatures (Standard Webhooks) and handles each
//! event once.
//!
//! ```sh
//! tenantd webhook add http://127.0.0.1:9000/hook --event tenant.ready,tenant.error
//! WEBHOOK_SECRET=whsec_... cargo run --example webhook_receiver
//! ```
//! (A loopback URL needs `webhooks.allow_private = true` on the daemon; in production the
//! receiver sits at a public https:// URL.) Environment: `WEBHOOK_SECRET` (printed once by
//! `webhook add`), `WEBHOOK_LISTEN` (default `127.0.0.1:9000`).
//!
//! Verification: HMAC-SHA256, keyed with the base64-decoded part of the secret after
//! `whsec_`, of `"<webhook-id>.<webhook-timestamp>.<raw body>"`, base64-encoded, compared in
//! constant time with each `v1,<signature>` of the `webhook-signature` header; timestamps more
//! than 5 minutes away are refused (replays). Deliveries are at least once: a retry carries
//! the same `webhook-id`, so the receiver remembers the ids it has handled.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use subtle::ConstantTimeEq;

/// Largest clock difference accepted, in seconds.
const TOLERANCE: i64 = 5 * 60;

struct Receiver {
    key: Vec<u8>,
    seen: Mutex<HashSet<String>>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = std::env::var("WEBHOOK_SECRET").map_err(|_| "set WEBHOOK_SECRET to the whsec_... secret")?;
    let key =
        STANDARD.decode(secret.trim().strip_prefix("whsec_").ok_or("the secret starts with whsec_")?)?;
    let listen = std::env::var("WEBHOOK_LISTEN").unwrap_or_else(|_| "127.0.0.1:9000".into());
    let state = Arc::new(Receiver { key, seen: Mutex::new(HashSet::new()) });
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(state);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("listening on http://{listen}/hook");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn hook(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) =
        (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"))
    else {
        return StatusCode::BAD_REQUEST;
    };
    if let Err(why) = verify(&receiver.key, id, timestamp, signatures, &body) {
        eprintln!("refused {id}: {why}");
        return StatusCode::UNAUTHORIZED;
    }
    if !receiver.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.to_owned()) {
        eprintln!("{id}: already handled (a retry)");
        return StatusCode::NO_CONTENT;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(event) => println!("{} {} {}", event["type"], event["data"]["slug"], event["timestamp"]),
        Err(e) => eprintln!("{id}: signed, but not JSON: {e}"),
    }
    // Answer fast (within tenantd's 10 s); do slow work after answering.
    StatusCode::NO_CONTENT
}

/// Checks the timestamp window and the signature.
fn verify(key: &[u8], id: &str, timestamp: &str, signatures: &str, body: &[u8]) -> Result<(), &'static str> {
    let sent: i64 = timestamp.parse().map_err(|_| "bad timestamp")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "clock before 1970")?
        .as_secs();
    if (i64::try_from(now).map_err(|_| "clock")? - sent).abs() > TOLERANCE {
        return Err("timestamp outside the 5-minute window");
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).map_err(|_| "bad key")?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    let matches = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| bool::from(s.as_bytes().ct_eq(expected.as_bytes())));
    if matches { Ok(()) } else { Err("no valid signature") }
}
