//! Database servers: registering one (verify, seal, store), connecting to one as its admin
//! role, and checking its health.
//!
//! Registration is one function used by both `tenantd server add` and `POST /v1/servers`:
//! it connects with the given URL, checks that the role can `CREATE DATABASE` and
//! `CREATE ROLE` (or says exactly what is missing), seals the password bound to the server's
//! name, and stores the row. The password is never returned, logged, or put in an error.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::catalog::servers::{NewServer, ServerRecord};
use crate::catalog::{Catalog, CatalogError};
use crate::crypto::{CryptoError, Keyring};
use crate::names::{NameError, ServerName};

/// Timeout of connections tenantd opens to servers as admin.
const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A server problem; messages never contain a password.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad name.
    #[error("{0}")]
    Name(#[from] NameError),
    /// The URL cannot be used.
    #[error("invalid server URL: {0} (expected postgres://USER:PASSWORD@HOST:PORT/DBNAME)")]
    BadUrl(&'static str),
    /// The server could not be reached or refused the login.
    #[error("cannot connect to {target}: {reason}")]
    Unreachable {
        /// `user@host:port/db`.
        target: String,
        /// Why.
        reason: String,
    },
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
    /// The sealed password cannot be opened.
    #[error("admin password of server {server:?} cannot be opened: {source}")]
    Sealed {
        /// Server.
        server: String,
        /// Why.
        #[source]
        source: CryptoError,
    },
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

/// Connection details of a server's admin role, password opened.
pub struct AdminTarget {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Admin role.
    pub user: String,
    /// Admin password.
    pub password: SecretString,
    /// Maintenance database.
    pub maintenance_db: String,
}

impl std::fmt::Debug for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}/{}", self.user, self.host, self.port, self.maintenance_db)
    }
}

impl AdminTarget {
    /// Parses `postgres://user:pw@host:port/db`. Port defaults to 5432, database to `postgres`.
    pub fn from_url(url: &SecretString, password: Option<&SecretString>) -> Result<Self, ServerError> {
        let config =
            crate::catalog::parse_pg_config(url).map_err(|_| ServerError::BadUrl("cannot parse it"))?;
        let host = match config.get_hosts() {
            [tokio_postgres::config::Host::Tcp(h)] => h.clone(),
            [] => return Err(ServerError::BadUrl("no host")),
            [_] => {
                return Err(ServerError::BadUrl("Unix sockets are not supported; give a TCP host"));
            }
            _ => return Err(ServerError::BadUrl("exactly one host please")),
        };
        let port = match config.get_ports() {
            [] => 5432,
            [p] => *p,
            _ => return Err(ServerError::BadUrl("exactly one port please")),
        };
        let user =
            config.get_user().filter(|u| !u.is_empty()).ok_or(ServerError::BadUrl("no user"))?.to_owned();
        let password = config
            .get_password()
            .map(|p| String::from_utf8(p.to_vec()))
            .transpose()
            .map_err(|_| ServerError::BadUrl("password is not UTF-8"))?
            .or_else(|| password.map(|p| p.expose_secret().to_owned()))
            .ok_or(ServerError::BadUrl("no password (put it in the URL or give it separately)"))?;
        let maintenance_db = config.get_dbname().unwrap_or("postgres").to_owned();
        Ok(Self { host, port, user, password: SecretString::from(password), maintenance_db })
    }

    /// Opens the sealed password of a catalog row.
    pub fn from_record(server: &ServerRecord, keyring: &Keyring) -> Result<Self, ServerError> {
        let password = keyring
            .open(&server.admin_password_sealed, &server_aad(&server.name))
            .map_err(|source| ServerError::Sealed { server: server.name.clone(), source })?;
        Ok(Self {
            host: server.host.clone(),
            port: server.port,
            user: server.admin_user.clone(),
            password,
            maintenance_db: server.maintenance_db.clone(),
        })
    }

    /// A connection configuration for `dbname` (the maintenance database when `None`).
    pub fn config(&self, dbname: Option<&str>) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .password(self.password.expose_secret())
            .dbname(dbname.unwrap_or(&self.maintenance_db))
            .application_name("tenantd")
            .connect_timeout(ADMIN_CONNECT_TIMEOUT);
        config
    }

    /// Connects as admin; the connection driver runs on its own task.
    pub async fn connect(&self, dbname: Option<&str>) -> Result<tokio_postgres::Client, ServerError> {
        let target =
            format!("{}@{}:{}/{}", self.user, self.host, self.port, dbname.unwrap_or(&self.maintenance_db));
        crate::pg::connect(&self.config(dbname), &target)
            .await
            .map_err(|e| ServerError::Unreachable { target: target.clone(), reason: crate::pg::describe(&e) })
    }
}

/// Pools of admin connections to each server's maintenance database, reused by provisioning
/// (a fresh connection costs a backend start and a SCRAM exchange, several ms each).
///
/// A pool is keyed by server name and replaced when the server's address, admin role or
/// sealed password changes in the catalog, so edits take effect without a restart. Health
/// checks do not use these pools: they must prove that *new* connections work.
pub struct AdminPools {
    size: usize,
    pools: std::sync::Mutex<std::collections::HashMap<String, (String, deadpool_postgres::Pool)>>,
}

impl std::fmt::Debug for AdminPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminPools").finish_non_exhaustive()
    }
}

impl AdminPools {
    /// Pools of at most `size` connections per server (one per provisioning worker suits).
    pub fn new(size: usize) -> Self {
        Self { size: size.max(1), pools: std::sync::Mutex::default() }
    }

    /// A pooled admin connection to `server`'s maintenance database.
    pub async fn get(
        &self,
        server: &ServerRecord,
        target: &AdminTarget,
    ) -> Result<deadpool_postgres::Client, ServerError> {
        let fingerprint = format!(
            "{}:{}:{}:{}:{}",
            server.host, server.port, server.admin_user, server.maintenance_db, server.admin_password_sealed
        );
        let pool = {
            let mut pools = self.pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match pools.get(&server.name) {
                Some((fp, pool)) if *fp == fingerprint => pool.clone(),
                _ => {
                    let manager = deadpool_postgres::Manager::from_config(
                        target.config(None),
                        tokio_postgres::NoTls,
                        deadpool_postgres::ManagerConfig {
                            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
                        },
                    );
                    let pool = deadpool_postgres::Pool::builder(manager)
                        .max_size(self.size)
                        .runtime(deadpool_postgres::Runtime::Tokio1)
                        .wait_timeout(Some(ADMIN_CONNECT_TIMEOUT))
                        .create_timeout(Some(ADMIN_CONNECT_TIMEOUT))
                        .build()
                        .map_err(|e| ServerError::Unreachable {
                            target: format!("{target:?}"),
                            reason: e.to_string(),
                        })?;
                    pools.insert(server.name.clone(), (fingerprint, pool.clone()));
                    pool
                }
            }
        };
        pool.get().await.map_err(|e| ServerError::Unreachable {
            target: format!("{target:?}"),
            reason: match e {
                deadpool_postgres::PoolError::Backend(pg) => crate::pg::describe(&pg),
                other => other.to_string(),
            },
        })
    }
}

/// Associated data of a server's sealed password.
pub fn server_aad(name: &str) -> Vec<u8> {
    format!("server:{name}").into_bytes()
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
    let describe = |e: tokio_postgres::Error| ServerError::Unreachable {
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

/// Checks one server: connects as admin and runs `SELECT 1`; returns the latency in ms.
pub async fn check_health(server: &ServerRecord, keyring: &Keyring) -> Result<f64, String> {
    let target = AdminTarget::from_record(server, keyring).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let client = target.connect(None).await.map_err(|e| e.to_string())?;
    client.simple_query("SELECT 1").await.map_err(|e| crate::pg::describe(&e))?;
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
        } else if server.health != "healthy" {
            tracing::info!(server = %server.name, "server is healthy");
        }
        metrics::gauge!("tenantd_server_healthy", "server" => server.name.clone())
            .set(f64::from(u8::from(healthy)));
        if let Ok(ms) = &result {
            metrics::gauge!("tenantd_server_latency_ms", "server" => server.name.clone()).set(*ms);
        }
        catalog.record_server_health(&server.name, result).await?;
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
            .map_err(|source| ServerError::Sealed { server: server.name.clone(), source })?;
        catalog.reseal_server_password(&server.name, &keyring.seal(password.expose_secret(), &aad)).await?;
        changed += 1;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t =
            AdminTarget::from_url(&SecretString::from("postgres://adm:p%40ss@db.example:6543/maint"), None)
                .unwrap();
        assert_eq!((t.host.as_str(), t.port, t.user.as_str()), ("db.example", 6543, "adm"));
        assert_eq!(t.password.expose_secret(), "p@ss");
        assert_eq!(t.maintenance_db, "maint");
        let d = AdminTarget::from_url(&SecretString::from("postgres://adm:pw@h"), None).unwrap();
        assert_eq!((d.port, d.maintenance_db.as_str()), (5432, "postgres"));
        assert!(!format!("{d:?}").contains("pw"));
    }

    #[test]
    fn bad_urls_never_echo_the_password() {
        for bad in [
            "nonsense://",
            "postgres://adm@h/db",
            "postgres://:hunter2@h/db",
            "postgres://u:hunter2@h:notaport/db",
        ] {
            let err = AdminTarget::from_url(&SecretString::from(bad), None).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.starts_with("invalid server URL"), "{err}");
        }
    }
}
