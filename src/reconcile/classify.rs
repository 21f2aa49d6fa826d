//! From what the servers hold and what the catalog says to [`Finding`]s: the checks of each
//! READY or SUSPENDED tenant on its server here, marked objects in `marked`.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::marked::{marked_database, marked_role};
use super::scan::{self, ServerScan};
use super::world::World;
use super::{Action, DriftKind, Finding};
use crate::catalog::tenants::{TenantRecord, TenantStatus};
use crate::core::Core;
use crate::markers::Marked;
use crate::names::PgIdent;

pub(crate) fn finding(
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

pub(crate) fn of(mut f: Finding, id: Uuid, slug: &str) -> Finding {
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
        // Another process at work on it may be mid-change: said, and its repair waits for it.
        let held = match (&t.lease_owner, t.lease_until) {
            (Some(holder), Some(until)) if until > chrono::Utc::now() => Some(holder.as_str()),
            _ => None,
        };
        for f in &mut findings[before..] {
            f.tenant = Some(t.slug.clone());
            f.tenant_id = Some(t.id);
            if let Some(holder) = held {
                f.problem.push_str(&format!(" (the tenant is held by {holder}: possibly work in progress)"));
            }
        }
    }
    for d in &scan.databases {
        if let Some(id) = d.owner {
            findings.extend(marked_database(world, name, d, id));
        }
        if let Some(spare) = d.spare {
            findings.extend(leftover_spare(world, name, d, spare, DriftKind::OrphanDatabase));
        }
    }
    for r in &scan.roles {
        if let Some(id) = r.owner {
            findings.extend(marked_role(world, name, r, id));
        }
        if let Some(spare) = r.spare {
            findings.extend(leftover_spare(world, name, r, spare, DriftKind::OrphanRole));
        }
    }
    (findings, checked)
}

/// A warm spare's database or role (`tenantd:spare:<id>`) the catalog has no spare row for:
/// a leftover (the row is written before any DDL and deleted only after the take or the
/// drop). It holds no tenant's data, but is left to the operator: a take that finished
/// between the scan and the catalog read would look the same for a moment.
fn leftover_spare(world: &World, server: &str, m: &Marked, spare: Uuid, kind: DriftKind) -> Option<Finding> {
    if world.has_spare(server, spare) {
        return None;
    }
    Some(finding(
        kind,
        server,
        &m.name,
        format!("{} carries the marker of warm spare {spare}, which tenantd.spares does not list", m.name),
        "none: a spare's leftover (no tenant's data); drop it by hand if it is still there on the next run",
        Action::None,
    ))
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
