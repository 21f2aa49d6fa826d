//! The HTTP server itself: HTTPS with a certificate reloaded on SIGHUP, no plain HTTP on a
//! network address unless asked for, and connections that send nothing (or too slowly) closed
//! after the header timeout without keeping anyone else from being served.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{ProcessDaemon, app, spawn_app, wait_for};

/// A CA and a certificate for `localhost` signed by it, written to `dir` as cert.pem/key.pem;
/// returns the CA certificate (DER) to trust.
fn issue(dir: &Path, ca_name: &str) -> rustls::pki_types::CertificateDer<'static> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &rcgen::Issuer::new(ca_params, ca_key))
        .unwrap();
    // Written next to each other and renamed into place, as certificate tools do.
    std::fs::write(dir.join("cert.pem.new"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem.new"), key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).unwrap();
    std::fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).unwrap();
    ca_cert.der().clone()
}

/// `GET /healthz` over TLS trusting only `ca`; the status line, or the TLS error.
async fn get_over_tls(port: u16, ca: &rustls::pki_types::CertificateDer<'static>) -> Result<String, String> {
    let response = fetch_over_tls(port, ca, "/healthz").await?;
    Ok(response.lines().next().unwrap_or_default().to_owned())
}

/// `GET path` over TLS trusting only `ca`: the whole response.
async fn fetch_over_tls(
    port: u16,
    ca: &rustls::pki_types::CertificateDer<'static>,
    path: &str,
) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// `tenantd_http_tls_reloads_total{result="error"}` as served.
async fn failed_reloads(port: u16, ca: &rustls::pki_types::CertificateDer<'static>) -> f64 {
    let metrics = fetch_over_tls(port, ca, "/metrics").await.unwrap();
    metrics
        .lines()
        .find(|l| l.starts_with("tenantd_http_tls_reloads_total{result=\"error\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn https_serves_the_api_and_a_renewed_certificate_is_used_after_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let first_ca = issue(dir.path(), "first CA");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let app = app()
        .without_server()
        .configure(move |s| {
            s.http.tls_cert = Some(cert);
            s.http.tls_key = Some(key);
        })
        .spawn()
        .await;
    let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(get_over_tls(port, &first_ca).await.unwrap(), "HTTP/1.1 200 OK");
    // Plain HTTP on the HTTPS port gets no answer.
    let plain = reqwest::Client::new().get(format!("{}/healthz", app.base)).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plain HTTP must not be served");

    // Renewed by another CA; until SIGHUP the old certificate is still served.
    let second_ca = issue(dir.path(), "second CA");
    assert!(get_over_tls(port, &second_ca).await.is_err(), "not reloaded before SIGHUP");
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for("the renewed certificate after SIGHUP", Duration::from_secs(10), || async {
        get_over_tls(port, &second_ca).await.ok()
    })
    .await;
    assert!(get_over_tls(port, &first_ca).await.is_err(), "the old certificate is gone");

    // A broken renewal keeps the working certificate (and says so in the metrics).
    let failed_before = failed_reloads(port, &second_ca).await;
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for("the failed reload to be counted", Duration::from_secs(10), || async {
        (failed_reloads(port, &second_ca).await > failed_before).then_some(())
    })
    .await;
    assert_eq!(get_over_tls(port, &second_ca).await.unwrap(), "HTTP/1.1 200 OK");
}

#[tokio::test]
async fn plain_http_on_a_network_address_is_refused_unless_allowed() {
    let app = spawn_app().await;
    let port = tenantd::pgcluster::free_port().unwrap();
    let mut env = app.cli_env();
    env.insert("TENANTD_ADMIN_TOKEN".into(), app.admin_token.clone());
    env.insert("TENANTD_LISTEN".into(), format!("0.0.0.0:{port}"));
    let out = crate::common::cli(&["serve"], &env, None).await;
    assert_ne!(out.code, 0, "{out:?}");
    assert!(
        out.stderr.contains("refusing to serve plain HTTP") && out.stderr.contains("allow_plaintext"),
        "{out:?}"
    );
    // Allowed explicitly (a TLS proxy in front): it serves.
    let daemon = ProcessDaemon::start(&app, &[("TENANTD_HTTP_ALLOW_PLAINTEXT", "true")]).await;
    drop(daemon);
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_and_others_are_still_served() {
    // Room for 500 sockets here, whatever the soft limit of the machine.
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let app = spawn_app().await;
    let daemon = ProcessDaemon::start(&app, &[("TENANTD_HTTP_HEADER_READ_TIMEOUT", "2s")]).await;
    let address = daemon.base.trim_start_matches("http://").to_owned();

    // 250 sockets that say nothing, 250 that send half a request and stall, and one that
    // made a request and keeps the connection open.
    let mut sockets = Vec::new();
    for i in 0..500 {
        let mut socket = TcpStream::connect(&address).await.unwrap();
        if i % 2 == 1 {
            socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
        }
        sockets.push(socket);
    }
    let mut keep_alive = TcpStream::connect(&address).await.unwrap();
    keep_alive.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = keep_alive.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "keep-alive request answered");

    // Meanwhile the API serves others.
    let http = reqwest::Client::new();
    for _ in 0..5 {
        let response = http.get(format!("{}/healthz", daemon.base)).send().await.unwrap();
        assert!(response.status().is_success());
    }

    // Every stalled or idle socket is closed by the daemon after the header timeout.
    let started = Instant::now();
    sockets.push(keep_alive);
    for mut socket in sockets {
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {} // a 408 or similar before closing is fine
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a socket was still open {:?} after it stalled", started.elapsed());
    }
}
