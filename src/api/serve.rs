//! The HTTP server: HTTP/1.1 on hyper with a timer, so a connection that sends its headers
//! slowly or sits idle before or between requests is closed after `http.header_read_timeout`
//! (without a timer hyper applies neither, and a few hundred idle sockets would hold
//! descriptors for ever); optional
//! HTTPS with rustls, whose certificate and key are read again on SIGHUP; graceful shutdown
//! (requests in flight finish, idle connections close).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;

/// A certificate or key that cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("HTTPS {what} {path:?}: {reason}")]
pub struct HttpsError {
    what: &'static str,
    path: PathBuf,
    reason: String,
}

/// The daemon's HTTPS certificate, reloadable.
pub struct Https {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Https {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Https").field("cert", &self.cert).finish_non_exhaustive()
    }
}

impl Https {
    /// Reads the PEM certificate chain and private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, HttpsError> {
        let acceptor = acceptor(cert, key)?;
        Ok(Self { cert: cert.to_owned(), key: key.to_owned(), current: RwLock::new(acceptor) })
    }

    /// Reads the files again; on failure the current certificate stays in use.
    pub fn reload(&self) -> Result<(), HttpsError> {
        let acceptor = acceptor(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = acceptor;
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, HttpsError> {
    fn fail(what: &'static str, path: &Path, reason: impl std::fmt::Display) -> HttpsError {
        HttpsError { what, path: path.to_owned(), reason: reason.to_string() }
    }
    let chain = crate::pgtls::read_certificates(cert).map_err(|e| fail("certificate", cert, e))?;
    let key_der = crate::pgtls::read_private_key(key).map_err(|e| fail("key", key, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::pgtls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("certificate", cert, e))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| fail("key", key, e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` on `listener` until shutdown, on the daemon's task tracker; with `https`,
/// every connection is TLS and SIGHUP reloads the certificate.
pub fn spawn(app: Arc<App>, router: Router, listener: TcpListener, https: Option<Arc<Https>>) {
    let timeout = app.settings.http.header_read_timeout;
    // HTTP/1.1 only: its header timer runs from the moment a connection waits for a request
    // (new or kept alive), where HTTP/2 (and guessing the version) would wait without one.
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(timeout);
    if let Some(https) = &https {
        reload_on_sighup(&app, https.clone());
    }
    let token = app.shutdown.token().clone();
    let tasks = app.clone();
    // At most this many connections at once; past it, new ones wait in the kernel's backlog.
    let slots = Arc::new(tokio::sync::Semaphore::new(app.settings.http.max_connections));
    app.shutdown.spawn(async move {
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
                () = token.cancelled() => break,
            };
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of descriptors, say: the condition passes, the loop goes on.
                        tracing::warn!(%error, "cannot accept an HTTP connection");
                        metrics::counter!("tenantd_http_accept_errors_total").increment(1);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = token.cancelled() => break,
            };
            let (builder, router, token) = (builder.clone(), router.clone(), token.clone());
            let acceptor = https.as_ref().map(|h| h.acceptor());
            tasks.shutdown.spawn(async move {
                let _slot = slot;
                let _open = OpenConnection::new();
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(%error, "cannot set TCP_NODELAY");
                }
                let Some(acceptor) = acceptor else {
                    return connection(&builder, stream, router, &token).await;
                };
                match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => connection(&builder, tls, router, &token).await,
                    Ok(Err(error)) => handshake_failed(&error.to_string()),
                    Err(_) => handshake_failed("timed out"),
                }
            });
        }
    });
}

/// Counts open HTTP connections in `tenantd_http_connections` while alive.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        metrics::gauge!("tenantd_http_connections").increment(1.0);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("tenantd_http_connections").decrement(1.0);
    }
}

fn handshake_failed(reason: &str) {
    tracing::debug!(reason, "TLS handshake with an HTTP client failed");
    metrics::counter!("tenantd_http_tls_handshake_failures_total").increment(1);
}

/// Serves one connection until it ends, or until shutdown lets its requests finish.
async fn connection<I>(builder: &http1::Builder, io: I, router: Router, token: &CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(router));
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = result {
        // Clients that go away or time out end here; nothing to answer any more.
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// SIGHUP: read the certificate and key again (renewed by cert-manager, certbot, ...).
fn reload_on_sighup(app: &App, https: Arc<Https>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGHUP: the HTTPS certificate will not be reloaded");
            return;
        }
    };
    let token = app.shutdown.token().clone();
    app.shutdown.spawn(async move {
        loop {
            tokio::select! {
                got = hangups.recv() => if got.is_none() { break },
                () = token.cancelled() => break,
            }
            match https.reload() {
                Ok(()) => {
                    tracing::info!(cert = %https.cert.display(), "HTTPS certificate reloaded");
                    metrics::counter!("tenantd_http_tls_reloads_total", "result" => "ok").increment(1);
                }
                Err(error) => {
                    tracing::error!(%error, "HTTPS certificate not reloaded; the previous one stays in use");
                    metrics::counter!("tenantd_http_tls_reloads_total", "result" => "error").increment(1);
                }
            }
        }
    });
}

/// Whether `addr` is reachable only from this machine.
pub fn is_loopback(addr: &std::net::SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The error of a listener that would serve plain HTTP to the network.
pub fn plaintext_refused(addr: std::net::SocketAddr) -> io::Error {
    io::Error::other(format!(
        "refusing to serve plain HTTP on {addr}, which is not a loopback address: tokens and \
         passwords would cross the network in clear. Set http.tls_cert and http.tls_key to serve \
         HTTPS, or http.allow_plaintext = true (TENANTD_HTTP_ALLOW_PLAINTEXT=true) when a \
         TLS-terminating proxy is in front"
    ))
}
