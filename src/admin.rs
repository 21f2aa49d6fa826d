//! Connections to a database server as its admin role: the one way tenantd reaches a server
//! with the rights to create, lock down, suspend and drop tenant databases.
//!
//! [`AdminTarget`] is a server's admin login with its password opened; [`AdminPools`] keeps a
//! few pooled admin connections per server for provisioning and lifecycle work.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::catalog::servers::ServerRecord;
use crate::crypto::{CryptoError, Keyring, server_aad};
use crate::pgtls::PgTls;

/// Timeout of connections tenantd opens to servers as admin.
const ADMIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a pooled admin connection may take to answer its check before reuse.
const ADMIN_RECYCLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A problem reaching a server as its admin; messages never contain a password.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The URL cannot be used.
    #[error("invalid server URL: {0} (expected postgres://USER:PASSWORD@HOST:PORT/DBNAME)")]
    BadUrl(&'static str),
    /// The server's TLS settings cannot be used (a certificate file missing or unreadable).
    #[error("TLS settings: {0}")]
    Tls(crate::pgtls::TlsError),
    /// The server could not be reached or refused the login.
    #[error("cannot connect to {target}: {reason}")]
    Unreachable {
        /// `user@host:port/db`.
        target: String,
        /// Why.
        reason: String,
    },
    /// The sealed password cannot be opened.
    #[error("admin password of server {server:?} cannot be opened: {source}")]
    Sealed {
        /// Server.
        server: String,
        /// Why.
        #[source]
        source: CryptoError,
    },
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
    /// TLS to the server.
    pub tls: PgTls,
}

impl std::fmt::Debug for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}/{}", self.user, self.host, self.port, self.maintenance_db)
    }
}

impl AdminTarget {
    /// Parses `postgres://user:pw@host:port/db`. Port defaults to 5432, database to `postgres`.
    pub fn from_url(url: &SecretString, password: Option<&SecretString>) -> Result<Self, AdminError> {
        let (config, tls) = crate::catalog::parse_pg_config(url).map_err(|e| match e {
            crate::catalog::CatalogError::Tls(e) => AdminError::Tls(e),
            _ => AdminError::BadUrl("cannot parse it"),
        })?;
        let host = match config.get_hosts() {
            [tokio_postgres::config::Host::Tcp(h)] => h.clone(),
            [] => return Err(AdminError::BadUrl("no host")),
            [_] => {
                return Err(AdminError::BadUrl("Unix sockets are not supported; give a TCP host"));
            }
            _ => return Err(AdminError::BadUrl("exactly one host please")),
        };
        let port = match config.get_ports() {
            [] => 5432,
            [p] => *p,
            _ => return Err(AdminError::BadUrl("exactly one port please")),
        };
        let user =
            config.get_user().filter(|u| !u.is_empty()).ok_or(AdminError::BadUrl("no user"))?.to_owned();
        let password = config
            .get_password()
            .map(|p| String::from_utf8(p.to_vec()))
            .transpose()
            .map_err(|_| AdminError::BadUrl("password is not UTF-8"))?
            .or_else(|| password.map(|p| p.expose_secret().to_owned()))
            .ok_or(AdminError::BadUrl("no password (put it in the URL or give it separately)"))?;
        let maintenance_db = config.get_dbname().unwrap_or("postgres").to_owned();
        Ok(Self { host, port, user, password: SecretString::from(password), maintenance_db, tls })
    }

    /// Opens the sealed password of a catalog row.
    pub fn from_record(server: &ServerRecord, keyring: &Keyring) -> Result<Self, AdminError> {
        let password = keyring
            .open(&server.admin_password_sealed, &server_aad(&server.name))
            .map_err(|source| AdminError::Sealed { server: server.name.clone(), source })?;
        Ok(Self {
            host: server.host.clone(),
            port: server.port,
            user: server.admin_user.clone(),
            password,
            maintenance_db: server.maintenance_db.clone(),
            tls: server.tls.clone(),
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
        self.tls.apply(&mut config);
        crate::pg::add_options(&mut config, crate::pg::ADMIN_SESSION);
        config
    }

    /// The TLS connector of connections to this server (also for their cancel requests).
    pub fn connector(&self) -> Result<crate::pgtls::Connector, AdminError> {
        self.tls.connector(&self.host, self.port).map_err(AdminError::Tls)
    }

    /// Connects as admin; the connection driver runs on its own task.
    pub async fn connect(&self, dbname: Option<&str>) -> Result<tokio_postgres::Client, AdminError> {
        let target =
            format!("{}@{}:{}/{}", self.user, self.host, self.port, dbname.unwrap_or(&self.maintenance_db));
        crate::pg::connect(&self.config(dbname), &self.tls, &target).await.map_err(|e| match e {
            crate::pg::ConnectError::Tls(e) => AdminError::Tls(e),
            crate::pg::ConnectError::Postgres(e) => {
                AdminError::Unreachable { target: target.clone(), reason: crate::pg::describe(&e) }
            }
            crate::pg::ConnectError::TimedOut(reason) => {
                AdminError::Unreachable { target: target.clone(), reason }
            }
        })
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
    /// Pools of at most `size` connections per server (two per provisioning worker suit).
    pub fn new(size: usize) -> Self {
        Self { size: size.max(1), pools: std::sync::Mutex::default() }
    }

    /// A pooled admin connection to `server`'s maintenance database.
    pub async fn get(
        &self,
        server: &ServerRecord,
        target: &AdminTarget,
    ) -> Result<deadpool_postgres::Client, AdminError> {
        let fingerprint = format!(
            "{}:{}:{}:{}:{}:{:?}",
            server.host,
            server.port,
            server.admin_user,
            server.maintenance_db,
            server.admin_password_sealed,
            server.tls
        );
        let pool = {
            let mut pools = self.pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match pools.get(&server.name) {
                Some((fp, pool)) if *fp == fingerprint => pool.clone(),
                _ => {
                    let manager = deadpool_postgres::Manager::from_config(
                        target.config(None),
                        target.connector()?,
                        // Verified: a connection given back while a statement still runs (its
                        // request was dropped) does not answer the check in time and is closed
                        // instead of being lent to the next caller.
                        deadpool_postgres::ManagerConfig {
                            recycling_method: deadpool_postgres::RecyclingMethod::Verified,
                        },
                    );
                    let pool = deadpool_postgres::Pool::builder(manager)
                        .max_size(self.size)
                        .runtime(deadpool_postgres::Runtime::Tokio1)
                        .wait_timeout(Some(ADMIN_CONNECT_TIMEOUT))
                        .create_timeout(Some(ADMIN_CONNECT_TIMEOUT))
                        .recycle_timeout(Some(ADMIN_RECYCLE_TIMEOUT))
                        .build()
                        .map_err(|e| AdminError::Unreachable {
                            target: format!("{target:?}"),
                            reason: e.to_string(),
                        })?;
                    pools.insert(server.name.clone(), (fingerprint, pool.clone()));
                    pool
                }
            }
        };
        pool.get().await.map_err(|e| AdminError::Unreachable {
            target: format!("{target:?}"),
            reason: match e {
                deadpool_postgres::PoolError::Backend(pg) => crate::pg::describe(&pg),
                other => other.to_string(),
            },
        })
    }
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
