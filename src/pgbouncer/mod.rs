//! PgBouncer in front of the tenant databases: `tenantd pgbouncer config` writes its
//! configuration from the catalog, and with `--watch` keeps it current.
//!
//! Two files in one directory, both replaced atomically (written beside, then renamed):
//!
//! - `pgbouncer.ini`: `pool_mode = transaction`, `auth_type = scram-sha-256`, `auth_file`
//!   next to it, and a `[databases]` entry per READY tenant, named like the tenant's database,
//!   pointing at its server (no user in the entry: PgBouncer logs in as the client's role).
//!   Each entry's `pool_size` is the tenant role's `CONNECTION LIMIT` less tenantd's own
//!   lending pool of that tenant, so both together stay within the limit.
//! - `userlist.txt` (mode 0600): each READY tenant role with its SCRAM verifier.
//!
//! **Why verifiers computed by tenantd, not read from the servers.** PgBouncer verifies the
//! client with the `auth_file` secret and then logs in to the server with the same secret
//! (SCRAM pass-through), which works only when it is the server's very verifier (same salt and
//! iterations, not merely the same password). Reading `pg_authid.rolpassword` needs a
//! superuser, and tenantd's admin role is not one. So tenantd derives each tenant's salt from
//! its id ([`crate::crypto::tenant_scram_verifier`]), stores that verifier on the server
//! whenever it sets a tenant password, and computes it again here from the sealed password:
//! the catalog and the keyring are enough, no server is asked. Roles created before salts were
//! derived are stored again once with the derived verifier (same password;
//! [`crate::lifecycle::Lifecycle::align_password`], event `password.aligned`). Clear
//! passwords never reach the files.
//!
//! Suspended, deleted, and not yet READY tenants have no entry: PgBouncer answers
//! `no such database` for them.

mod files;
mod watch;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

use crate::catalog::tenants::{TenantFilter, TenantRecord, TenantStatus};
use crate::catalog::{CatalogError, servers::ServerRecord};
use crate::core::Core;
use crate::limits::TenantLimits;
use crate::target::{PGBOUNCER_POOL_MODE, TenantTarget};

pub use files::Written;
pub use watch::watch;

/// What `tenantd pgbouncer config` writes and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory of `pgbouncer.ini` and `userlist.txt` (created if missing).
    pub out: PathBuf,
    /// `listen_addr` of PgBouncer (`*` for every address).
    pub listen_host: String,
    /// `listen_port` of PgBouncer.
    pub listen_port: u16,
    /// Only the tenants of this server.
    pub server: Option<String>,
    /// PgBouncer's pid file: SIGHUP after each change.
    pub pid_file: Option<PathBuf>,
    /// OS user the files are handed to (when tenantd runs as root and PgBouncer does not).
    pub owner: Option<String>,
}

impl Options {
    /// Parses `HOST:PORT` (`[v6]:PORT` too) into the listen fields.
    pub fn parse_listen(text: &str) -> Result<(String, u16), PgBouncerError> {
        let bad = || PgBouncerError::Usage(format!("--listen: expected HOST:PORT, got {text:?}"));
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() || port == 0 || !files::is_plain_value(host) {
            return Err(bad());
        }
        Ok((host.to_owned(), port))
    }
}

/// Why the configuration could not be written (never holds a secret).
#[derive(Debug, thiserror::Error)]
pub enum PgBouncerError {
    /// A bad option.
    #[error("{0}")]
    Usage(String),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// Writing the files failed.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// PgBouncer could not be told to reload.
    #[error("reloading PgBouncer: {0}")]
    Reload(String),
    /// Some tenants could not be routed (named, with the reason); the others were written.
    #[error("written without {}: {}", .0.len(), .0.join("; "))]
    Skipped(Vec<String>),
}

/// One `[databases]` entry and its `auth_file` line.
#[derive(Clone)]
pub(crate) struct Route {
    /// Entry name = the tenant's database name (what lent connection details name).
    pub database: String,
    pub host: String,
    pub port: u16,
    pub role: String,
    pub pool_size: u32,
    pub verifier: SecretString,
}

/// The routes of every READY tenant, and the tenants left out with the reason.
pub(crate) struct Routes {
    pub routes: Vec<Route>,
    pub skipped: Vec<String>,
    /// Tenants in the routes, by slug (for aligning their passwords).
    pub slugs: Vec<(Uuid, String)>,
}

/// Computed verifiers by tenant id, valid while the sealed password and its iteration count
/// are the same (thousands of rounds of HMAC per tenant are worth keeping between two writes
/// of the watch loop).
#[derive(Default)]
pub(crate) struct VerifierCache(HashMap<Uuid, (String, SecretString)>);

impl VerifierCache {
    fn get(&mut self, tenant: &TenantRecord, target: &TenantTarget) -> SecretString {
        let sealed = format!(
            "{}/{:?}",
            tenant.role_password_sealed.as_deref().unwrap_or_default(),
            tenant.scram_iterations
        );
        match self.0.get(&tenant.id) {
            Some((known, verifier)) if *known == sealed => verifier.clone(),
            _ => {
                let verifier = SecretString::from(target.scram_verifier());
                self.0.insert(tenant.id, (sealed, verifier.clone()));
                verifier
            }
        }
    }
}

/// Reads the READY tenants (of `server`, if given) and their servers from the catalog.
pub(crate) async fn routes(
    core: &Core,
    server: Option<&str>,
    cache: &mut VerifierCache,
) -> Result<Routes, PgBouncerError> {
    let servers: BTreeMap<String, ServerRecord> =
        core.catalog.servers().await?.into_iter().map(|s| (s.name.clone(), s)).collect();
    if let Some(name) = server
        && !servers.contains_key(name)
    {
        return Err(PgBouncerError::Usage(format!("no server {name:?}")));
    }
    let mut out = Routes { routes: Vec::new(), skipped: Vec::new(), slugs: Vec::new() };
    let mut filter = TenantFilter {
        status: Some(TenantStatus::Ready),
        server: server.map(str::to_owned),
        limit: 1000,
        ..TenantFilter::default()
    };
    loop {
        let page = core.catalog.tenants(&filter).await?;
        for tenant in &page {
            match route(core, tenant, &servers, cache) {
                Ok(route) => {
                    out.slugs.push((tenant.id, tenant.slug.clone()));
                    out.routes.push(route);
                }
                Err(reason) => out.skipped.push(format!("{}: {reason}", tenant.slug)),
            }
        }
        match page.last() {
            Some(last) if page.len() as i64 == filter.limit => filter.after = Some(last.slug.clone()),
            _ => break,
        }
    }
    out.routes.sort_by(|a, b| a.database.cmp(&b.database));
    Ok(out)
}

fn route(
    core: &Core,
    tenant: &TenantRecord,
    servers: &BTreeMap<String, ServerRecord>,
    cache: &mut VerifierCache,
) -> Result<Route, String> {
    let server =
        tenant.server.as_deref().and_then(|s| servers.get(s)).ok_or("its server is not in the catalog")?;
    let target = TenantTarget::new(tenant, server, &core.keyring).map_err(|e| e.to_string())?;
    if !files::is_plain_value(&server.host) {
        return Err(format!("server {:?} has a host PgBouncer cannot take unquoted", server.name));
    }
    let limits = TenantLimits::resolve(&core.settings.limits, &tenant.limits).map_err(|e| e.to_string())?;
    let lending = u32::try_from(core.settings.pools.per_tenant).unwrap_or(u32::MAX);
    Ok(Route {
        database: target.database.to_string(),
        host: server.host.clone(),
        port: server.port,
        role: target.role.to_string(),
        pool_size: limits.connections.saturating_sub(lending).max(1),
        verifier: cache.get(tenant, &target),
    })
}

/// Writes both files once (reloading PgBouncer when they changed and `pid_file` is set), then
/// aligns the passwords of the routed tenants that need it. Tenants that could not be routed
/// make it an error after the others are written.
pub async fn write_once(core: &Core, options: &Options) -> Result<Written, PgBouncerError> {
    let mut cache = VerifierCache::default();
    let routes = routes(core, options.server.as_deref(), &mut cache).await?;
    let written = files::write(options, &routes.routes)?;
    if written.changed
        && let Some(pid) = &options.pid_file
    {
        watch::reload(pid)?;
    }
    align(core, &routes.slugs).await;
    if routes.skipped.is_empty() { Ok(written) } else { Err(PgBouncerError::Skipped(routes.skipped)) }
}

/// Aligns the passwords of `tenants` (see the module comment); returns those done or found
/// aligned before. A tenant another process holds right now is left for the next time.
pub(crate) async fn align(core: &Core, tenants: &[(Uuid, String)]) -> Vec<Uuid> {
    let lifecycle = crate::lifecycle::Lifecycle::new(core, &core.instance);
    let mut done = Vec::new();
    for (id, slug) in tenants {
        match lifecycle.align_password(slug).await {
            Ok(changed) => {
                if changed {
                    tracing::info!(tenant = %slug, "tenant role password stored as tenantd's SCRAM verifier");
                }
                done.push(*id);
            }
            Err(error) => {
                tracing::warn!(tenant = %slug, %error, "cannot align the role password yet; PgBouncer may not log in as it")
            }
        }
    }
    done
}

/// The pool mode every route is written with (and lent connection details announce).
pub const POOL_MODE: &str = PGBOUNCER_POOL_MODE;

/// Never print a verifier by accident.
impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}:{}/{}", self.role, self.host, self.port, self.database)
    }
}

impl Route {
    fn userlist_line(&self) -> String {
        format!("\"{}\" \"{}\"\n", self.role, self.verifier.expose_secret())
    }
}
