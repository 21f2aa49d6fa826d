//! TLS to PostgreSQL: a real cluster with `ssl=on`, certificates made here, and a
//! `pg_hba.conf` that lets tenantd's roles in only over TLS. Every connection tenantd opens
//! (catalog, admin, tenant pools, pg_dump) must be encrypted and verified as the URL says.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::common::{TestCluster, app};

/// Certificates of a test: a CA, a server certificate for `localhost` signed by it (in the
/// cluster's data directory), and an unrelated CA.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
}

fn new_ca(name: &str) -> (rcgen::CertificateParams, rcgen::KeyPair, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (params, key, cert)
}

/// Writes a file owned like `like` (the data directory: PostgreSQL refuses a key it does not
/// own), mode 0600.
fn write_owned(path: &Path, text: &str, like: &Path) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let owner = std::fs::metadata(like).unwrap();
    std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid())).unwrap();
}

/// A cluster that speaks TLS and admits tenantd's roles only over TLS (the superuser keeps a
/// plaintext way in, for the test's own inspection).
async fn tls_cluster() -> (TestCluster, Pki) {
    let cluster = TestCluster::start_owned();
    let data = cluster.data_dir();
    let (ca_params, ca_key, ca_cert) = new_ca("tenantd test CA");
    let (_, _, other_cert) = new_ca("someone else's CA");
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    write_owned(&data.join("server.crt"), &server_cert.pem(), &data);
    write_owned(&data.join("server.key"), &server_key.serialize_pem(), &data);
    std::fs::write(
        data.join("pg_hba.conf"),
        "hostnossl all postgres 127.0.0.1/32 scram-sha-256\n\
         hostssl all all 127.0.0.1/32 scram-sha-256\n\
         hostssl all all ::1/128 scram-sha-256\n",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ca, other_ca) = (dir.path().join("ca.pem"), dir.path().join("other-ca.pem"));
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&other_ca, other_cert.pem()).unwrap();
    let su = cluster.superuser("postgres").await;
    for statement in ["ALTER SYSTEM SET ssl = on", "SELECT pg_catalog.pg_reload_conf()"] {
        su.batch_execute(statement).await.unwrap();
    }
    crate::common::wait_for("ssl = on", std::time::Duration::from_secs(10), || async {
        let row = cluster.superuser("postgres").await.query_one("SHOW ssl", &[]).await.unwrap();
        (row.get::<_, String>(0) == "on").then_some(())
    })
    .await;
    (cluster, Pki { _dir: dir, ca, other_ca })
}

fn admin_url(cluster: &TestCluster, host: &str, params: &str) -> String {
    format!(
        "postgres://tenantd_admin:{}@{host}:{}/postgres?{params}",
        cluster.admin_password.expose_secret(),
        cluster.port
    )
}

fn message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn verify_full_works_end_to_end_and_wrong_settings_are_refused_with_the_reason() {
    let (cluster, pki) = tls_cluster().await;
    let ca = pki.ca.display().to_string();
    // The catalog itself is on the TLS cluster, verified: migrations, pool and LISTEN.
    let catalog_db = cluster.create_database("catalog").await;
    let catalog_url = format!(
        "postgres://tenantd_admin:{}@localhost:{}/{catalog_db}?sslmode=verify-full&sslrootcert={ca}",
        cluster.admin_password.expose_secret(),
        cluster.port
    );
    let app = app()
        .without_server()
        .configure(move |s| s.catalog_url = Some(SecretString::from(catalog_url)))
        .spawn()
        .await;

    let not_pem = pki.ca.with_file_name("not-pem.txt");
    std::fs::write(&not_pem, "-----BEGIN CERTIFICATE-----\nsecret-looking text\n").unwrap();
    // Wrong settings: refused, naming the server and why; nothing is registered.
    let wrong = [
        (
            admin_url(
                &cluster,
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={}", pki.other_ca.display()),
            ),
            422,
            "certificate",
        ),
        (
            admin_url(&cluster, "127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}")),
            422,
            "not valid for name",
        ),
        (admin_url(&cluster, "localhost", "sslmode=disable"), 422, "no encryption"),
        (admin_url(&cluster, "localhost", "sslmode=verify-full"), 400, "needs sslrootcert"),
        (
            admin_url(&cluster, "localhost", "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
            400,
            "/nonexistent/ca.pem",
        ),
        (admin_url(&cluster, "localhost", "sslmode=bogus"), 400, "invalid sslmode"),
        // require with a CA checks the chain, as libpq does.
        (
            admin_url(
                &cluster,
                "localhost",
                &format!("sslmode=require&sslrootcert={}", pki.other_ca.display()),
            ),
            422,
            "certificate",
        ),
        // The system's roots prove nothing without the host name.
        (admin_url(&cluster, "localhost", "sslmode=verify-ca&sslrootcert=system"), 400, "verify-full"),
        // A '?' in an unencoded password would hide where the settings begin.
        (
            format!(
                "postgres://tenantd_admin:pa?ss@localhost:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
                cluster.port
            ),
            400,
            "percent-encode",
        ),
        // Files that are not PEM are refused without repeating them.
        (
            admin_url(&cluster, "localhost", "sslmode=require&sslcert=/dev/zero&sslkey=/dev/zero"),
            400,
            "not a regular file",
        ),
        (
            admin_url(
                &cluster,
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={}", not_pem.display()),
            ),
            400,
            "not a valid PEM",
        ),
    ];
    for (url, status, reason) in &wrong {
        let (got, body) = app.post("/v1/servers", &json!({ "name": "tls", "url": url })).await;
        assert_eq!(got, *status, "{url}: {body}");
        let text = message(&body);
        assert!(text.contains(reason), "{url}: expected {reason:?} in {text}");
        if *status == 422 {
            assert!(text.contains(&format!(":{}/", cluster.port)), "the server is named: {text}");
        }
        assert!(!text.contains(cluster.admin_password.expose_secret()), "no password in errors: {text}");
        assert!(!text.contains("pa?ss") && !text.contains("secret-looking"), "nothing echoed: {text}");
    }
    let (_, servers) = app.get("/v1/servers").await;
    assert_eq!(servers.as_array().map(Vec::len), Some(0), "{servers}");

    // verify-ca checks the chain only (any host name); require without a CA encrypts only.
    // Neither takes tenants here.
    for (name, url) in [
        ("tls-ca", admin_url(&cluster, "127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"))),
        ("tls-require", admin_url(&cluster, "127.0.0.1", "sslmode=require")),
    ] {
        let (status, body) =
            app.post("/v1/servers", &json!({ "name": name, "url": url, "max_tenants": 0 })).await;
        assert_eq!(status, 201, "{name}: {body}");
    }
    let (status, body) = app
        .post(
            "/v1/servers",
            &json!({ "name": "tls-ca-wrong", "url": admin_url(&cluster, "127.0.0.1",
                &format!("sslmode=verify-ca&sslrootcert={}", pki.other_ca.display())) }),
        )
        .await;
    assert_eq!(status, 422, "verify-ca still checks the chain: {body}");

    // Changing a server's TLS settings: tried first, saved only when a connection works.
    let (status, body) = app
        .patch("/v1/servers/tls-ca", &json!({ "tls": { "sslmode": "verify-full", "sslrootcert": ca } }))
        .await;
    assert_eq!(status, 422, "127.0.0.1 is not the certificate's name: {body}");
    assert!(message(&body).contains("not valid for name"), "{body}");
    let (_, body) = app.get("/v1/servers/tls-ca").await;
    assert_eq!(body["tls"]["sslmode"], "verify-ca", "unchanged: {body}");
    let (status, body) = app
        .patch("/v1/servers/tls-require", &json!({ "tls": { "sslmode": "verify-ca", "sslrootcert": ca } }))
        .await;
    assert_eq!((status, body["tls"]["sslmode"].as_str()), (200, Some("verify-ca")), "{body}");
    let (status, body) =
        app.patch("/v1/servers/tls-require", &json!({ "tls": { "sslmode": "verify-ca" } })).await;
    assert_eq!(status, 400, "verify-ca needs a CA: {body}");

    // verify-full with the right CA and host name: add, provision, lend, dump.
    let url = admin_url(&cluster, "localhost", &format!("sslmode=verify-full&sslrootcert={ca}"));
    let (status, body) = app.post("/v1/servers", &json!({ "name": "tls", "url": url })).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["tls"]["sslmode"], "verify-full", "{body}");
    let (status, body) = app.post("/v1/tenants?wait=30", &json!({ "slug": "secure" })).await;
    assert_eq!((status, body["status"].as_str()), (201, Some("READY")), "{body}");
    assert_eq!(body["server"], "tls", "{body}");
    let token = body["token"].as_str().unwrap().to_owned();

    let (status, body) = app
        .request_as(
            Method::POST,
            "/v1/tenants/secure/sql",
            Some(&json!({ "sql": "SELECT ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()" })),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["ssl"], true, "the lent connection is encrypted: {body}");

    let (status, details) =
        app.request_as(Method::GET, "/v1/tenants/secure/connection", None, Some(&token)).await;
    assert_eq!(status, 200, "{details}");
    assert_eq!(details["sslmode"], "verify-full", "{details}");
    assert!(details["url"].as_str().unwrap().ends_with("?sslmode=verify-full"), "{details}");
    assert!(!details["url"].as_str().unwrap().contains("sslrootcert"), "daemon paths stay inside: {details}");

    let dump = app
        .http
        .post(format!("{}/v1/tenants/secure/dumps", app.base))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(dump.status(), 200);
    let bytes = dump.bytes().await.unwrap();
    assert!(bytes.starts_with(b"PGDMP"), "pg_dump over verify-full TLS produced a dump");

    // Every session of tenantd's roles on this server is encrypted (catalog, admin, tenant).
    let su = cluster.superuser("postgres").await;
    let row = su
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) \
             FROM pg_catalog.pg_stat_activity a JOIN pg_catalog.pg_stat_ssl s USING (pid) \
             WHERE a.backend_type = 'client backend' AND a.usename <> 'postgres'",
            &[],
        )
        .await
        .unwrap();
    // (pg_hba.conf admits tenantd's roles only over TLS, so none can be plaintext; what this
    // shows is that the catalog pool, LISTEN and the tenant pool are all there, encrypted.)
    let (encrypted, _): (i64, i64) = (row.get(0), row.get(1));
    assert!(encrypted >= 3, "tenantd holds encrypted sessions (catalog, LISTEN, tenant pool): {encrypted}");
}
