//! TLS to PostgreSQL, with libpq's settings and meaning: `sslmode` (`disable`, `prefer`,
//! `require`, `verify-ca`, `verify-full`), `sslrootcert`, `sslcert` and `sslkey`, honoured on
//! every connection tenantd opens (catalog, admin, tenant pools, health checks, benches) and
//! passed to `pg_dump`/`pg_restore` as `PGSSLMODE` and friends.
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require` and refuses the other
//! settings, so [`split`] takes them out of a URL (or `key=value` string) first; what remains
//! goes to tokio-postgres. Verification happens in the rustls configuration built here:
//! - `verify-full`: the chain to `sslrootcert` and the host name (webpki).
//! - `verify-ca`: the chain only.
//! - `require`: encrypted, nothing verified (logged once per server) — unless `sslrootcert`
//!   is given, when it verifies the chain like `verify-ca`, as libpq does.
//! - `prefer`: encrypted when the server offers it, nothing verified; plaintext otherwise.
//!
//! There is exactly one crypto provider, chosen in [`provider`] (ring), and no process-wide
//! default is installed.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

use crate::pgwire::{GuardedStream, WireGuard};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, without verification; plaintext otherwise (libpq's
    /// default).
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is verified only if `sslrootcert` is given.
    Require,
    /// TLS with a certificate chain to `sslrootcert`; any host name.
    VerifyCa,
    /// TLS with a certificate chain to `sslrootcert` naming the host.
    VerifyFull,
}

impl SslMode {
    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// Parses libpq's spelling.
    pub fn parse(text: &str) -> Result<Self, TlsError> {
        Ok(match text {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            // libpq's `allow` tries plaintext first; tenantd never downgrades silently.
            other => return Err(TlsError::BadMode(other.to_owned())),
        })
    }

    fn wire(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `sslrootcert=system`: the operating system's trusted roots (libpq 16's spelling).
pub const SYSTEM_ROOTS: &str = "system";

/// The TLS settings of one PostgreSQL endpoint (a server, or the catalog). File names are
/// read on the daemon's machine, like libpq's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PgTls {
    /// `sslmode`.
    pub sslmode: SslMode,
    /// CA certificates (PEM file) the server's chain must lead to, or `system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<String>,
    /// Client certificate (PEM file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslcert: Option<String>,
    /// Client certificate's private key (PEM file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslkey: Option<String>,
}

/// A TLS setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// Not one of libpq's modes (the value is not repeated: a malformed URL may have put part
    /// of a password there).
    #[error("invalid sslmode: expected disable, prefer, require, verify-ca or verify-full")]
    BadMode(String),
    /// Verification asked for without saying what to trust.
    #[error("sslmode={0} needs sslrootcert (a PEM file of CA certificates, or \"system\")")]
    NoRoot(SslMode),
    /// The system's roots without the host name check.
    #[error(
        "sslrootcert=system needs sslmode=verify-full (got {0}): any public certificate chains to the system's roots"
    )]
    SystemRootsNeedVerifyFull(SslMode),
    /// Half a client certificate.
    #[error("sslcert and sslkey must be given together")]
    HalfClientCert,
    /// A URL whose user name or password holds `/` or `?` unencoded: where its settings
    /// begin is ambiguous.
    #[error("the URL has a '/' or '?' before its '@': percent-encode the user name and password")]
    Unencoded,
    /// A setting in a `key=value` string that cannot be read.
    #[error("cannot read the connection settings: {0}")]
    Syntax(&'static str),
    /// A certificate or key file that cannot be used.
    #[error("{what} {path:?}: {reason}")]
    File {
        /// `sslrootcert`, `sslcert` or `sslkey`.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The TLS settings tenantd takes out of connection strings.
const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Takes the TLS settings out of a `postgres://` URL or a `key=value` string, returning the
/// rest (for tokio-postgres) and the settings (not checked yet: see [`PgTls::check`]).
pub fn split(conninfo: &str) -> Result<(String, PgTls), TlsError> {
    let mut pairs = Vec::new();
    let rest = if conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://") {
        split_url(conninfo, &mut pairs)?
    } else {
        split_keywords(conninfo, &mut pairs)?
    };
    let mut tls = PgTls::default();
    for (key, value) in pairs {
        match key.as_str() {
            "sslmode" => tls.sslmode = SslMode::parse(&value)?,
            "sslrootcert" => tls.sslrootcert = Some(value),
            "sslcert" => tls.sslcert = Some(value),
            _ => tls.sslkey = Some(value),
        }
    }
    Ok((rest, tls))
}

fn split_url(url: &str, found: &mut Vec<(String, String)>) -> Result<String, TlsError> {
    // The query starts after the user and password, as libpq and tokio-postgres read it.
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[scheme_end..].find(['/', '?']).map_or(url.len(), |i| scheme_end + i);
    let user_end = url[scheme_end..].rfind('@').map(|i| scheme_end + i);
    if let Some(at) = user_end
        && at > authority_end
    {
        return Err(TlsError::Unencoded);
    }
    let Some(q) = url[authority_end..].find('?').map(|i| authority_end + i) else {
        return Ok(url.to_owned());
    };
    let (base, query) = (&url[..q], &url[q + 1..]);
    let mut kept = Vec::new();
    for param in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        if KEYS.contains(&key) {
            found.push((key.to_owned(), percent_decode(value)));
        } else {
            kept.push(param);
        }
    }
    Ok(if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) })
}

/// Percent-encodes everything but unreserved characters.
pub fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads libpq's `key = value` syntax (values may be single-quoted, with `\` escapes).
fn split_keywords(text: &str, found: &mut Vec<(String, String)>) -> Result<String, TlsError> {
    let mut chars = text.chars().peekable();
    let mut kept = Vec::new();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(TlsError::Syntax("expected key=value"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or(TlsError::Syntax("unfinished escape"))?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(TlsError::Syntax("unterminated quoted value")),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        if KEYS.contains(&key.as_str()) {
            found.push((key, value));
        } else {
            kept.push(format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'")));
        }
    }
    Ok(kept.join(" "))
}

impl PgTls {
    /// Checks that the settings make sense together (files are read on first use).
    pub fn check(&self) -> Result<(), TlsError> {
        if matches!(self.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && self.sslrootcert.is_none() {
            return Err(TlsError::NoRoot(self.sslmode));
        }
        if self.sslcert.is_some() != self.sslkey.is_some() {
            return Err(TlsError::HalfClientCert);
        }
        // Any publicly trusted certificate chains to the system roots: without the host name
        // they prove nothing (libpq 16 refuses this too).
        if self.sslrootcert.as_deref() == Some(SYSTEM_ROOTS) && self.sslmode != SslMode::VerifyFull {
            return Err(TlsError::SystemRootsNeedVerifyFull(self.sslmode));
        }
        Ok(())
    }

    /// Sets tokio-postgres's part of the settings (whether to ask for TLS) on `config`.
    pub fn apply(&self, config: &mut tokio_postgres::Config) {
        config.ssl_mode(self.sslmode.wire());
    }

    /// The connector tokio-postgres uses for these settings (cached: files are read again
    /// at most once a minute, so renewed certificates are picked up without a restart).
    pub fn connector(&self, host: &str, port: u16) -> Result<Connector, TlsError> {
        // Built once now, so that settings that cannot work fail here and not per connection.
        self.client_config(host, port)?;
        Ok(self.connector_unchecked(host, port))
    }

    /// [`PgTls::connector`] for one connection about to be made: its configuration is read
    /// then (and fails then), so it is not built twice.
    pub(crate) fn connector_unchecked(&self, host: &str, port: u16) -> Connector {
        Connector { tls: self.clone(), host: host.to_owned(), port }
    }

    /// The rustls configuration for these settings, cached for a minute.
    pub fn client_config(&self, host: &str, port: u16) -> Result<Arc<ClientConfig>, TlsError> {
        type Built = (Instant, Arc<ClientConfig>);
        static CACHE: OnceLock<Mutex<HashMap<PgTls, Built>>> = OnceLock::new();
        const FRESH: Duration = Duration::from_secs(60);
        let cache = CACHE.get_or_init(Mutex::default);
        if let Some((at, config)) = cache.lock().unwrap_or_else(PoisonError::into_inner).get(self)
            && at.elapsed() < FRESH
        {
            self.note_unverified(host, port);
            return Ok(config.clone());
        }
        let config = Arc::new(self.build()?);
        let mut cache = cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() > 1_000 {
            cache.clear();
        }
        cache.insert(self.clone(), (Instant::now(), config.clone()));
        self.note_unverified(host, port);
        Ok(config)
    }

    /// Whether the server's certificate is checked at all.
    pub fn verifies(&self) -> bool {
        match self.sslmode {
            SslMode::Disable | SslMode::Prefer => false,
            SslMode::Require => self.sslrootcert.is_some(),
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        }
    }

    /// `require` without a CA encrypts but trusts any certificate: said once per server.
    fn note_unverified(&self, host: &str, port: u16) {
        static SAID: OnceLock<Mutex<std::collections::HashSet<String>>> = OnceLock::new();
        if self.sslmode != SslMode::Require || self.verifies() {
            return;
        }
        let said = SAID.get_or_init(Mutex::default);
        let mut said = said.lock().unwrap_or_else(PoisonError::into_inner);
        if said.len() < 10_000 && said.insert(format!("{host}:{port}")) {
            tracing::warn!(
                server = %format!("{host}:{port}"),
                "sslmode=require: the connection is encrypted but the server's certificate is not \
                 verified (give sslrootcert, or use verify-full)"
            );
        }
    }

    fn build(&self) -> Result<ClientConfig, TlsError> {
        self.check()?;
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| file_error("sslmode", "", e))?;
        let roots = self.sslrootcert.as_deref().map(load_roots).transpose()?;
        let verifier: Arc<dyn ServerCertVerifier> = match (self.sslmode, roots) {
            (SslMode::VerifyFull, Some(roots)) => {
                rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| file_error("sslrootcert", self.sslrootcert.as_deref().unwrap_or(""), e))?
            }
            (SslMode::VerifyCa | SslMode::Require, Some(roots)) => {
                Arc::new(ChainOnly { roots: Arc::new(roots), provider: provider.clone() })
            }
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => return Err(TlsError::NoRoot(self.sslmode)),
            _ => Arc::new(Unverified { provider: provider.clone() }),
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        match (&self.sslcert, &self.sslkey) {
            (Some(cert), Some(key)) => {
                let chain = read_certificates(Path::new(cert)).map_err(|e| file_error("sslcert", cert, e))?;
                let key_der = read_private_key(Path::new(key)).map_err(|e| file_error("sslkey", key, e))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|_| file_error("sslkey", key, "does not match sslcert"))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }

    /// The settings as URL parameters (`sslmode=...&sslrootcert=...`); `with_files: false`
    /// gives `sslmode` only (for applications, to whom the daemon's file names mean nothing).
    pub fn url_params(&self, with_files: bool) -> String {
        let mut params = vec![format!("sslmode={}", self.sslmode)];
        if with_files {
            for (key, value) in
                [("sslrootcert", &self.sslrootcert), ("sslcert", &self.sslcert), ("sslkey", &self.sslkey)]
            {
                if let Some(value) = value {
                    params.push(format!("{key}={}", percent(value)));
                }
            }
        }
        params.join("&")
    }

    /// The libpq environment of a client program (`pg_dump`, `pg_restore`) with these
    /// settings.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGSSLMODE", self.sslmode.as_str().to_owned())];
        if let Some(root) = &self.sslrootcert {
            env.push(("PGSSLROOTCERT", root.clone()));
        }
        if let Some(cert) = &self.sslcert {
            env.push(("PGSSLCERT", cert.clone()));
        }
        if let Some(key) = &self.sslkey {
            env.push(("PGSSLKEY", key.clone()));
        }
        env
    }

    /// Connects a TCP stream to `host:port` and negotiates TLS on it as these settings say,
    /// for callers that wrap the stream themselves before the PostgreSQL startup (guarded
    /// tenant connections, cancel requests); they then connect with `sslmode=disable`.
    pub async fn open(&self, host: &str, port: u16) -> Result<PgStream, io::Error> {
        let mut tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        if self.sslmode == SslMode::Disable {
            return Ok(PgStream::Plain(tcp));
        }
        let config = self.client_config(host, port).map_err(io::Error::other)?;
        // SSLRequest: length 8, code 80877103.
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
        match tcp.read_u8().await? {
            b'S' => {
                let name = ServerName::try_from(host.to_owned())
                    .map_err(|e| io::Error::other(format!("host name {host:?}: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
                Ok(PgStream::Tls(Box::new(tls)))
            }
            // The server said no and waits for a plaintext startup on the same connection.
            b'N' if self.sslmode == SslMode::Prefer => Ok(PgStream::Plain(tcp)),
            b'N' => Err(io::Error::other(format!(
                "sslmode={}: the server does not support TLS (ssl is off)",
                self.sslmode
            ))),
            other => Err(io::Error::other(format!("unexpected answer {other:#x} to the TLS request"))),
        }
    }
}

/// rustls through tokio-postgres-rustls, as tokio-postgres sees it.
type RustlsConnect<S> = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect;
type RustlsStream<S> = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<S>>::Stream;

/// tokio-postgres's TLS connector for one endpoint's settings. The rustls configuration is
/// taken from [`PgTls::client_config`] for each connection, so pools that live for days pick
/// up renewed certificate files; the session supports SCRAM channel binding.
#[derive(Clone)]
pub struct Connector {
    tls: PgTls,
    host: String,
    port: u16,
}

impl Connector {
    fn rustls<S>(&self, hostname: &str) -> Result<RustlsConnect<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = self.tls.client_config(&self.host, self.port)?;
        let mut make = tokio_postgres_rustls::MakeRustlsConnect::new((*config).clone());
        match <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<S>>::make_tls_connect(
            &mut make, hostname,
        ) {
            Ok(connect) => Ok(connect),
            Err(never) => match never {},
        }
    }
}

impl<S> MakeTlsConnect<S> for Connector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect<S>;
    type Error = TlsError;

    fn make_tls_connect(&mut self, hostname: &str) -> Result<Self::TlsConnect, TlsError> {
        self.rustls::<S>(hostname)
    }
}

/// TLS for a guarded tenant connection: the handshake, then the wire guard on the messages
/// inside the session. tokio-postgres negotiates it (`sslmode` require or stronger), so SCRAM
/// channel binding works as on every other connection.
pub struct GuardedTls {
    inner: RustlsConnect<TcpStream>,
    guard: Arc<WireGuard>,
}

impl TlsConnect<TcpStream> for GuardedTls {
    type Stream = GuardedTlsStream;
    type Error = io::Error;
    type Future = futures::future::BoxFuture<'static, io::Result<GuardedTlsStream>>;

    fn connect(self, stream: TcpStream) -> Self::Future {
        Box::pin(async move {
            let tls = self.inner.connect(stream).await?;
            Ok(GuardedTlsStream(GuardedStream::new(tls, self.guard)))
        })
    }
}

/// The stream of [`GuardedTls`].
pub struct GuardedTlsStream(GuardedStream<RustlsStream<TcpStream>>);

impl tokio_postgres::tls::TlsStream for GuardedTlsStream {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        self.0.get_ref().channel_binding()
    }
}

impl AsyncRead for GuardedTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Where a server is and how to speak TLS to it, for connections whose TLS tenantd negotiates
/// itself (guarded tenant connections and their cancel requests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS settings.
    pub tls: PgTls,
}

impl Endpoint {
    /// Connects and negotiates TLS as the settings say; the caller then speaks PostgreSQL with
    /// `sslmode=disable` on the stream.
    pub async fn open(&self) -> Result<PgStream, io::Error> {
        self.tls.open(&self.host, self.port).await
    }

    /// Whether tokio-postgres negotiates TLS for guarded connections ([`GuardedTls`]): every
    /// mode that insists on TLS. `prefer` may end in plaintext, which only [`Endpoint::open`]
    /// can guard.
    pub fn tls_required(&self) -> bool {
        matches!(self.tls.sslmode, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }

    /// The TLS connector of a guarded connection with [`Endpoint::tls_required`].
    pub fn guarded_tls(&self, guard: Arc<WireGuard>) -> Result<GuardedTls, TlsError> {
        let inner = self.tls.connector_unchecked(&self.host, self.port).rustls::<TcpStream>(&self.host)?;
        Ok(GuardedTls { inner, guard })
    }

    /// Sends a cancel request for a connection made to this endpoint, encrypted like it.
    pub async fn cancel(&self, token: &tokio_postgres::CancelToken) -> Result<(), CancelFailed> {
        if self.tls_required() {
            let tcp =
                TcpStream::connect((self.host.as_str(), self.port)).await.map_err(CancelFailed::Connect)?;
            let tls = self.tls.connector_unchecked(&self.host, self.port).rustls::<TcpStream>(&self.host)?;
            Ok(token.cancel_query_raw(tcp, tls).await?)
        } else {
            let stream = self.open().await.map_err(CancelFailed::Connect)?;
            Ok(token.cancel_query_raw(stream, tokio_postgres::NoTls).await?)
        }
    }
}

/// Why a cancel request could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum CancelFailed {
    /// No connection (or TLS) to the server.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// The TLS settings cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The request itself failed.
    #[error("cancel request failed: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

/// The one crypto provider of every TLS connection tenantd makes or accepts.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

fn file_error(what: &'static str, path: &str, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File { what, path: path.to_owned(), reason: reason.to_string() }
}

fn load_roots(path: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if path == SYSTEM_ROOTS {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let reason =
                found.errors.first().map_or("no trusted certificates found".to_owned(), |e| e.to_string());
            return Err(file_error("sslrootcert", path, reason));
        }
        return Ok(roots);
    }
    let certs = read_certificates(Path::new(path)).map_err(|e| file_error("sslrootcert", path, e))?;
    for cert in certs {
        roots
            .add(cert)
            .map_err(|_| file_error("sslrootcert", path, "holds a certificate that is not a valid CA"))?;
    }
    Ok(roots)
}

/// Largest certificate or key file read (a CA bundle of the whole web is about 250 KiB).
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Reads a regular PEM file of at most [`MAX_PEM_FILE`] bytes. Errors say what is wrong
/// without repeating any of the file (these paths come from API callers).
fn read_pem(path: &Path) -> Result<Vec<u8>, &'static str> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "no such file",
        io::ErrorKind::PermissionDenied => "cannot be read (permission denied)",
        _ => "cannot be read",
    })?;
    if !meta.is_file() {
        return Err("is not a regular file");
    }
    if meta.len() > MAX_PEM_FILE {
        return Err("is larger than 1 MiB");
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_FILE).read_to_end(&mut bytes))
        .map_err(|_| "cannot be read")?;
    Ok(bytes)
}

/// The certificates of a PEM file (at least one).
pub(crate) fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, &'static str> {
    let bytes = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "is not a valid PEM file of certificates")?;
    if certs.is_empty() {
        return Err("holds no certificate");
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub(crate) fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, &'static str> {
    let bytes = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| "holds no valid PEM private key")
}

/// `prefer`/`require` without a CA: encrypted, certificate not checked (signatures of the
/// handshake still are, so the session key is bound to the certificate presented).
#[derive(Debug)]
struct Unverified {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

macro_rules! signatures_from_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider.signature_verification_algorithms.supported_schemes()
        }
    };
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    signatures_from_provider!();
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    signatures_from_provider!();
}

/// A connection to PostgreSQL after TLS negotiation: plaintext or TLS.
pub enum PgStream {
    /// The server declined TLS (or `sslmode=disable`).
    Plain(TcpStream),
    /// TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl PgStream {
    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }
}

impl AsyncRead for PgStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PgStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_only_the_tls_settings() {
        let (rest, tls) =
            split("postgres://u:p@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem")
                .unwrap();
        assert_eq!(rest, "postgres://u:p@h:5/db?application_name=x");
        assert_eq!(tls.sslmode, SslMode::VerifyFull);
        assert_eq!(tls.sslrootcert.as_deref(), Some("/etc/ca.pem"));
        let (rest, tls) = split("postgres://u:p@h/db").unwrap();
        assert_eq!((rest.as_str(), tls), ("postgres://u:p@h/db", PgTls::default()));
        let (rest, tls) = split("postgresql://u@h/db?sslmode=require").unwrap();
        assert_eq!((rest.as_str(), tls.sslmode), ("postgresql://u@h/db", SslMode::Require));
    }

    #[test]
    fn keyword_strings_lose_only_the_tls_settings() {
        let (rest, tls) =
            split("host=h port = 5 password='it\\'s q' sslmode=verify-ca sslrootcert='/a b/ca.pem'")
                .map_err(|e| e.to_string())
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tls.sslmode, SslMode::VerifyCa);
        assert_eq!(tls.sslrootcert.as_deref(), Some("/a b/ca.pem"));
        let config: tokio_postgres::Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"it's q"[..]));
        assert_eq!(config.get_ports(), &[5]);
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        for (bad, expect) in [
            ("postgres://h/db?sslmode=allow", "invalid sslmode"),
            ("postgres://h/db?sslmode=verify-full", "needs sslrootcert"),
            ("postgres://h/db?sslmode=require&sslcert=/c.pem", "together"),
            ("host=h sslmode='require", "unterminated"),
            ("postgres://h/db?sslmode=require&sslrootcert=system", "verify-full"),
            ("postgres://u:p?w@h/db?sslmode=require", "percent-encode"),
            ("postgres://u:S3CRET@h/db?sslmode=S3CRET", "invalid sslmode"),
        ] {
            assert!(!split(bad).and_then(|(_, tls)| tls.check()).unwrap_err().to_string().contains("S3CRET"));
            let err = split(bad).and_then(|(_, tls)| tls.check()).unwrap_err().to_string();
            assert!(err.contains(expect), "{bad}: {err}");
        }
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let tls = PgTls {
            sslmode: SslMode::VerifyFull,
            sslrootcert: Some("/nonexistent/ca.pem".into()),
            ..PgTls::default()
        };
        let err = tls.client_config("h", 5).unwrap_err().to_string();
        assert!(err.contains("sslrootcert") && err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn child_programs_get_the_same_settings() {
        let tls = PgTls {
            sslmode: SslMode::VerifyFull,
            sslrootcert: Some("/ca.pem".into()),
            sslcert: Some("/c.pem".into()),
            sslkey: Some("/k.pem".into()),
        };
        let env: HashMap<_, _> = tls.env().into_iter().collect();
        assert_eq!(env["PGSSLMODE"], "verify-full");
        assert_eq!(env["PGSSLROOTCERT"], "/ca.pem");
        assert_eq!((env["PGSSLCERT"].as_str(), env["PGSSLKEY"].as_str()), ("/c.pem", "/k.pem"));
    }
}
