//! [`Core`]: what every tenantd process works with, the daemon and each CLI command alike.
//!
//! Settings, the catalog (schema applied), the master keys, pooled admin connections to the
//! servers, the tenant migrations of this build and this process's identity. Domain
//! operations (provisioning, lifecycle, upgrades, backups, the CLI driver) take `&Core` plus
//! their own parameters; the daemon wraps it in its `App` with its runtime parts.

use crate::admin::AdminPools;
use crate::catalog::{Catalog, CatalogError};
use crate::config::{ConfigError, Settings};
use crate::crypto::{CryptoError, Keyring};
use crate::steps::FaultHook;
use crate::tenant_migrations::MigrationSet;

/// Why a [`Core`] could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Bad or missing configuration (exit code 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The catalog could not be reached or migrated.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// The shared state of one tenantd process.
pub struct Core {
    /// Effective settings.
    pub settings: Settings,
    /// The catalog.
    pub catalog: Catalog,
    /// Master keys.
    pub keyring: Keyring,
    /// Pooled admin connections to the servers.
    pub admin_pools: AdminPools,
    /// The tenant migrations this process applies (the embedded ones in production).
    pub migrations: MigrationSet,
    /// This process's identity as a lease owner and event actor (`host:pid:random` for a
    /// daemon, `cli:user@host:pid` for a command).
    pub instance: String,
    /// Fault injection into provisioning steps (tests only; `None` in production).
    pub(crate) faults: Option<FaultHook>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("instance", &self.instance).finish_non_exhaustive()
    }
}

impl Core {
    /// Opens the keyring and the catalog named by `settings` (applying the catalog schema),
    /// acting as `instance`. `settings.catalog_url` must be set.
    pub async fn open(settings: Settings, instance: String) -> Result<Core, CoreError> {
        let core = Self::open_unchecked(settings, instance).await?;
        core.check_keys().await?;
        Ok(core)
    }

    /// [`Core::open`] without checking that every key the catalog uses is configured (for
    /// `tenantd keys status`, which reports exactly that).
    pub async fn open_unchecked(settings: Settings, instance: String) -> Result<Core, CoreError> {
        settings.validate()?;
        let keyring = keyring(&settings)?;
        let catalog = open_catalog(&settings).await?;
        // Two per worker (a tenant's role and database are made at once), one for the rest.
        let admin_pools = AdminPools::new(2 * settings.workers.concurrency + 1);
        Ok(Core {
            settings,
            catalog,
            keyring,
            admin_pools,
            migrations: MigrationSet::embedded(),
            instance,
            faults: None,
        })
    }

    /// Refuses a keyring that cannot open every sealed value in the catalog: a process without
    /// a key still in use would fail tenant by tenant later; this names the key and the count.
    pub async fn check_keys(&self) -> Result<(), CoreError> {
        for usage in self.catalog.key_usage().await? {
            if !self.keyring.has_key(&usage.key_id) {
                return Err(ConfigError::new(
                    "TENANTD_OLD_MASTER_KEYS",
                    format!(
                        "the catalog holds {} server password(s) and {} tenant password(s) (and {} webhook \
                         secret(s)) sealed with key {}, \
                         which no configured key opens: add that key to TENANTD_OLD_MASTER_KEYS (then run \
                         `tenantd keys rotate`) or run with it as TENANTD_MASTER_KEY",
                        usage.servers, usage.tenants, usage.webhooks, usage.key_id
                    ),
                )
                .into());
            }
        }
        Ok(())
    }

    /// Applies these tenant migrations instead of the embedded ones ("a newer build").
    #[must_use]
    pub fn with_migrations(mut self, migrations: MigrationSet) -> Self {
        self.migrations = migrations;
        self
    }

    /// Injects faults into provisioning steps. Tests only.
    #[doc(hidden)]
    #[must_use]
    pub fn with_fault_injection(mut self, faults: FaultHook) -> Self {
        self.faults = Some(faults);
        self
    }
}

/// Opens the keyring from settings; the master key is required.
fn keyring(settings: &Settings) -> Result<Keyring, ConfigError> {
    let key = settings.master_key.as_ref().ok_or_else(|| {
        ConfigError::new(
            "TENANTD_MASTER_KEY",
            "required when TENANTD_CATALOG_URL is set (base64 of 32 random bytes; \
             `tenantd keygen` prints one)",
        )
    })?;
    Keyring::new(key, &settings.old_master_keys).map_err(|e: CryptoError| {
        let setting = match e {
            CryptoError::BadKey(name) => name,
            _ => "TENANTD_MASTER_KEY",
        };
        ConfigError::new(setting, e.to_string())
    })
}

/// Opens the catalog and applies its schema.
async fn open_catalog(settings: &Settings) -> Result<Catalog, CoreError> {
    let url = settings.catalog_url.as_ref().ok_or_else(|| {
        ConfigError::new("TENANTD_CATALOG_URL", "not set and no embedded cluster is running")
    })?;
    let catalog = Catalog::new(url, settings.workers.concurrency + 6)
        .map_err(|e| ConfigError::new("TENANTD_CATALOG_URL", e.to_string()))?;
    catalog.migrate().await?;
    Ok(catalog)
}

/// A unique identity for a daemon process: host, pid and a random suffix.
pub fn daemon_instance() -> String {
    let host =
        nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "host".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}:{}:{}", std::process::id(), &suffix[..8])
}

/// The identity of a CLI process: `cli:<user>@<host>:<pid>`.
pub fn cli_instance() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default();
    format!("cli:{user}@{host}:{}", std::process::id())
}
