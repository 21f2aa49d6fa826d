//! Signed admin requests (`http.require_signature`): the admin token alone is not enough.

use secrecy::SecretString;
use serde_json::{Value, json};
use tenantd::api::signature;

use crate::common::app;

const SECRET: &str = "a shared secret of more than 32 characters";

#[tokio::test]
async fn admin_requests_need_a_fresh_signature_when_required() {
    let app = app()
        .without_server()
        .configure(|s| {
            s.http.require_signature = true;
            s.http.signature_secret = Some(SecretString::from(SECRET));
        })
        .spawn()
        .await;
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, target: &str, body: Option<Value>, header: Option<String>| {
        let mut req = http.request(method, format!("{}{target}", app.base)).bearer_auth(&app.admin_token);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body.to_string());
        }
        if let Some(header) = header {
            req = req.header("x-tenantd-signature", header);
        }
        async move {
            let response = req.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let now = chrono::Utc::now().timestamp();
    let key = SECRET.as_bytes();

    // The token alone: 401, saying what is missing.
    let (status, body) = send(reqwest::Method::GET, "/v1/servers", None, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("bad_signature")), "{body}");

    // Signed: accepted, GET and POST with a body.
    let header = signature::sign(key, "GET", "/v1/servers", b"", now);
    let (status, body) = send(reqwest::Method::GET, "/v1/servers", None, Some(header)).await;
    assert_eq!(status, 200, "{body}");
    let create = json!({ "url": "https://hooks.example.com/x", "events": ["tenant.ready"] });
    let header = signature::sign(key, "POST", "/v1/webhooks", create.to_string().as_bytes(), now);
    let (status, body) =
        send(reqwest::Method::POST, "/v1/webhooks", Some(create.clone()), Some(header)).await;
    assert!(
        status == 201 || body["error"]["code"] == "url_refused",
        "the signature was accepted: {status} {body}"
    );

    // A replay after the window, a signature of another body or route, a wrong key: 401.
    let stale = signature::sign(key, "GET", "/v1/servers", b"", now - 600);
    let other_body = signature::sign(key, "POST", "/v1/webhooks", b"{}", now);
    let other_route = signature::sign(key, "GET", "/v1/tenants", b"", now);
    let other_key = signature::sign(b"not the shared secret at all, no", "GET", "/v1/servers", b"", now);
    for (method, target, body, header) in [
        (reqwest::Method::GET, "/v1/servers", None, stale),
        (reqwest::Method::POST, "/v1/webhooks", Some(create), other_body),
        (reqwest::Method::GET, "/v1/servers", None, other_route),
        (reqwest::Method::GET, "/v1/servers", None, other_key),
    ] {
        let (status, answer) = send(method, target, body, Some(header.clone())).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (401, Some("bad_signature")),
            "{header}: {answer}"
        );
    }
    // Probes need no signature.
    let (status, body) = send(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200, "{body}");
}
