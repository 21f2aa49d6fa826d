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
use crate::catalog::servers::{NewServer, ServerHealth, ServerPatch, ServerRecord};
use crate::catalog::{Catalog, CatalogError};
use crate::config::Settings;
use crate::core::Core;
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
    /// A tenant's sealed role password cannot be opened (key rotation needs every old key).
    #[error("role password of tenant {slug:?} cannot be opened: {source}")]
    TenantSealed {
        /// Tenant.
        slug: String,
        /// Why.
        #[source]
        source: crate::crypto::CryptoError,
    },
    /// A webhook's sealed secret cannot be opened (key rotation needs every old key).
    #[error("secret of webhook {id} cannot be opened: {source}")]
    WebhookSealed {
        /// Webhook.
        id: uuid::Uuid,
        /// Why.
        #[source]
        source: crate::crypto::CryptoError,
    },
    /// The server would let tenants reach what they must not, or cannot hold the pools.
    #[error("{0}")]
    Unsafe(String),
    /// Weight or capacity out of range.
    #[error("{0}")]
    BadValue(String),
    /// Catalog failure (including a taken name, as `Conflict`).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What is needed to register a server.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddServer {
    /// Unique name.
    pub name: String,
    /// `postgres://admin:pw@host:port/maintenance_db`.
    #[schema(value_type = String)]
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
    #[schema(value_type = Option<String>)]
    pub password: Option<SecretString>,
    /// Accept a maintenance database that PUBLIC may connect to or create objects in (the
    /// PostgreSQL 13/14 defaults): refused otherwise, since tenant roles could plant objects
    /// there.
    #[serde(default)]
    pub allow_public_maintenance_db: bool,
}

/// The result of registering a server: its row and advice for the operator.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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

/// What the admin's session finds on a server being added.
struct Findings {
    version_num: i32,
    version: String,
    superuser: bool,
    createdb: bool,
    createrole: bool,
    /// PUBLIC may connect to the maintenance database.
    public_connect: bool,
    /// Schemas of the maintenance database where PUBLIC may create objects.
    public_create: Vec<String>,
    /// Other databases PUBLIC may connect to (tenant roles can reach them).
    open_databases: Vec<String>,
    /// `max_connections` − `superuser_reserved_connections`.
    usable_connections: i32,
}

async fn inspect(client: &tokio_postgres::Client) -> Result<Findings, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::pg_catalog.int4, \
                    pg_catalog.current_setting('server_version'), \
                    r.rolsuper, r.rolcreatedb, r.rolcreaterole, \
                    pg_catalog.has_database_privilege('public', pg_catalog.current_database(), 'CONNECT'), \
                    ARRAY(SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_namespace n \
                          WHERE pg_catalog.has_schema_privilege('public', n.oid, 'CREATE') ORDER BY 1), \
                    ARRAY(SELECT d.datname::pg_catalog.text FROM pg_catalog.pg_database d \
                          WHERE d.datallowconn AND d.datname OPERATOR(pg_catalog.<>) pg_catalog.current_database() \
                          AND pg_catalog.has_database_privilege('public', d.oid, 'CONNECT') ORDER BY 1), \
                    pg_catalog.current_setting('max_connections')::pg_catalog.int4 \
                      OPERATOR(pg_catalog.-) pg_catalog.current_setting('superuser_reserved_connections')::pg_catalog.int4 \
             FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER",
            &[],
        )
        .await?;
    Ok(Findings {
        version_num: row.get(0),
        version: row.get(1),
        superuser: row.get(2),
        createdb: row.get(3),
        createrole: row.get(4),
        public_connect: row.get(5),
        public_create: row.get(6),
        open_databases: row.get(7),
        usable_connections: row.get(8),
    })
}

/// Connections tenantd may open to one server beside the tenant pools: admin pools, health
/// checks, upgrade runs, dumps and backups, with room to spare.
pub fn headroom(settings: &Settings) -> usize {
    settings.workers.concurrency + 1 + settings.upgrade.concurrency + settings.backups.concurrency + 5
}

async fn verify(target: &AdminTarget, settings: &Settings, req: &AddServer) -> Result<Verified, ServerError> {
    let started = Instant::now();
    let client = target.connect(None).await?;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let found = inspect(&client).await.map_err(|e| AdminError::Unreachable {
        target: format!("{}:{}", target.host, target.port),
        reason: crate::pg::describe(&e),
    })?;
    if found.version_num < 130_000 {
        return Err(ServerError::TooOld(format!("{}:{}", target.host, target.port), found.version));
    }
    let missing: Vec<&str> = [("CREATEDB", found.createdb), ("CREATEROLE", found.createrole)]
        .into_iter()
        .filter(|(_, has)| !(found.superuser || *has))
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
    let db = crate::tenant_sql::quote_ident(&target.maintenance_db);
    let mut open = Vec::new();
    if found.public_connect {
        open.push(format!("PUBLIC may connect to it (fix: REVOKE CONNECT ON DATABASE {db} FROM PUBLIC)"));
    }
    for schema in &found.public_create {
        let schema = crate::tenant_sql::quote_ident(schema);
        open.push(format!(
            "PUBLIC may create objects in schema {schema} (fix: REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC)"
        ));
    }
    let mut warnings = Vec::new();
    if !open.is_empty() {
        let problem = format!(
            "maintenance database {:?} is open to every role, tenants included: {}",
            target.maintenance_db,
            open.join("; ")
        );
        if !req.allow_public_maintenance_db {
            return Err(ServerError::Unsafe(format!(
                "{problem}. Run the fixes as a superuser, or pass allow_public_maintenance_db \
                 (--allow-public-maintenance-db) to accept the risk"
            )));
        }
        warnings.push(problem);
    }
    let needed = settings.pools.per_server + headroom(settings);
    if usize::try_from(found.usable_connections).unwrap_or(0) < needed {
        return Err(ServerError::Unsafe(format!(
            "max_connections leaves {} connections for non-superusers; tenantd needs {needed} \
             (pools.per_server {} + {} for admin work): raise max_connections or lower pools.per_server",
            found.usable_connections,
            settings.pools.per_server,
            headroom(settings)
        )));
    }
    if found.superuser {
        warnings.push(format!(
            "role {:?} is a superuser; tenantd needs only LOGIN CREATEDB CREATEROLE",
            target.user
        ));
    }
    if !found.open_databases.is_empty() {
        warnings.push(format!(
            "tenant roles can connect to these databases because PUBLIC may: {}; a superuser can \
             REVOKE CONNECT ON DATABASE ... FROM PUBLIC for each one they should not reach",
            found.open_databases.join(", ")
        ));
    }
    Ok(Verified { latency_ms, warnings })
}

/// Registers a server after verifying it (the one code path of CLI and HTTP).
pub async fn add(core: &Core, req: &AddServer) -> Result<Added, ServerError> {
    let (catalog, keyring) = (&core.catalog, &core.keyring);
    let name = ServerName::parse(&req.name)?;
    let target = AdminTarget::from_url(&req.url, req.password.as_ref())?;
    let weight = req.weight.unwrap_or(100);
    if weight < 1 {
        return Err(ServerError::BadValue(format!("weight must be at least 1 (got {weight})")));
    }
    if let Some(max) = req.max_tenants.filter(|m| *m < 0) {
        return Err(ServerError::BadValue(format!("max_tenants must be 0 or more (got {max})")));
    }
    let verified = verify(&target, &core.settings, req).await?;
    let new = NewServer {
        name: name.to_string(),
        host: target.host.clone(),
        port: target.port,
        admin_user: target.user.clone(),
        admin_password_sealed: keyring.seal(target.password.expose_secret(), &server_aad(name.as_str())),
        maintenance_db: target.maintenance_db.clone(),
        tls: target.tls.clone(),
        weight,
        max_tenants: req.max_tenants,
        region: req.region.clone().filter(|r| !r.is_empty()),
        latency_ms: verified.latency_ms,
    };
    let server = catalog.insert_server(&new).await?;
    tracing::info!(server = %name, host = %new.host, port = new.port, "server added");
    Ok(Added { server, warnings: verified.warnings })
}

/// Changes a server's status, weight, capacity, region or TLS settings (the one code path of
/// CLI and HTTP). New TLS settings are tried first: a connection must succeed with them, so a
/// wrong CA or mode never reaches the catalog and cuts every daemon off the server.
pub async fn update(core: &Core, name: &str, patch: &ServerPatch) -> Result<ServerRecord, ServerError> {
    if let Some(weight) = patch.weight.filter(|w| *w < 1) {
        return Err(ServerError::BadValue(format!("weight must be at least 1 (got {weight})")));
    }
    if let Some(max) = patch.max_tenants.filter(|m| *m < 0) {
        return Err(ServerError::BadValue(format!("max_tenants must be 0 or more (got {max})")));
    }
    if let Some(tls) = &patch.tls {
        tls.check().map_err(AdminError::Tls)?;
        let server = core.catalog.server(name).await?;
        let mut target = AdminTarget::from_record(&server, &core.keyring)?;
        target.tls = tls.clone();
        let client = target.connect(None).await?;
        client.simple_query("SELECT 1").await.map_err(|e| AdminError::Unreachable {
            target: format!("{target:?}"),
            reason: crate::pg::describe(&e),
        })?;
    }
    let server = core.catalog.update_server(name, patch).await?;
    tracing::info!(server = %name, ?patch, "server updated");
    Ok(server)
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

/// Checks every server once and records the results in the catalog; a server that answers
/// again makes the tenants waiting for it due now.
pub async fn check_all(catalog: &Catalog, keyring: &Keyring) -> Result<(), CatalogError> {
    let servers = catalog.servers().await?;
    let checks = servers.iter().map(|s| async move { (s, check_health(s, keyring).await) });
    for (server, result) in futures::future::join_all(checks).await {
        let healthy = result.is_ok();
        // Logged when the health changes, not every round of a long outage.
        match &result {
            Err(error) if server.health == ServerHealth::Unhealthy => {
                tracing::debug!(server = %server.name, %error, "server health check failed again");
            }
            Err(error) => tracing::warn!(
                server = %server.name,
                %error,
                "server health check failed: the server is unhealthy; its tenants' lending answers 503 \
                 and new tenants go elsewhere"
            ),
            Ok(_) if server.health != ServerHealth::Healthy => {
                tracing::info!(server = %server.name, "server is healthy");
            }
            Ok(_) => {}
        }
        metrics::gauge!("tenantd_server_healthy", "server" => server.name.clone())
            .set(f64::from(u8::from(healthy)));
        if let Ok(ms) = &result {
            metrics::gauge!("tenantd_server_latency_ms", "server" => server.name.clone()).set(*ms);
        }
        let result = result.map_err(|e| e.to_string());
        catalog.record_server_health(&server.name, result.as_ref().copied().map_err(String::as_str)).await?;
        if healthy && server.health == ServerHealth::Unhealthy {
            // Tenants whose provisioning waits for this server are retried now, not at the
            // end of their backoff.
            let woken = catalog.wake_waiting_on(&server.name).await?;
            if woken > 0 {
                tracing::info!(server = %server.name, tenants = woken, "server is back: retrying its tenants' provisioning now");
            }
        }
    }
    Ok(())
}

/// What a key rotation re-sealed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Server admin passwords.
    pub servers: usize,
    /// Tenant role passwords.
    pub tenants: usize,
    /// Webhook signing secrets.
    pub webhooks: usize,
}

/// Re-seals every sealed value still under an old key with the current master key: server
/// admin passwords, tenant role passwords and webhook secrets. Each value is swapped only if it is unchanged
/// since it was read, so the rotation can be run again after an interruption, or while
/// daemons work.
pub async fn rotate_keys(catalog: &Catalog, keyring: &Keyring) -> Result<Resealed, ServerError> {
    let servers = rotate_server_keys(catalog, keyring).await?;
    let mut tenants = 0;
    for (id, slug, sealed) in catalog.tenant_passwords().await? {
        if !keyring.is_stale(&sealed) {
            continue;
        }
        let aad = crate::crypto::tenant_aad(id);
        let password = keyring
            .open(&sealed, &aad)
            .map_err(|source| ServerError::TenantSealed { slug: slug.clone(), source })?;
        if catalog.reseal_tenant_password(id, &sealed, &keyring.seal(password.expose_secret(), &aad)).await? {
            tenants += 1;
        }
    }
    let webhooks = rotate_webhook_keys(catalog, keyring).await?;
    Ok(Resealed { servers, tenants, webhooks })
}

async fn rotate_webhook_keys(catalog: &Catalog, keyring: &Keyring) -> Result<usize, ServerError> {
    let mut changed = 0;
    for (id, sealed) in catalog.webhook_secrets().await? {
        if !keyring.is_stale(&sealed) {
            continue;
        }
        let aad = crate::crypto::webhook_aad(id);
        let secret =
            keyring.open(&sealed, &aad).map_err(|source| ServerError::WebhookSealed { id, source })?;
        if catalog.reseal_webhook_secret(id, &sealed, &keyring.seal(secret.expose_secret(), &aad)).await? {
            changed += 1;
        }
    }
    Ok(changed)
}

async fn rotate_server_keys(catalog: &Catalog, keyring: &Keyring) -> Result<usize, ServerError> {
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
