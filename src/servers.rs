//! Database servers: registering one (verify, seal, store), connecting to one as its admin
//! role, and checking its health.
//!
//! Registration is one function used by both `tenantd server add` and `POST /v1/servers`:
//! it connects with the given URL, checks that the role can `CREATE DATABASE` and
//! `CREATE ROLE` (or says exactly what is missing), seals the password bound to the server's
//! name, and stores the row. The password is never returned, logged, or put in an error.

use std::time::Instant;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::admin::{AdminError, AdminTarget};
use crate::catalog::servers::{NewServer, ServerHealth, ServerRecord};
use crate::catalog::{Catalog, CatalogError};
use crate::crypto::{Keyring, server_aad};
use crate::names::{NameError, ServerName};

/// A server problem; messages never contain a password.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad name.
    #[error("{0}")]
    Name(#[from] NameError),
    /// The URL, the connection or the sealed password.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The admin role lacks privileges.
    #[error(
        "role {user:?} on {host}:{port} lacks {missing}; run as a superuser: ALTER ROLE \"{user}\" {missing}"
    )]
    MissingPrivileges {
        /// Role.
        user: String,
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// `CREATEDB`, `CREATEROLE` or both.
        missing: String,
    },
    /// The server is older than PostgreSQL 13.
    #[error("{0} runs PostgreSQL {1}; tenantd needs 13 or newer")]
    TooOld(String, String),
    /// Weight or capacity out of range.
    #[error("{0}")]
    BadValue(String),
    /// Catalog failure (including a taken name, as `Conflict`).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What is needed to register a server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddServer {
    /// Unique name.
    pub name: String,
    /// `postgres://admin:pw@host:port/maintenance_db`.
    pub url: SecretString,
    /// Relative share of new tenants (default 100).
    #[serde(default)]
    pub weight: Option<i32>,
    /// Capacity (default: none).
    #[serde(default)]
    pub max_tenants: Option<i32>,
    /// Region.
    #[serde(default)]
    pub region: Option<String>,
    /// Admin password, when the URL has none (keeps it out of URLs and process lists).
    #[serde(default)]
    pub password: Option<SecretString>,
}

/// The result of registering a server: its row and advice for the operator.
#[derive(Debug, Clone, Serialize)]
pub struct Added {
    /// The stored row (no password).
    #[serde(flatten)]
    pub server: ServerRecord,
    /// Things the operator should know, such as PUBLIC's CONNECT on the maintenance database.
    pub warnings: Vec<String>,
}

/// Verification of a server: version, privileges, and advice.
struct Verified {
    latency_ms: f64,
    warnings: Vec<String>,
}

async fn verify(target: &AdminTarget) -> Result<Verified, ServerError> {
    let started = Instant::now();
    let client = target.connect(None).await?;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let describe = |e: tokio_postgres::Error| AdminError::Unreachable {
        target: format!("{}:{}", target.host, target.port),
        reason: crate::pg::describe(&e),
    };
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'), \
             r.rolsuper, r.rolcreatedb, r.rolcreaterole, \
             has_database_privilege('public', current_database(), 'CONNECT') \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(describe)?;
    let (num, version): (i32, String) = (row.get(0), row.get(1));
    if num < 130_000 {
        return Err(ServerError::TooOld(format!("{}:{}", target.host, target.port), version));
    }
    let (superuser, createdb, createrole, public_connect): (bool, bool, bool, bool) =
        (row.get(2), row.get(3), row.get(4), row.get(5));
    let missing: Vec<&str> = [("CREATEDB", createdb), ("CREATEROLE", createrole)]
        .into_iter()
        .filter(|(_, has)| !(superuser || *has))
        .map(|(name, _)| name)
        .collect();
    if !missing.is_empty() {
        return Err(ServerError::MissingPrivileges {
            user: target.user.clone(),
            host: target.host.clone(),
            port: target.port,
            missing: missing.join(" "),
        });
    }
    let mut warnings = Vec::new();
    if superuser {
        warnings.push(format!(
            "role {:?} is a superuser; tenantd needs only LOGIN CREATEDB CREATEROLE",
            target.user
        ));
    }
    if public_connect {
        warnings.push(format!(
            "PUBLIC may connect to database {:?}, so tenant roles can too; to stop it run: \
             REVOKE CONNECT ON DATABASE \"{}\" FROM PUBLIC",
            target.maintenance_db, target.maintenance_db
        ));
    }
    Ok(Verified { latency_ms, warnings })
}

/// Registers a server after verifying it (the one code path of CLI and HTTP).
pub async fn add(catalog: &Catalog, keyring: &Keyring, req: &AddServer) -> Result<Added, ServerError> {
    let name = ServerName::parse(&req.name)?;
    let target = AdminTarget::from_url(&req.url, req.password.as_ref())?;
    let weight = req.weight.unwrap_or(100);
    if weight < 1 {
        return Err(ServerError::BadValue(format!("weight must be at least 1 (got {weight})")));
    }
    if let Some(max) = req.max_tenants.filter(|m| *m < 0) {
        return Err(ServerError::BadValue(format!("max_tenants must be 0 or more (got {max})")));
    }
    let verified = verify(&target).await?;
    let new = NewServer {
        name: name.to_string(),
        host: target.host.clone(),
        port: target.port,
        admin_user: target.user.clone(),
        admin_password_sealed: keyring.seal(target.password.expose_secret(), &server_aad(name.as_str())),
        maintenance_db: target.maintenance_db.clone(),
        weight,
        max_tenants: req.max_tenants,
        region: req.region.clone().filter(|r| !r.is_empty()),
        latency_ms: verified.latency_ms,
    };
    let server = catalog.insert_server(&new).await?;
    tracing::info!(server = %name, host = %new.host, port = new.port, "server added");
    Ok(Added { server, warnings: verified.warnings })
}

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The admin password cannot be opened, or no connection could be made.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// Connected, but `SELECT 1` failed.
    #[error("{}", crate::pg::describe(.0))]
    Query(#[from] tokio_postgres::Error),
}

/// Checks one server: connects as admin and runs `SELECT 1`; returns the latency in ms.
pub async fn check_health(server: &ServerRecord, keyring: &Keyring) -> Result<f64, HealthError> {
    let target = AdminTarget::from_record(server, keyring)?;
    let started = Instant::now();
    let client = target.connect(None).await?;
    client.simple_query("SELECT 1").await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Checks every server once and records the results in the catalog.
pub async fn check_all(catalog: &Catalog, keyring: &Keyring) -> Result<(), CatalogError> {
    let servers = catalog.servers().await?;
    let checks = servers.iter().map(|s| async move { (s, check_health(s, keyring).await) });
    for (server, result) in futures::future::join_all(checks).await {
        let healthy = result.is_ok();
        if let Err(error) = &result {
            tracing::warn!(server = %server.name, %error, "server health check failed");
        } else if server.health != ServerHealth::Healthy {
            tracing::info!(server = %server.name, "server is healthy");
        }
        metrics::gauge!("tenantd_server_healthy", "server" => server.name.clone())
            .set(f64::from(u8::from(healthy)));
        if let Ok(ms) = &result {
            metrics::gauge!("tenantd_server_latency_ms", "server" => server.name.clone()).set(*ms);
        }
        let result = result.map_err(|e| e.to_string());
        catalog.record_server_health(&server.name, result.as_ref().copied().map_err(String::as_str)).await?;
    }
    Ok(())
}

/// Re-seals every server password with the current master key; returns how many changed.
pub async fn rotate_keys(catalog: &Catalog, keyring: &Keyring) -> Result<usize, ServerError> {
    let mut changed = 0;
    for server in catalog.servers().await? {
        if !keyring.is_stale(&server.admin_password_sealed) {
            continue;
        }
        let aad = server_aad(&server.name);
        let password = keyring
            .open(&server.admin_password_sealed, &aad)
            .map_err(|source| AdminError::Sealed { server: server.name.clone(), source })?;
        catalog.reseal_server_password(&server.name, &keyring.seal(password.expose_secret(), &aad)).await?;
        changed += 1;
    }
    Ok(changed)
}
