//! The one way to reach a tenant's database: [`TenantTarget`].
//!
//! Resolved from the tenant's catalog row, its server's row and the keyring, with every name
//! checked and the role password opened, it gives the tokio-postgres configuration of the
//! tenant role and the connection details lent to applications. Lending, pools, upgrades,
//! provisioning, lifecycle operations, dumps and the CLI all go through it, so "connect as the
//! tenant" is written once.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use uuid::Uuid;

use crate::catalog::servers::ServerRecord;
use crate::catalog::tenants::TenantRecord;
use crate::catalog::{Catalog, CatalogError};
use crate::config::PgBouncerSettings;
use crate::crypto::{CryptoError, Keyring, tenant_aad};
use crate::names::{NameError, PgIdent};
use crate::pgtls::SslMode;

/// Timeout of connections tenantd opens as a tenant role.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a tenant's database cannot be reached from its catalog row.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The row lacks a server, a name or the sealed password (not placed yet, or edited).
    #[error("tenant {slug:?} has no {what} in the catalog")]
    Missing {
        /// Tenant.
        slug: String,
        /// `server`, `database_name`, `role_name` or `role password`.
        what: &'static str,
    },
    /// A name in the row breaks the naming rules (a hand-edited catalog).
    #[error("tenant {slug:?}: {what}: {source}")]
    BadName {
        /// Tenant.
        slug: String,
        /// Which column.
        what: &'static str,
        /// The rule broken.
        #[source]
        source: NameError,
    },
    /// The sealed role password cannot be opened (missing key, moved ciphertext).
    #[error("tenant {slug:?}: role password cannot be opened: {source}")]
    Sealed {
        /// Tenant.
        slug: String,
        /// Why.
        #[source]
        source: CryptoError,
    },
    /// The catalog failed (or the server row is gone).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// A placed tenant's database and role on its server, password opened.
pub struct TenantTarget {
    /// Tenant id.
    pub id: Uuid,
    /// Tenant slug.
    pub slug: String,
    /// The server's catalog row.
    pub server: ServerRecord,
    /// Database (final name).
    pub database: PgIdent,
    /// Login role of the tenant.
    pub role: PgIdent,
    password: SecretString,
    /// PBKDF2 iterations of the role's SCRAM verifier (`tenants.scram_iterations`).
    scram_iterations: i32,
}

impl std::fmt::Debug for TenantTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}/{}", self.role, self.server.host, self.server.port, self.database)
    }
}

/// Connection details of a tenant's own role, as lent to applications.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConnectionDetails {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Database.
    pub dbname: String,
    /// Role.
    pub user: String,
    /// Role password.
    pub password: String,
    /// libpq's `sslmode` to connect with (the server's setting in tenantd; with `verify-ca`
    /// or `verify-full` the application needs the server's CA too).
    pub sslmode: SslMode,
    /// All of it as a URL.
    pub url: String,
    /// `transaction` when the details name a PgBouncer route (`pgbouncer.host` set): one
    /// session is not one server connection, so session state does not carry over (README,
    /// "Behind PgBouncer"). Absent for a direct connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub pool_mode: Option<&'static str>,
}

/// The pool mode of the PgBouncer routes `tenantd pgbouncer config` writes.
pub const PGBOUNCER_POOL_MODE: &str = "transaction";

impl TenantTarget {
    /// Resolves a tenant's target from its row, reading its server's row from the catalog.
    pub async fn resolve(
        catalog: &Catalog,
        keyring: &Keyring,
        tenant: &TenantRecord,
    ) -> Result<TenantTarget, TargetError> {
        let server = tenant.server.as_deref().ok_or_else(|| missing(tenant, "server"))?;
        let server = catalog.server(server).await?;
        Self::new(tenant, &server, keyring)
    }

    /// Builds a tenant's target from its row and its server's row.
    pub fn new(
        tenant: &TenantRecord,
        server: &ServerRecord,
        keyring: &Keyring,
    ) -> Result<TenantTarget, TargetError> {
        let database = tenant.database_name.as_deref().ok_or_else(|| missing(tenant, "database_name"))?;
        let role = tenant.role_name.as_deref().ok_or_else(|| missing(tenant, "role_name"))?;
        let sealed =
            tenant.role_password_sealed.as_deref().ok_or_else(|| missing(tenant, "role password"))?;
        let mut target = Self::from_parts(tenant.id, &tenant.slug, server, database, role, sealed, keyring)?;
        target.scram_iterations = tenant.scram_iterations.unwrap_or(crate::crypto::LEGACY_SCRAM_ITERATIONS);
        Ok(target)
    }

    /// Builds a target from its parts (provisioning, between placement and the row's reread:
    /// a password placed by this build, whose verifier has this build's iteration count).
    pub fn from_parts(
        id: Uuid,
        slug: &str,
        server: &ServerRecord,
        database: &str,
        role: &str,
        sealed_password: &str,
        keyring: &Keyring,
    ) -> Result<TenantTarget, TargetError> {
        let name = |what, text| {
            PgIdent::from_catalog(text).map_err(|source| TargetError::BadName {
                slug: slug.to_owned(),
                what,
                source,
            })
        };
        let (database, role) = (name("database_name", database)?, name("role_name", role)?);
        let password = keyring
            .open(sealed_password, &tenant_aad(id))
            .map_err(|source| TargetError::Sealed { slug: slug.to_owned(), source })?;
        Ok(TenantTarget {
            id,
            slug: slug.to_owned(),
            server: server.clone(),
            database,
            role,
            password,
            scram_iterations: crate::crypto::TENANT_SCRAM_ITERATIONS,
        })
    }

    /// The tenant role's password.
    pub fn password(&self) -> &SecretString {
        &self.password
    }

    /// A configuration that logs in as the tenant role to `database` (the final name unless
    /// given: provisioning migrates under the staging name).
    pub fn config(&self, database: Option<&PgIdent>, application_name: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.server.host)
            .port(self.server.port)
            .dbname(database.unwrap_or(&self.database).as_str())
            .user(self.role.as_str())
            .password(self.password.expose_secret())
            .application_name(application_name)
            .connect_timeout(CONNECT_TIMEOUT);
        self.server.tls.apply(&mut config);
        config
    }

    /// [`TenantTarget::config`] for applying migrations: the default search path and a bounded
    /// wait for locks (a tenant holding `ACCESS EXCLUSIVE` fails the attempt with a clear
    /// reason instead of freezing a fleet upgrade).
    pub fn migration_config(
        &self,
        database: Option<&PgIdent>,
        application_name: &str,
    ) -> tokio_postgres::Config {
        let mut config = self.config(database, application_name);
        crate::pg::add_options(&mut config, crate::pg::MIGRATION_SESSION);
        config
    }

    /// The details an application connects with: through PgBouncer when `pgbouncer.host` is
    /// set (its `[databases]` entry for a tenant is named like the tenant's database, see
    /// `tenantd pgbouncer config`), else straight to the server.
    pub fn details(&self, pgbouncer: &PgBouncerSettings) -> ConnectionDetails {
        match &pgbouncer.host {
            Some(host) => self.details_at(host, pgbouncer.port, Some(PGBOUNCER_POOL_MODE)),
            None => self.direct_details(),
        }
    }

    /// The details of a direct connection to the tenant's server.
    pub fn direct_details(&self) -> ConnectionDetails {
        self.details_at(&self.server.host, self.server.port, None)
    }

    fn details_at(&self, host: &str, port: u16, pool_mode: Option<&'static str>) -> ConnectionDetails {
        let password = self.password.expose_secret();
        // Straight to the server: its sslmode. Through PgBouncer, whose client-side TLS is the
        // operator's own configuration: libpq's default.
        let sslmode = if pool_mode.is_some() { SslMode::Prefer } else { self.server.tls.sslmode };
        ConnectionDetails {
            host: host.to_owned(),
            port,
            dbname: self.database.to_string(),
            user: self.role.to_string(),
            password: password.to_owned(),
            sslmode,
            url: format!(
                "{}?sslmode={sslmode}",
                crate::pg::url(self.role.as_str(), password, host, port, self.database.as_str())
            ),
            pool_mode,
        }
    }

    /// The SCRAM verifier of the tenant role's password, as tenantd stores it on the server
    /// (and as PgBouncer's `auth_file` must hold it).
    pub fn scram_verifier(&self) -> String {
        crate::crypto::tenant_scram_verifier(&self.password, self.id, self.scram_iterations)
    }
}

fn missing(tenant: &TenantRecord, what: &'static str) -> TargetError {
    TargetError::Missing { slug: tenant.slug.clone(), what }
}

/// Why a tenant is not lent out (its database not handed to applications) right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotLendable {
    /// Its database is at a schema version newer than this build knows.
    #[error(
        "tenant {slug:?} is at schema version {version}, newer than this tenantd build ({latest}); \
         run the newer build to lend it"
    )]
    SchemaNewer {
        /// Tenant.
        slug: String,
        /// Its version.
        version: i32,
        /// This build's latest version.
        latest: i32,
    },
    /// Suspended by an operator.
    #[error("tenant {0:?} is suspended")]
    Suspended(String),
    /// Being deleted or deleted.
    #[error("tenant {0:?} is {1}")]
    Deleted(String, crate::catalog::tenants::TenantStatus),
    /// Being moved to another server: back in a moment.
    #[error("tenant {0:?} is moving to another server; retry shortly")]
    Moving(String),
    /// Still provisioning, or in ERROR.
    #[error("tenant {0:?} is {1}, not READY")]
    NotReady(String, crate::catalog::tenants::TenantStatus),
}

/// The lending rule, for the HTTP API and the CLI alike: only READY tenants whose schema this
/// build knows are lent.
pub fn lendable(tenant: &TenantRecord, latest_version: i32) -> Result<(), NotLendable> {
    use crate::catalog::tenants::TenantStatus;
    let slug = || tenant.slug.clone();
    match tenant.status {
        TenantStatus::Ready if tenant.schema_version > latest_version => Err(NotLendable::SchemaNewer {
            slug: slug(),
            version: tenant.schema_version,
            latest: latest_version,
        }),
        TenantStatus::Ready => Ok(()),
        TenantStatus::Suspended => Err(NotLendable::Suspended(slug())),
        TenantStatus::Moving => Err(NotLendable::Moving(slug())),
        status @ (TenantStatus::Deleting | TenantStatus::Deleted) => {
            Err(NotLendable::Deleted(slug(), status))
        }
        status => Err(NotLendable::NotReady(slug(), status)),
    }
}
