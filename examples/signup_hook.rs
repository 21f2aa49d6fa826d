//! A sign-up hook: asks tenantd for a tenant and waits until it is READY.
//!
//! ```sh
//! cargo run --example signup_hook -- acme
//! ```
//! Environment: `TENANTD_URL` (default `http://127.0.0.1:8080`), `TENANTD_TOKEN` (admin token;
//! default: `./tenantd-data/admin-token` of the embedded default). Safe to retry: a second
//! call for the same slug answers 200 with the existing tenant instead of creating another.

use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let slug = std::env::args().nth(1).ok_or("usage: signup_hook SLUG")?;
    let base = std::env::var("TENANTD_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let token = match std::env::var("TENANTD_TOKEN") {
        Ok(t) => t,
        Err(_) => std::fs::read_to_string("tenantd-data/admin-token")?.trim().to_owned(),
    };
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/tenants?wait=30"))
        .bearer_auth(token)
        .json(&json!({ "slug": slug, "labels": { "source": "signup" } }))
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        return Err(format!("tenantd said {status}: {}", body["error"]["message"]).into());
    }
    match body["status"].as_str() {
        Some("READY") => println!("tenant {slug} is READY on server {}", body["server"]),
        Some("ERROR") => return Err(format!("tenant {slug} failed: {}", body["last_error"]).into()),
        other => println!("tenant {slug} is still {other:?}; poll GET /v1/tenants/{slug}"),
    }
    match body["token"].as_str() {
        // Shown once: store it with the customer's account (a secret manager in real life).
        Some(tenant_token) => println!("tenant token: {tenant_token}"),
        None => println!("tenant existed already (idempotent retry); its token was shown at creation"),
    }
    Ok(())
}
