//! Small helpers around tokio-postgres shared by every module that opens its own connections.

use std::time::Duration;

use tokio_postgres::{Client, Config};

use crate::pgtls::PgTls;

/// Connects with `tls` and runs the connection driver on its own task. When the driver ends
/// with an error (server gone, network cut), it is logged with `label`; the client then
/// reports `is_closed()` and its next query fails, so the error also reaches the caller.
pub async fn connect(config: &Config, tls: &PgTls, label: &str) -> Result<Client, ConnectError> {
    let (host, port) = address(config);
    // Checked here (a missing CA file is the caller's settings, not an unreachable server);
    // the connection reads the cached configuration again.
    let connector = tls.connector(&host, port)?;
    let mut config = config.clone();
    tls.apply(&mut config);
    // connect_timeout bounds the TCP connect only: the TLS request, handshake and login get a
    // bound too, so a host that accepts and then stalls cannot hold a caller for ever.
    let limit = config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(10)) * 2;
    let (client, connection) = tokio::time::timeout(limit, config.connect(connector))
        .await
        .map_err(|_| ConnectError::TimedOut(format!("{host}:{port}: no login within {limit:?}")))??;
    let label = label.to_owned();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(connection = %label, %error, "connection ended with an error");
        }
    });
    Ok(client)
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS settings cannot be used (a CA file missing, say).
    #[error(transparent)]
    Tls(#[from] crate::pgtls::TlsError),
    /// Connecting, TLS or the login failed.
    #[error("{}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// Connecting, TLS and the login together took too long.
    #[error("{0}")]
    TimedOut(String),
}

/// The first host and port of a configuration (for messages and TLS host names).
pub fn address(config: &Config) -> (String, u16) {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    (host, config.get_ports().first().copied().unwrap_or(5432))
}

/// Session settings of every admin session tenantd opens on a server (maintenance database
/// and inside tenant databases): only `pg_catalog` is searched, so nothing a tenant created
/// can stand in for a function the daemon calls, and every wait is bounded.
pub const ADMIN_SESSION: &str = "-c search_path=pg_catalog -c lock_timeout=5s -c statement_timeout=300s \
     -c idle_in_transaction_session_timeout=60s";

/// Session settings of catalog connections: only `pg_catalog` is searched (every catalog
/// object is named `tenantd.`), and every wait is bounded.
pub const CATALOG_SESSION: &str = "-c search_path=pg_catalog -c lock_timeout=10s -c statement_timeout=60s \
     -c idle_in_transaction_session_timeout=60s";

/// Session settings of tenant-role sessions that apply migrations: the default search path
/// (whatever the role's defaults say) and a bounded wait for locks the tenant may hold.
pub const MIGRATION_SESSION: &str =
    "-c search_path=\"$user\",public -c lock_timeout=5s -c default_transaction_read_only=off";

/// A PostgreSQL client or server program with a clean environment: `PATH` and a locale only.
/// Nothing of the daemon's own environment (master key, admin token, catalog URL) reaches a
/// child; callers add exactly the `PG*` variables it needs.
pub fn child(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear().env("LC_ALL", "C.UTF-8");
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// Adds `-c` settings to a configuration's startup options, after any the URL already had.
/// Startup options take precedence over role and database defaults, so a tenant cannot lift
/// them with `ALTER ROLE ... SET`.
pub fn add_options(config: &mut Config, options: &str) {
    let combined = match config.get_options() {
        Some(existing) if !existing.trim().is_empty() => format!("{existing} {options}"),
        _ => options.to_owned(),
    };
    config.options(combined);
}

/// Cancels the statement running on a connection if dropped while armed: work started for a
/// request that was dropped (client gone, timeout) does not go on on the server.
pub struct CancelOnDrop {
    token: Option<(tokio_postgres::CancelToken, crate::pgtls::Connector)>,
}

impl CancelOnDrop {
    /// Armed for `client`'s current statement; the cancel request goes over `connector` (the
    /// one the client connected with, so it is encrypted like the session).
    pub fn arm(client: &Client, connector: crate::pgtls::Connector) -> Self {
        Self { token: Some((client.cancel_token(), connector)) }
    }

    /// The work finished: nothing to cancel.
    pub fn disarm(mut self) {
        self.token = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some((token, connector)) = self.token.take() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = token.cancel_query(connector).await {
                    tracing::warn!(error = %describe(&error), "cannot cancel an abandoned statement");
                }
            });
        }
    }
}

/// True when an error says the server cannot be used right now, rather than that the
/// statement or the login was wrong: no connection could be made or kept (refused, reset,
/// timed out, closed), a connection exception (class 08), or the server shutting down or
/// starting up (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now).
/// Callers wait and retry on these; they never count against the request or the tenant.
pub fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => is_unavailable_sqlstate(code.code()),
        None => e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// The SQLSTATEs of [`is_unavailable`]: class 08, 57P01, 57P02, 57P03.
pub fn is_unavailable_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
}

/// A one-line description of a PostgreSQL error: message and SQLSTATE, or the I/O cause chain.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// A `postgres://` URL with every part percent-encoded (user names and passwords may hold
/// any character).
pub fn url(user: &str, password: &str, host: &str, port: u16, dbname: &str) -> String {
    format!(
        "postgres://{}:{}@{}:{port}/{}",
        crate::pgtls::percent(user),
        crate::pgtls::percent(password),
        host,
        crate::pgtls::percent(dbname)
    )
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn children_get_a_clean_environment() {
        // The test process has HOME and more; the child sees only PATH and the locale.
        let out = super::child("env").output().await.expect("run env");
        let vars: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split('=').next().map(str::to_owned))
            .collect();
        assert!(!vars.is_empty());
        for var in &vars {
            assert!(var == "PATH" || var == "LC_ALL", "{var} leaked into a child: {vars:?}");
        }
    }

    #[test]
    fn a_server_going_away_is_unavailable_a_bad_statement_is_not() {
        for code in ["08006", "08001", "57P01", "57P02", "57P03"] {
            assert!(super::is_unavailable_sqlstate(code), "{code}");
        }
        // Cancelled, syntax, privileges, a dropped database, the tenant's own limits.
        for code in ["57014", "42601", "42501", "57P04", "53300", "28P01"] {
            assert!(!super::is_unavailable_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn options_are_added_after_the_urls_own() {
        let mut config: tokio_postgres::Config =
            "postgres://u@h/db?options=-c%20work_mem%3D8MB".parse().unwrap();
        super::add_options(&mut config, super::CATALOG_SESSION);
        let options = config.get_options().unwrap();
        assert!(options.starts_with("-c work_mem=8MB -c search_path=pg_catalog"), "{options}");
    }

    #[test]
    fn urls_round_trip_through_the_driver() {
        let url = super::url("we ird", "p@ss:w/rd'\\", "db.example", 6543, "my db");
        let config: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(config.get_user(), Some("we ird"));
        assert_eq!(config.get_password(), Some("p@ss:w/rd'\\".as_bytes()));
        assert_eq!(config.get_dbname(), Some("my db"));
    }
}
