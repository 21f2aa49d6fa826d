//! An application reaching "the database of tenant X" three ways:
//! 1. one-shot SQL over HTTP (serverless functions that cannot hold connections),
//! 2. a connection handle for an explicit transaction,
//! 3. its own connection, with the details tenantd hands out.
//!
//! ```sh
//! TENANT_TOKEN=tdt_... cargo run --example tenant_app -- acme
//! ```
//! Environment: `TENANTD_URL` (default `http://127.0.0.1:8080`), `TENANT_TOKEN` (the token
//! printed when the tenant was created; the admin token works too).

use serde_json::{Value, json};

struct Tenantd {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Tenantd {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Box<dyn std::error::Error>> {
        let mut request = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response.text().await?;
        let value: Value = if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? };
        if !status.is_success() {
            return Err(format!("{path}: {status}: {}", value["error"]).into());
        }
        Ok(value)
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let slug = std::env::args().nth(1).ok_or("usage: tenant_app SLUG")?;
    let tenantd = Tenantd {
        http: reqwest::Client::new(),
        base: std::env::var("TENANTD_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into()),
        token: std::env::var("TENANT_TOKEN").map_err(|_| "set TENANT_TOKEN")?,
    };
    let post = reqwest::Method::POST;

    // 1. One-shot SQL: parameters are bound by type; int8 and numeric come back as strings.
    let email = format!("ann+{}@example.com", std::process::id());
    let inserted = tenantd
        .call(
            post.clone(),
            &format!("/v1/tenants/{slug}/sql"),
            Some(json!({
                "sql": "INSERT INTO customers (email, name) VALUES ($1, $2) RETURNING id, created_at",
                "params": [email, "Ann"],
            })),
        )
        .await?;
    let customer = inserted["rows"][0]["id"].as_str().ok_or("no id")?.to_owned();
    println!("1. inserted customer {customer} at {}", inserted["rows"][0]["created_at"]);

    // 2. A handle: BEGIN/COMMIT are ours; nobody sees the order before COMMIT.
    let opened = tenantd
        .call(post.clone(), &format!("/v1/tenants/{slug}/handles"), Some(json!({ "ttl_seconds": 30 })))
        .await?;
    let handle = opened["handle"].as_str().ok_or("no handle")?;
    let on_handle = format!("/v1/handles/{handle}/sql");
    tenantd.call(post.clone(), &on_handle, Some(json!({ "sql": "BEGIN" }))).await?;
    let order = tenantd
        .call(
            post.clone(),
            &on_handle,
            Some(json!({
                "sql": "INSERT INTO orders (customer_id) VALUES ($1) RETURNING id", "params": [customer],
            })),
        )
        .await?;
    tenantd.call(post.clone(), &on_handle, Some(json!({ "sql": "COMMIT" }))).await?;
    tenantd.call(reqwest::Method::DELETE, &format!("/v1/handles/{handle}"), None).await?;
    println!("2. order {} committed through handle {handle}", order["rows"][0]["id"]);

    // 3. Our own connection as the tenant's role (what a long-running service would pool).
    let details = tenantd.call(reqwest::Method::GET, &format!("/v1/tenants/{slug}/connection"), None).await?;
    let url = details["url"].as_str().ok_or("no url")?;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT count(*) FROM orders WHERE customer_id = $1::text::bigint", &[&customer])
        .await?;
    println!(
        "3. own connection to {}: customer {customer} has {} order(s)",
        details["dbname"],
        row.get::<_, i64>(0)
    );
    Ok(())
}
