//! Marked objects seen from their owner: nothing when a tenant's own or in use by work in
//! progress; otherwise an orphan, a stale staging or kept database, or a misplaced one.

use chrono::Utc;
use uuid::Uuid;

use super::classify::{finding, of};
use super::world::{KEPT_GRACE, Owner, World};
use super::{Action, DriftKind, Finding};
use crate::catalog::tenants::TenantStatus;
use crate::markers::Marked;
use crate::names::PgIdent;

const ORPHAN_DB_REPAIR: &str = "none with --repair (it may hold data); dropped with --drop-orphans --yes";

/// A database with a marker, seen from its owner: nothing when it is the tenant's own (checked
/// above) or in use by work in progress; otherwise orphan, stale or misplaced.
pub(crate) fn marked_database(world: &World, server: &str, d: &Marked, id: Uuid) -> Option<Finding> {
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
pub(crate) fn marked_role(world: &World, server: &str, r: &Marked, id: Uuid) -> Option<Finding> {
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
