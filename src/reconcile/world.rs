//! What the catalog says, read after the servers: the tenants, who owns each marked object
//! ([`Owner`], decided in one place: `owners`), the databases moves keep, running moves.
//!
//! The catalog is read *after* the servers, so an object made by a tenant created meanwhile
//! has its owner in the catalog already (a tenant row always exists before its objects).
//! Warm spares, when they exist, are one more lookup in `owners`.

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

use super::scan::ServerScan;
use crate::catalog::CatalogError;
use crate::catalog::reconcile::KeptDatabase;
use crate::catalog::tenants::{TenantRecord, TenantStatus};
use crate::core::Core;

/// How long after its `drop_after` a kept move source may still be there before it is drift
/// (the moves task drops it within a poll, and retries a failed drop every 10 minutes).
pub(crate) const KEPT_GRACE: chrono::Duration = chrono::Duration::minutes(30);

/// Who owns a marked object, by the id in its marker.
#[derive(Debug, Clone)]
pub(crate) enum Owner {
    /// A tenant of the catalog that is not DELETED.
    Live(Box<TenantRecord>),
    /// A DELETED tenant (its slug): its objects are orphans.
    Deleted(String),
    /// Nothing in the catalog has this id.
    Unknown,
    /// Owned, but nothing to compare: a tenant that appeared while this run read the catalog
    /// (its work is in progress). Warm spares belong here too.
    Pending(String),
}

/// Who the catalog says owns each of `ids`, now: the one place that decides whether a marked
/// object has an owner. A new kind of owner (warm spares, `tenantd.spares`) is one more
/// lookup here, answering [`Owner::Pending`] for its ids.
async fn owners(core: &Core, ids: &[Uuid]) -> Result<HashMap<Uuid, Owner>, CatalogError> {
    let mut found = HashMap::new();
    for (id, slug, status) in core.catalog.tenants_by_id(ids).await? {
        let owner = if status == TenantStatus::Deleted.as_str() {
            Owner::Deleted(slug)
        } else {
            Owner::Live(Box::new(core.catalog.tenant_by_id(id).await?))
        };
        found.insert(id, owner);
    }
    Ok(found)
}

/// What the catalog says, read after the servers.
pub(crate) struct World {
    pub(crate) tenants: HashMap<Uuid, TenantRecord>,
    others: HashMap<Uuid, Owner>,
    kept: Vec<KeptDatabase>,
    move_targets: HashMap<Uuid, String>,
    known_versions: BTreeSet<i32>,
    /// (server, id) of every warm spare the catalog has a row for, in any state.
    spares: BTreeSet<(String, Uuid)>,
}

impl World {
    /// Reads the catalog for the owners of everything `scans` found.
    pub(crate) async fn load(core: &Core, scans: &[ServerScan]) -> Result<World, CatalogError> {
        let tenants: HashMap<Uuid, TenantRecord> =
            core.catalog.all_tenants(None, None).await?.into_iter().map(|t| (t.id, t)).collect();
        let marked: Vec<Uuid> = scans
            .iter()
            .flat_map(|s| s.databases.iter().chain(&s.roles))
            .filter_map(|m| m.owner)
            .filter(|id| !tenants.contains_key(id))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let others = owners(core, &marked)
            .await?
            .into_iter()
            .map(|(id, owner)| match owner {
                Owner::Live(_) => (id, Owner::Pending("a tenant created during this run".into())),
                other => (id, other),
            })
            .collect();
        Ok(World {
            tenants,
            others,
            kept: core.catalog.kept_databases().await?,
            move_targets: core.catalog.move_targets().await?.into_iter().collect(),
            known_versions: core.migrations.known().iter().map(|m| m.version).collect(),
            spares: {
                let mut spares = BTreeSet::new();
                for scan in scans {
                    for s in core.catalog.spares_of(&scan.server.name).await? {
                        spares.insert((s.server, s.id));
                    }
                }
                spares
            },
        })
    }

    /// Whether the catalog has a row for warm spare `id` on `server`.
    pub(crate) fn has_spare(&self, server: &str, id: Uuid) -> bool {
        self.spares.contains(&(server.to_owned(), id))
    }

    /// The owner of an object whose marker names `id`, as the catalog says now.
    pub(crate) fn owner(&self, id: Uuid) -> Owner {
        match self.tenants.get(&id) {
            Some(t) => Owner::Live(Box::new(t.clone())),
            None => self.others.get(&id).cloned().unwrap_or(Owner::Unknown),
        }
    }

    /// The owner of `id` as the catalog says at this moment (a repair checks again before it
    /// drops anything).
    pub(crate) async fn fresh_owner(core: &Core, id: Uuid) -> Result<Owner, CatalogError> {
        Ok(owners(core, &[id]).await?.remove(&id).unwrap_or(Owner::Unknown))
    }

    pub(crate) fn kept(&self, tenant: Uuid, server: &str, database: &str) -> Option<&KeptDatabase> {
        self.kept.iter().find(|k| k.tenant_id == tenant && k.server == server && k.database == database)
    }

    pub(crate) fn keeps_on(&self, tenant: Uuid, server: &str) -> bool {
        self.kept.iter().any(|k| k.tenant_id == tenant && k.server == server)
    }

    pub(crate) fn moving_to(&self, tenant: Uuid, server: &str) -> bool {
        self.move_targets.get(&tenant).is_some_and(|t| t == server)
    }

    /// True when `version` is one of this build's migrations (or 0, none applied).
    pub(crate) fn knows_version(&self, version: i32) -> bool {
        version == 0 || self.known_versions.contains(&version)
    }
}
