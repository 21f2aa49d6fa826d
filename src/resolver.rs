//! The resolver: the one way every caller finds "the tenant X" (mission lesson 6: routing
//! resolved once, by one component, and used by everybody).
//!
//! Lookups by slug and by token hash are cached for [`TTL`] so the data plane does not read
//! the catalog on every request. Entries are dropped as soon as the catalog notifies a
//! change of that tenant (status, token, schema version, placement), so a suspended tenant
//! or a rotated token takes effect at once; the TTL bounds staleness if a notification is
//! lost. PostgreSQL itself enforces suspension and deletion (roles and grants), so a stale
//! entry can never open a door the database has closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::catalog::servers::ServerRecord;
use crate::catalog::tenants::TenantRecord;
use crate::catalog::{Catalog, CatalogError};

/// How long a cached lookup is trusted without a notification.
pub const TTL: Duration = Duration::from_secs(2);

type Entry<T> = (Instant, T);

/// Cached tenant lookups.
#[derive(Default)]
pub struct Resolver {
    by_slug: Mutex<HashMap<String, Entry<Arc<TenantRecord>>>>,
    by_token: Mutex<HashMap<String, Entry<Option<String>>>>,
    servers: Mutex<HashMap<String, Entry<Arc<ServerRecord>>>>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

/// Most entries one cache keeps: lookups of random tokens cannot grow it without bound.
const MAX_ENTRIES: usize = 10_000;

/// Remembers a lookup; a full cache first drops what has expired, then everything.
fn remember<T>(map: &Mutex<HashMap<String, Entry<T>>>, key: &str, value: T) {
    let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, (at, _)| at.elapsed() < TTL);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
    }
    map.insert(key.to_owned(), (Instant::now(), value));
}

fn fresh<T: Clone>(map: &Mutex<HashMap<String, Entry<T>>>, key: &str) -> Option<T> {
    let map = map.lock().unwrap_or_else(PoisonError::into_inner);
    map.get(key).filter(|(at, _)| at.elapsed() < TTL).map(|(_, v)| v.clone())
}

impl Resolver {
    /// The tenant with this slug (`NotFound` when there is none).
    pub async fn tenant(&self, catalog: &Catalog, slug: &str) -> Result<Arc<TenantRecord>, CatalogError> {
        if let Some(t) = fresh(&self.by_slug, slug) {
            return Ok(t);
        }
        let tenant = Arc::new(catalog.tenant(slug).await?);
        remember(&self.by_slug, slug, tenant.clone());
        Ok(tenant)
    }

    /// The tenant whose token has this hash, if any (misses are cached too).
    pub async fn by_token_hash(
        &self,
        catalog: &Catalog,
        hash: &str,
    ) -> Result<Option<Arc<TenantRecord>>, CatalogError> {
        let slug = match fresh(&self.by_token, hash) {
            Some(slug) => slug,
            None => {
                let slug = catalog.tenant_slug_by_token_hash(hash).await?;
                remember(&self.by_token, hash, slug.clone());
                slug
            }
        };
        match slug {
            Some(slug) => match self.tenant(catalog, &slug).await {
                Ok(t) if t.token_hash.as_deref() == Some(hash) => Ok(Some(t)),
                Ok(_) | Err(CatalogError::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            },
            None => Ok(None),
        }
    }

    /// The server with this name.
    pub async fn server(&self, catalog: &Catalog, name: &str) -> Result<Arc<ServerRecord>, CatalogError> {
        if let Some(s) = fresh(&self.servers, name) {
            return Ok(s);
        }
        let server = Arc::new(catalog.server(name).await?);
        remember(&self.servers, name, server.clone());
        Ok(server)
    }

    /// Forgets a server (a catalog notification named it).
    pub fn invalidate_server(&self, name: &str) {
        self.servers.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
    }

    /// Forgets what is known of one tenant (a catalog notification named it).
    pub fn invalidate(&self, slug: &str) {
        self.by_slug.lock().unwrap_or_else(PoisonError::into_inner).remove(slug);
        self.by_token
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, (_, s)| s.as_deref() != Some(slug));
    }

    /// Forgets everything (the notification connection was lost).
    pub fn invalidate_all(&self) {
        self.by_slug.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.by_token.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.servers.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}
