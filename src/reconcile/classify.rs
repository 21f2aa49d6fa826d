//! From what the servers hold and what the catalog says to [`Finding`]s.
//!
//! The catalog is read *after* the servers, so an object made by a tenant created meanwhile
//! has its owner in the catalog already (a tenant row always exists before its objects).
//! Who may own a marked object is decided in one place, `owners`: a tenant of the catalog.
//! Warm spares, when they exist, are one more lookup there.

use std::collections::{BTreeSet, HashMap};

use chrono::Utc;
use uuid::Uuid;

use super::scan::{self, ServerScan};
use super::{Action, DriftKind, Finding};
use crate::catalog::CatalogError;
use crate::catalog::reconcile::KeptDatabase;
use crate::catalog::tenants::{TenantRecord, TenantStatus};
use crate::core::Core;
use crate::markers::Marked;
use crate::names::PgIdent;

/// How long after its `drop_after` a kept move source may still be there before it is drift
/// (the moves task drops it within a poll, and retries a failed drop every 10 minutes).
const KEPT_GRACE: chrono::Duration = chrono::Duration::minutes(30);

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
    for (id, slug, status) in core.catalog.tenant_slugs(ids).await? {
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
    tenants: HashMap<Uuid, TenantRecord>,
    others: HashMap<Uuid, Owner>,
    kept: Vec<KeptDatabase>,
    move_targets: HashMap<Uuid, String>,
    known_versions: BTreeSet<i32>,
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
        })
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

    fn kept(&self, tenant: Uuid, server: &str, database: &str) -> Option<&KeptDatabase> {
        self.kept.iter().find(|k| k.tenant_id == tenant && k.server == server && k.database == database)
    }

    fn keeps_on(&self, tenant: Uuid, server: &str) -> bool {
        self.kept.iter().any(|k| k.tenant_id == tenant && k.server == server)
    }

    fn moving_to(&self, tenant: Uuid, server: &str) -> bool {
        self.move_targets.get(&tenant).is_some_and(|t| t == server)
    }

    /// True when `version` is one of this build's migrations (or 0, none applied).
    pub(crate) fn knows_version(&self, version: i32) -> bool {
        version == 0 || self.known_versions.contains(&version)
    }
}

fn finding(
    kind: DriftKind,
    server: &str,
    object: &str,
    problem: String,
    repair: &str,
    action: Action,
) -> Finding {
    Finding {
        kind,
        tenant: None,
        server: server.to_owned(),
        object: object.to_owned(),
        problem,
        repair: repair.to_owned(),
        outcome: String::new(),
        tenant_id: None,
        action,
    }
}

fn of(mut f: Finding, id: Uuid, slug: &str) -> Finding {
    f.tenant = Some(slug.to_owned());
    f.tenant_id = Some(id);
    f
}

/// The findings of one server, and how many tenants were compared. A tenant whose
/// database cannot be read adds to `errors`.
pub(crate) async fn server(
    core: &Core,
    world: &World,
    scan: &ServerScan,
    errors: &mut Vec<String>,
) -> (Vec<Finding>, usize) {
    let name = scan.server.name.as_str();
    let mut findings = Vec::new();
    let mut checked = 0;
    for t in world.tenants.values().filter(|t| t.server.as_deref() == Some(name)) {
        if !matches!(t.status, TenantStatus::Ready | TenantStatus::Suspended) {
            continue;
        }
        let (Some(db), Some(role)) = (t.database_name.as_deref(), t.role_name.as_deref()) else { continue };
        // Placed on this server after the server was read: next run.
        if !scan.asked_databases.contains(db) || !scan.asked_roles.contains(role) {
            continue;
        }
        checked += 1;
        let before = findings.len();
        tenant(core, world, scan, t, db, role, &mut findings, errors).await;
        for f in &mut findings[before..] {
            f.tenant = Some(t.slug.clone());
            f.tenant_id = Some(t.id);
        }
    }
    for d in &scan.databases {
        if let Some(id) = d.owner {
            findings.extend(marked_database(world, name, d, id));
        }
    }
    for r in &scan.roles {
        if let Some(id) = r.owner {
            findings.extend(marked_role(world, name, r, id));
        }
    }
    (findings, checked)
}

/// The checks of a READY or SUSPENDED tenant on its own server.
#[allow(clippy::too_many_arguments)]
async fn tenant(
    core: &Core,
    world: &World,
    scan: &ServerScan,
    t: &TenantRecord,
    db: &str,
    role: &str,
    findings: &mut Vec<Finding>,
    errors: &mut Vec<String>,
) {
    let server = scan.server.name.as_str();
    let database = scan.database(db);
    match database {
        None => findings.push(finding(
            DriftKind::DatabaseMissing,
            server,
            db,
            format!("tenant is {} but its database {db} is not on server {server}", t.status),
            "the tenant goes to ERROR with this reason (never created again empty)",
            Action::MarkError,
        )),
        Some(d) if d.owner != Some(t.id) => findings.push(unmarked(server, db, "database", d)),
        Some(d) => {
            if let Some(f) = lockdown(server, d, role) {
                findings.push(f);
            }
        }
    }
    match scan.role(role) {
        None => findings.push(finding(
            DriftKind::RoleMissing,
            server,
            role,
            format!("tenant is {} but its role {role} is not on server {server}", t.status),
            "the tenant goes to ERROR with this reason",
            Action::MarkError,
        )),
        Some(r) if r.owner != Some(t.id) => findings.push(unmarked(server, role, "role", r)),
        Some(r) => {
            let should = t.status == TenantStatus::Ready;
            if r.enabled != should {
                let (has, repair) = if should {
                    ("NOLOGIN", "LOGIN again (the tenant is READY)")
                } else {
                    ("LOGIN", "NOLOGIN and its sessions ended (the tenant is SUSPENDED)")
                };
                findings.push(finding(
                    DriftKind::LoginMismatch,
                    server,
                    role,
                    format!("role {role} has {has} but the tenant is {}", t.status),
                    repair,
                    Action::SyncLogin,
                ));
            }
        }
    }
    // The history is read only from a database and role that are ours.
    let ours = database.is_some_and(|d| d.owner == Some(t.id))
        && scan.role(role).is_some_and(|r| r.owner == Some(t.id));
    if !ours {
        return;
    }
    let (Ok(db_ident), Ok(role_ident)) = (PgIdent::from_catalog(db), PgIdent::from_catalog(role)) else {
        errors.push(format!("tenant {}: names in the catalog are not ones tenantd uses", t.slug));
        return;
    };
    match scan::history_version(core, &scan.server, &scan.admin, &db_ident, &role_ident).await {
        Ok(version) if version != t.schema_version => {
            let (repair, action) = if world.knows_version(version) {
                (format!("schema_version set to {version} in the catalog"), Action::SchemaVersion(version))
            } else {
                (
                    format!(
                        "none: version {version} is not one of this build's migrations; check the database"
                    ),
                    Action::None,
                )
            };
            findings.push(finding(
                DriftKind::SchemaVersionMismatch,
                server,
                db,
                format!(
                    "catalog says schema_version {} but the database's history says {version}",
                    t.schema_version
                ),
                &repair,
                action,
            ));
        }
        Ok(_) => {}
        Err(e) => {
            metrics::counter!("tenantd_reconcile_errors_total").increment(1);
            errors.push(format!("tenant {}: cannot read the migration history of {db}: {e}", t.slug));
        }
    }
}

fn unmarked(server: &str, name: &str, what: &str, m: &Marked) -> Finding {
    let marker = match m.owner {
        Some(id) => format!("the marker of another tenant ({id})"),
        None => "no tenantd marker".to_owned(),
    };
    finding(
        DriftKind::Unmarked,
        server,
        name,
        format!("the tenant's {what} {name} exists with {marker}"),
        "none: tenantd never touches what does not carry the tenant's marker",
        Action::None,
    )
}

/// Provisioning's lockdown: the tenant role may CONNECT and create TEMPORARY tables, nobody
/// else has any privilege (the owner, tenantd's admin, aside), and connections are allowed.
fn lockdown(server: &str, d: &Marked, role: &str) -> Option<Finding> {
    let mut problems = Vec::new();
    let mut others = BTreeSet::new();
    for (who, what) in &d.grants {
        if who == role && (what == "CONNECT" || what == "TEMPORARY") {
            continue;
        }
        problems.push(format!("{who} has {what}"));
        if who != "PUBLIC" && who != role {
            others.insert(who.clone());
        }
    }
    for needed in ["CONNECT", "TEMPORARY"] {
        if !d.grants.iter().any(|(who, what)| who == role && what == needed) {
            problems.push(format!("the tenant role lacks {needed}"));
        }
    }
    if !d.enabled {
        problems.push("connections are not allowed".to_owned());
    }
    if problems.is_empty() {
        return None;
    }
    Some(finding(
        DriftKind::LockdownChanged,
        server,
        &d.name,
        format!("grants of database {} changed: {}", d.name, problems.join(", ")),
        "provisioning's lockdown again (privileges of PUBLIC and other roles revoked)",
        Action::Relock(others.into_iter().collect()),
    ))
}

const ORPHAN_DB_REPAIR: &str = "none with --repair (it may hold data); dropped with --drop-orphans --yes";

/// A database with a marker, seen from its owner: nothing when it is the tenant's own (checked
/// above) or in use by work in progress; otherwise orphan, stale or misplaced.
fn marked_database(world: &World, server: &str, d: &Marked, id: Uuid) -> Option<Finding> {
    let staging = PgIdent::staging(id);
    let is_staging = d.name == staging.as_str();
    let kept = world.kept(id, server, &d.name);
    if let Some(k) = kept {
        let due = k.drop_after.is_some_and(|at| at + KEPT_GRACE < Utc::now());
        if !due {
            return None;
        }
        let f = finding(
            DriftKind::StaleMovedDatabase,
            server,
            &d.name,
            format!(
                "source database kept by move {} was due for its drop at {}{}",
                k.operation,
                k.drop_after.map(|a| a.to_rfc3339()).unwrap_or_default(),
                k.drop_error.as_deref().map(|e| format!("; last drop failed: {e}")).unwrap_or_default()
            ),
            "none here: the daemons' moves task drops it (and retries every 10 minutes)",
            Action::None,
        );
        return Some(with_owner(world, f, id));
    }
    match world.owner(id) {
        Owner::Live(t) => {
            let home = t.server.as_deref() == Some(server);
            if home && t.database_name.as_deref() == Some(d.name.as_str()) {
                return None;
            }
            // Work in progress owns what it made: provisioning, deletion, a move's target.
            if !matches!(t.status, TenantStatus::Ready | TenantStatus::Suspended | TenantStatus::Error)
                || world.moving_to(id, server)
            {
                return None;
            }
            let f = if is_staging {
                if t.status == TenantStatus::Error {
                    return None; // a retry adopts it
                }
                finding(
                    DriftKind::StaleStaging,
                    server,
                    &d.name,
                    format!("staging database {} of a tenant that is {}", d.name, t.status),
                    "dropped (a staging database of ours; the tenant's data is in its own database)",
                    Action::DropStaging,
                )
            } else if t.database_name.as_deref() == Some(d.name.as_str()) {
                finding(
                    DriftKind::MisplacedDatabase,
                    server,
                    &d.name,
                    format!(
                        "the tenant's database is on server {server} but the catalog says {}",
                        t.server.as_deref().unwrap_or("(none)")
                    ),
                    "none: it may hold the tenant's data; compare both and fix the catalog or drop one by hand",
                    Action::None,
                )
            } else {
                finding(
                    DriftKind::OrphanDatabase,
                    server,
                    &d.name,
                    format!("database {} carries the tenant's marker but is not its database", d.name),
                    ORPHAN_DB_REPAIR,
                    Action::DropOrphanDatabase,
                )
            };
            Some(of(f, t.id, &t.slug))
        }
        Owner::Pending(_) => None,
        owner @ (Owner::Deleted(_) | Owner::Unknown) => {
            let who = match &owner {
                Owner::Deleted(slug) => format!("deleted tenant {slug}"),
                _ => format!("{id}, which no tenant of this catalog has"),
            };
            let f = if is_staging {
                finding(
                    DriftKind::StaleStaging,
                    server,
                    &d.name,
                    format!("staging database {} of {who}", d.name),
                    "dropped (a staging database of ours)",
                    Action::DropStaging,
                )
            } else {
                finding(
                    DriftKind::OrphanDatabase,
                    server,
                    &d.name,
                    format!("database {} carries the marker of {who}", d.name),
                    ORPHAN_DB_REPAIR,
                    Action::DropOrphanDatabase,
                )
            };
            Some(with_owner(world, f, id))
        }
    }
}

/// A role with a marker: orphan unless its tenant lives on this server, a move or a kept
/// database needs it there, or work in progress owns it.
fn marked_role(world: &World, server: &str, r: &Marked, id: Uuid) -> Option<Finding> {
    if world.keeps_on(id, server) || world.moving_to(id, server) {
        return None;
    }
    let problem = match world.owner(id) {
        Owner::Live(t) => {
            if t.server.as_deref() == Some(server) && t.role_name.as_deref() == Some(r.name.as_str()) {
                return None;
            }
            if !matches!(t.status, TenantStatus::Ready | TenantStatus::Suspended | TenantStatus::Error) {
                return None;
            }
            format!(
                "role {} carries the marker of tenant {}, which lives on {}",
                r.name,
                t.slug,
                t.server.as_deref().unwrap_or("(none)")
            )
        }
        Owner::Deleted(slug) => format!("role {} carries the marker of deleted tenant {slug}", r.name),
        Owner::Unknown => {
            format!("role {} carries the marker of {id}, which no tenant of this catalog has", r.name)
        }
        Owner::Pending(_) => return None,
    };
    let f = finding(
        DriftKind::OrphanRole,
        server,
        &r.name,
        problem,
        "none with --repair; dropped with --drop-orphans --yes (unless it still owns objects)",
        Action::DropOrphanRole,
    );
    Some(with_owner(world, f, id))
}

/// Names the tenant of a finding when the catalog has a row for it (live or deleted).
fn with_owner(world: &World, f: Finding, id: Uuid) -> Finding {
    match world.owner(id) {
        Owner::Live(t) => of(f, id, &t.slug),
        Owner::Deleted(slug) => of(f, id, &slug),
        Owner::Unknown | Owner::Pending(_) => f,
    }
}
