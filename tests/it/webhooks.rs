//! Webhooks: a real receiver on 127.0.0.1 that checks every Standard Webhooks signature;
//! events delivered signed, retried with the same `webhook-id`, a 410 disabling the endpoint,
//! private addresses refused, and no delivery lost when a daemon is killed mid-delivery.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};

use crate::common::{ProcessDaemon, TestApp, app, wait_for};

/// What the receiver answers to one request.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Never answers (the sender times out, or dies first).
    Hang,
}

/// One request as received.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

#[derive(Default)]
struct Inbox {
    got: Vec<Received>,
    script: VecDeque<Reply>,
}

/// An HTTP endpoint on 127.0.0.1 that records what it gets and answers from a script (then 204).
struct Receiver {
    url: String,
    inbox: Arc<Mutex<Inbox>>,
}

impl Receiver {
    async fn start(script: &[Reply]) -> Receiver {
        let inbox = Arc::new(Mutex::new(Inbox { got: Vec::new(), script: script.iter().copied().collect() }));
        let state = inbox.clone();
        let router = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    let header = |name: &str| {
                        headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
                    };
                    let reply = {
                        let mut inbox = state.lock().unwrap();
                        inbox.got.push(Received {
                            id: header("webhook-id"),
                            timestamp: header("webhook-timestamp"),
                            signature: header("webhook-signature"),
                            body: body.to_vec(),
                        });
                        inbox.script.pop_front().unwrap_or(Reply::Status(204))
                    };
                    match reply {
                        Reply::Status(code) => StatusCode::from_u16(code).unwrap(),
                        Reply::Hang => std::future::pending().await,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Receiver { url, inbox }
    }

    fn got(&self) -> Vec<Received> {
        self.inbox.lock().unwrap().got.clone()
    }

    /// Waits until at least `n` requests arrived; returns them all.
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        wait_for(&format!("{n} webhook request(s) at the receiver"), timeout, || async {
            let got = self.got();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

/// Verifies a request as a receiver must: HMAC-SHA256 keyed with the decoded `whsec_` secret
/// over `id.timestamp.body`, compared with each `v1,` signature; timestamp within 5 minutes.
fn verify(secret: &str, r: &Received) -> bool {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").expect("whsec_ prefix")).expect("base64 secret");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", r.id, r.timestamp).as_bytes());
    mac.update(&r.body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    let fresh = r.timestamp.parse::<i64>().is_ok_and(|t| (chrono::Utc::now().timestamp() - t).abs() < 300);
    fresh && r.signature.split(' ').any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

/// A daemon that may deliver to loopback, with fast retries.
async fn webhook_app() -> TestApp {
    app()
        .configure(|s| {
            s.webhooks.allow_private = true;
            s.webhooks.poll_interval = Duration::from_millis(100);
            s.webhooks.retry_delays = vec![Duration::from_millis(50); 3];
        })
        .spawn()
        .await
}

/// Adds an endpoint over HTTP; returns (id, secret).
async fn add_webhook(app: &TestApp, url: &str, events: &[&str]) -> (String, String) {
    let (status, body) = app.post("/v1/webhooks", &json!({ "url": url, "events": events })).await;
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().expect("the secret is shown on creation").to_owned();
    assert!(secret.starts_with("whsec_"), "{body}");
    (body["id"].as_str().unwrap().to_owned(), secret)
}

async fn deliveries(app: &TestApp, id: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/v1/webhooks/{id}/deliveries")).await;
    assert_eq!(status, 200, "{body}");
    body.as_array().unwrap().clone()
}

async fn wait_delivery(app: &TestApp, id: &str, status: &str) -> Value {
    wait_for(&format!("a {status} delivery of webhook {id}"), Duration::from_secs(30), || async {
        deliveries(app, id).await.into_iter().find(|d| d["status"] == status)
    })
    .await
}

#[tokio::test]
async fn tenant_events_are_delivered_signed() {
    let app = webhook_app().await;
    let receiver = Receiver::start(&[]).await;
    let (id, secret) = add_webhook(&app, &receiver.url, &["tenant.ready", "tenant.suspended"]).await;

    // The secret is shown once: never in listings, and stored sealed.
    let (_, list) = app.get("/v1/webhooks").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(!list.to_string().contains(&secret), "{list}");
    let (_, shown) = app.get(&format!("/v1/webhooks/{id}")).await;
    assert!(shown.get("secret").is_none() && shown["enabled"] == true, "{shown}");
    let sealed: String = app
        .catalog()
        .await
        .query_one("SELECT secret_sealed FROM tenantd.webhooks", &[])
        .await
        .unwrap()
        .get(0);
    assert!(sealed.starts_with("v1.") && !sealed.contains(&secret[6..]), "stored sealed");

    let (status, tenant) = app.post("/v1/tenants?wait=30", &json!({ "slug": "hooked" })).await;
    assert_eq!((status, tenant["status"].as_str()), (201, Some("READY")), "{tenant}");
    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    let ready = &got[0];
    assert!(verify(&secret, ready), "a valid signature: {ready:?}");
    assert!(ready.id.starts_with("msg_"), "{ready:?}");
    let body = ready.json();
    assert_eq!(body["type"], "tenant.ready", "{body}");
    assert_eq!(body["data"]["slug"], "hooked", "{body}");
    assert_eq!(body["data"]["tenant_id"], tenant["id"], "{body}");
    assert!(
        !verify("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", ready),
        "another key does not verify"
    );

    let (status, body) = app.post("/v1/tenants/hooked/suspend", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let got = receiver.wait_for(2, Duration::from_secs(30)).await;
    assert!(verify(&secret, &got[1]), "{:?}", got[1]);
    assert_eq!(got[1].json()["type"], "tenant.suspended");
    assert_ne!(got[0].id, got[1].id, "each event has its own webhook-id");

    let delivered = deliveries(&app, &id).await;
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert!(delivered.iter().all(|d| d["status"] == "delivered" && d["attempts"] == 1), "{delivered:?}");
    assert!(!Value::Array(delivered).to_string().contains(&secret));

    // The CLI sees the same, and removing the endpoint removes its deliveries.
    let listed = app.cli(&["webhook", "deliveries", &id, "--json"]).await;
    assert_eq!(listed.code, 0, "{listed:?}");
    assert_eq!(serde_json::from_str::<Value>(&listed.stdout).unwrap().as_array().unwrap().len(), 2);
    let (status, body) = app.request(reqwest::Method::DELETE, &format!("/v1/webhooks/{id}"), None).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = app.get(&format!("/v1/webhooks/{id}/deliveries")).await;
    assert_eq!(status, 404, "{body}");
    let listed = app.cli(&["webhook", "list", "--json"]).await;
    assert_eq!(listed.stdout.trim(), "[]", "{listed:?}");
}

#[tokio::test]
async fn failed_deliveries_are_retried_with_the_same_id_then_given_up() {
    let app = webhook_app().await;
    let flaky = Receiver::start(&[Reply::Status(500), Reply::Status(503), Reply::Status(502)]).await;
    let broken = Receiver::start(&[Reply::Status(500); 10]).await;
    let (flaky_id, flaky_secret) = add_webhook(&app, &flaky.url, &["tenant.ready"]).await;
    let (broken_id, _) = add_webhook(&app, &broken.url, &["tenant.ready"]).await;
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "retried" })).await;
    assert_eq!(status, 201, "{body}");

    // Three failures, then the fourth attempt is taken: one message, one id, all signed.
    let done = wait_delivery(&app, &flaky_id, "delivered").await;
    assert_eq!(done["attempts"], 4, "{done}");
    let got = flaky.got();
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(
        got.iter().all(|r| r.id == got[0].id && r.body == got[0].body),
        "same webhook-id and body: {got:?}"
    );
    assert!(got.iter().all(|r| verify(&flaky_secret, r)), "{got:?}");

    // An endpoint that keeps failing is given up after the last retry delay, and says why.
    let failed = wait_delivery(&app, &broken_id, "failed").await;
    assert_eq!(failed["attempts"], 4, "one attempt and three retries: {failed}");
    assert_eq!(failed["last_status"], 500, "{failed}");
    assert!(failed["last_error"].as_str().unwrap().contains("500"), "{failed}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(broken.got().len(), 4, "nothing more after giving up");
    let (_, hook) = app.get(&format!("/v1/webhooks/{broken_id}")).await;
    assert_eq!(hook["enabled"], true, "failures do not disable an endpoint: {hook}");
}

#[tokio::test]
async fn gone_disables_the_endpoint() {
    let app = webhook_app().await;
    let receiver = Receiver::start(&[Reply::Status(410)]).await;
    let (id, _) = add_webhook(&app, &receiver.url, &["tenant.ready"]).await;
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "gone-one" })).await;
    assert_eq!(status, 201, "{body}");
    let failed = wait_delivery(&app, &id, "failed").await;
    assert_eq!(failed["last_status"], 410, "{failed}");
    let (_, hook) = app.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(hook["enabled"], false, "{hook}");
    assert!(hook["disabled_reason"].as_str().unwrap().contains("410"), "{hook}");

    // A disabled endpoint gets nothing more.
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "gone-two" })).await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.got().len(), 1);
    assert_eq!(deliveries(&app, &id).await.len(), 1);
    let listed = app.cli(&["webhook", "list"]).await;
    assert!(listed.stdout.contains("disabled"), "{listed:?}");
    let removed = app.cli(&["webhook", "remove", &id]).await;
    assert_eq!(removed.code, 0, "{removed:?}");
    let (status, body) = app.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn private_addresses_are_refused_without_allow_private() {
    let app = app()
        .configure(|s| {
            s.webhooks.poll_interval = Duration::from_millis(100);
            s.webhooks.retry_delays = vec![Duration::from_secs(3600)];
        })
        .spawn()
        .await;
    let receiver = Receiver::start(&[]).await;
    for url in [receiver.url.as_str(), "http://10.1.2.3/hook", "http://[::1]:9/", "http://169.254.169.254/"] {
        let (status, body) =
            app.post("/v1/webhooks", &json!({ "url": url, "events": ["tenant.ready"] })).await;
        assert_eq!((status, body["error"]["code"].as_str()), (422, Some("url_refused")), "{url}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("allow_private"), "{body}");
    }
    let bad = [
        json!({ "url": "ftp://example.com/", "events": ["tenant.ready"] }),
        json!({ "url": "https://example.com/", "events": ["tenant.exploded"] }),
        json!({ "url": "https://example.com/", "events": [] }),
        json!({ "url": "https://example.com/" }),
    ];
    for body in bad {
        let (status, answer) = app.post("/v1/webhooks", &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["error"]["message"].is_string(), "{answer}");
    }
    let (status, body) = app.get("/v1/webhooks/not-a-uuid").await;
    assert_eq!(status, 400, "{body}");
    let cli = app.cli(&["webhook", "add", "http://192.168.0.1/", "--event", "tenant.ready"]).await;
    assert_eq!(cli.code, 2, "{cli:?}");
    assert!(cli.stderr.contains("allow_private"), "{cli:?}");

    // Checked again at delivery time: an endpoint added by a process that allowed private
    // addresses, under a name that resolves to loopback, is not reached by this daemon.
    let mut env = app.cli_env();
    env.insert("TENANTD_WEBHOOKS_ALLOW_PRIVATE".into(), "true".into());
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let added =
        crate::common::cli(&["webhook", "add", &by_name, "--event", "tenant.ready", "--json"], &env, None)
            .await;
    assert_eq!(added.code, 0, "{added:?}");
    let id = serde_json::from_str::<Value>(&added.stdout).unwrap()["id"].as_str().unwrap().to_owned();
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "rebound" })).await;
    assert_eq!(status, 201, "{body}");
    let refused = wait_for("a refused delivery attempt", Duration::from_secs(30), || async {
        deliveries(&app, &id).await.into_iter().find(|d| d["attempts"] == 1 && d["last_error"].is_string())
    })
    .await;
    assert_eq!(refused["status"], "pending", "{refused}");
    assert!(refused["last_error"].as_str().unwrap().contains("allow_private"), "{refused}");
    assert!(receiver.got().is_empty(), "nothing reached the loopback receiver");
}

#[tokio::test]
async fn no_delivery_is_lost_when_the_daemon_is_killed() {
    // The in-process daemon provisions but never looks at the outbox after its start.
    let app = app().configure(|s| s.webhooks.poll_interval = Duration::from_secs(3600)).spawn().await;
    let receiver = Receiver::start(&[Reply::Hang]).await;
    let mut env = app.cli_env();
    env.insert("TENANTD_WEBHOOKS_ALLOW_PRIVATE".into(), "true".into());
    let added = crate::common::cli(
        &["webhook", "add", &receiver.url, "--event", "tenant.ready", "--json"],
        &env,
        None,
    )
    .await;
    assert_eq!(added.code, 0, "{added:?}");
    let added: Value = serde_json::from_str(&added.stdout).unwrap();
    let (id, secret) =
        (added["id"].as_str().unwrap().to_owned(), added["secret"].as_str().unwrap().to_owned());

    let settings = [
        ("TENANTD_WEBHOOKS_ALLOW_PRIVATE", "true"),
        ("TENANTD_WEBHOOKS_POLL_INTERVAL", "100ms"),
        ("TENANTD_WEBHOOKS_TIMEOUT", "2s"),
    ];
    let mut first = ProcessDaemon::start(&app, &settings).await;
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "survivor" })).await;
    assert_eq!(status, 201, "{body}");
    // The first daemon is sending it (the receiver holds the request): kill -9 it now.
    let got = receiver.wait_for(1, Duration::from_secs(30)).await;
    first.kill().await;
    let pending = deliveries(&app, &id).await;
    assert_eq!((pending.len(), pending[0]["status"].as_str()), (1, Some("pending")), "{pending:?}");

    // Another daemon takes it over once the dead one's lease runs out, with the same id.
    let _second = ProcessDaemon::start(&app, &settings).await;
    let done = wait_delivery(&app, &id, "delivered").await;
    let again = receiver.got();
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(again[1].id, got[0].id, "the same webhook-id after the crash");
    assert!(verify(&secret, &again[1]), "{:?}", again[1]);
    assert_eq!(again[1].json()["data"]["slug"], "survivor");
    assert_eq!(done["attempts"], 2, "{done}");
}

#[tokio::test]
async fn webhook_secrets_are_resealed_by_key_rotation() {
    let app = webhook_app().await;
    add_webhook(&app, "http://127.0.0.1:9/hook", &["tenant.error"]).await;
    let status = app.cli(&["keys", "status", "--json"]).await;
    let keys: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(keys[0]["webhooks"], 1, "{keys}");

    let old_key = secrecy::ExposeSecret::expose_secret(&app.master_key).to_owned();
    let new_key = secrecy::ExposeSecret::expose_secret(&tenantd::crypto::generate_master_key()).to_owned();
    let mut env = app.cli_env();
    env.insert("TENANTD_MASTER_KEY".into(), new_key);
    env.insert("TENANTD_OLD_MASTER_KEYS".into(), old_key);
    let rotated = crate::common::cli(&["keys", "rotate"], &env, None).await;
    assert_eq!(rotated.code, 0, "{rotated:?}");
    assert!(rotated.stdout.contains("1 webhook secret(s)"), "{}", rotated.stdout);
    let status = crate::common::cli(&["keys", "status", "--json"], &env, None).await;
    let keys: Value = serde_json::from_str(&status.stdout).unwrap();
    let webhooks: Vec<(bool, i64)> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["webhooks"].as_i64() > Some(0))
        .map(|k| (k["current"].as_bool().unwrap(), k["webhooks"].as_i64().unwrap()))
        .collect();
    assert_eq!(webhooks, vec![(true, 1)], "only the new key seals the webhook secret: {keys}");
}

#[tokio::test]
async fn a_finished_move_is_delivered_as_tenant_moved() {
    let second = crate::common::TestCluster::start();
    let app = webhook_app().await;
    let (status, body) =
        app.post("/v1/servers", &json!({ "name": "pg2", "url": second.admin_url("postgres") })).await;
    assert_eq!(status, 201, "{body}");
    let (status, tenant) =
        app.post("/v1/tenants?wait=30", &json!({ "slug": "mover", "server": "pg1" })).await;
    assert_eq!((status, tenant["status"].as_str()), (201, Some("READY")), "{tenant}");
    let receiver = Receiver::start(&[]).await;
    let (_, secret) = add_webhook(&app, &receiver.url, &["tenant.moved"]).await;

    let (status, op) = app.post("/v1/tenants/mover/move", &json!({ "to": "pg2" })).await;
    assert_eq!(status, 202, "{op}");
    let got = receiver.wait_for(1, Duration::from_secs(60)).await;
    assert!(verify(&secret, &got[0]), "{:?}", got[0]);
    let body = got[0].json();
    assert_eq!(
        (body["type"].as_str(), body["data"]["slug"].as_str()),
        (Some("tenant.moved"), Some("mover")),
        "{body}"
    );
    assert_eq!(body["data"]["tenant_id"], tenant["id"], "{body}");
    // Delivered once the move is over: the tenant is READY on the target by then.
    let (_, moved) = app.get("/v1/tenants/mover").await;
    assert_eq!((moved["status"].as_str(), moved["server"].as_str()), (Some("READY"), Some("pg2")), "{moved}");
    assert_eq!(receiver.got().len(), 1, "only tenant.moved was subscribed to: {:?}", receiver.got());
}
