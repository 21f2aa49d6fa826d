//! Upgrading tenant databases to the migrations of this build (`tenantd migrate`,
//! `POST /v1/migrations`, `upgrade.auto`).
//!
//! A run first **plans** from the catalog (which tenants are behind, which migrations each
//! needs) and records itself in `tenantd.migration_runs`. Then, `concurrency` tenants at a
//! time, each tenant is:
//! 1. claimed with the same lease as provisioning (a tenant another process holds is
//!    skipped, so two runs at once never apply anything twice);
//! 2. checked against its database's own history: a tenant *ahead* of this build (a newer
//!    build ran) is reported and never downgraded;
//! 3. migrated as the tenant role, under the tenant's advisory lock, in one transaction: a
//!    failure leaves it intact at its old version, READY, with `last_error` and an event;
//! 4. recorded: `schema_version`, an event, its result row.
//!
//! `canary` upgrades that many tenants first and stops if any fails; `max_failures` stops
//! starting new tenants after that many failures. Re-running continues where a run stopped:
//! tenants already current have nothing pending.
//!
//! This module holds what a run is (selection, options, plan, outcomes); [`run`] executes a
//! run, and `tenant` upgrades one tenant under its lease.

use serde::Serialize;

use uuid::Uuid;

use crate::catalog::upgrades::ResultKind;
use crate::catalog::{Catalog, CatalogError};
/// Largest concurrency accepted (each in-flight tenant holds a connection).
pub use crate::config::MAX_UPGRADE_CONCURRENCY as MAX_CONCURRENCY;
use crate::tenant_migrations::{Known, MigrationSet};

/// Which tenants a run covers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Selection {
    /// These slugs…
    pub slugs: Vec<String>,
    /// …or every READY tenant.
    pub all: bool,
    /// Only tenants on this server.
    pub server: Option<String>,
}

/// How a run proceeds.
#[derive(Debug, Clone, Serialize)]
pub struct Options {
    /// Tenants upgraded at once.
    pub concurrency: usize,
    /// Upgrade this many first; stop if any fails.
    pub canary: usize,
    /// Stop starting new tenants after this many failures.
    pub max_failures: Option<usize>,
    /// Plan only.
    pub dry_run: bool,
}

/// Options out of range; the message names the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// `concurrency` outside 1..=MAX_CONCURRENCY.
    #[error("concurrency must be between 1 and {MAX_CONCURRENCY} (got {0})")]
    Concurrency(usize),
    /// `max_failures` of 0.
    #[error("max_failures must be at least 1")]
    MaxFailures,
}

impl Options {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(OptionsError::Concurrency(self.concurrency));
        }
        if self.max_failures == Some(0) {
            return Err(OptionsError::MaxFailures);
        }
        Ok(())
    }
}

/// Why one tenant's upgrade failed (it stays READY at its old version).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The tenant's catalog row cannot lead to its database.
    #[error(transparent)]
    Target(#[from] crate::target::TargetError),
    /// Connecting as the tenant role failed.
    #[error(transparent)]
    Connect(#[from] crate::pg::ConnectError),
    /// Reading the history or applying a migration failed (rolled back).
    #[error(transparent)]
    Migrate(#[from] crate::tenant_migrations::MigrationError),
    /// The lease was lost midway (the transaction is abandoned, nothing committed).
    #[error("stopped: {0}")]
    Lease(crate::leases::LeaseLost),
}

/// One tenant in a plan.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Planned {
    /// Slug.
    pub slug: String,
    /// Version per the catalog.
    pub from_version: i32,
    /// Migrations it needs.
    pub pending: Vec<Known>,
    /// Its database is newer than this build.
    pub ahead: bool,
}

/// What a run will do.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Plan {
    /// Version of this build's newest migration.
    pub target_version: i32,
    /// Tenants behind (to upgrade), ahead (to report) and current.
    pub tenants: Vec<Planned>,
    /// Requested slugs that do not exist, or are not READY.
    pub not_found: Vec<String>,
}

impl Plan {
    /// Tenants that need work.
    pub fn behind(&self) -> impl Iterator<Item = &Planned> {
        self.tenants.iter().filter(|t| !t.pending.is_empty() && !t.ahead)
    }
}

/// Builds the plan from the catalog's `schema_version`s (equal to what each database holds;
/// each database's own history is checked again under the lock before anything is applied).
pub async fn plan(
    catalog: &Catalog,
    migrations: &MigrationSet,
    selection: &Selection,
) -> Result<Plan, CatalogError> {
    let target = migrations.latest_version();
    let named = (!selection.all).then_some(selection.slugs.as_slice());
    let found = catalog.upgrade_candidates(named, selection.server.as_deref()).await?;
    let planned = |(slug, version): (String, i32)| Planned {
        pending: migrations.pending_after(version),
        ahead: version > target,
        from_version: version,
        slug,
    };
    let Some(named) = named else {
        let tenants = found.into_iter().map(planned).collect();
        return Ok(Plan { target_version: target, tenants, not_found: Vec::new() });
    };
    // In the order asked, each once.
    let mut found: std::collections::HashMap<String, i32> = found.into_iter().collect();
    let mut seen = std::collections::HashSet::new();
    let mut tenants = Vec::new();
    let mut not_found = Vec::new();
    for slug in named.iter().filter(|s| seen.insert(s.as_str())) {
        match found.remove(slug) {
            Some(version) => tenants.push(planned((slug.clone(), version))),
            None => not_found.push(slug.clone()),
        }
    }
    Ok(Plan { target_version: target, tenants, not_found })
}

/// The outcome of one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Migrations applied.
    Upgraded {
        /// Before.
        from: i32,
        /// After.
        to: i32,
        /// Migrations applied now.
        applied: Vec<Known>,
    },
    /// Nothing to do (perhaps another run did it meanwhile).
    Current {
        /// Version.
        version: i32,
    },
    /// Its database is newer than this build: left alone.
    Ahead {
        /// Its version.
        version: i32,
    },
    /// Failed: left at its old version.
    Failed {
        /// Version kept.
        version: i32,
        /// PostgreSQL's error.
        error: String,
    },
    /// Not attempted: held by another process, or not READY any more.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Not attempted because the run stopped (canary failed, max failures).
    NotStarted,
}

impl Outcome {
    /// The version after and the detail, as stored in `migration_results`.
    pub(crate) fn result_fields(&self) -> (Option<i32>, Option<String>) {
        match self {
            Outcome::Upgraded { to, .. } => (Some(*to), None),
            Outcome::Current { version } => (Some(*version), None),
            Outcome::Ahead { version } => (Some(*version), Some("newer than this build".to_owned())),
            Outcome::Failed { error, .. } => (None, Some(error.clone())),
            Outcome::Skipped { reason } => (None, Some(reason.clone())),
            Outcome::NotStarted => (None, None),
        }
    }

    /// The outcome's kind as stored in `migration_results`.
    pub fn kind(&self) -> ResultKind {
        match self {
            Outcome::Upgraded { .. } => ResultKind::Upgraded,
            Outcome::Current { .. } => ResultKind::Current,
            Outcome::Ahead { .. } => ResultKind::Ahead,
            Outcome::Failed { .. } => ResultKind::Failed,
            Outcome::Skipped { .. } => ResultKind::Skipped,
            Outcome::NotStarted => ResultKind::NotStarted,
        }
    }
}

/// Counts of a run so far (for progress bars).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Progress {
    /// Tenants in the plan that need work.
    pub total: usize,
    /// Finished (any outcome).
    pub done: usize,
    /// Failed.
    pub failed: usize,
}

/// The whole result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Run id in `tenantd.migration_runs` (none for a dry run).
    pub run: Option<Uuid>,
    /// The plan.
    pub plan: Plan,
    /// Result per tenant that needed work.
    pub results: Vec<(String, Outcome)>,
    /// Why the run stopped early.
    pub stopped: Option<String>,
}

impl Summary {
    /// Tenants that failed, with their errors.
    pub fn failures(&self) -> Vec<(&str, &str)> {
        self.results
            .iter()
            .filter_map(|(slug, o)| match o {
                Outcome::Failed { error, .. } => Some((slug.as_str(), error.as_str())),
                _ => None,
            })
            .collect()
    }

    /// True when every requested tenant exists and none failed or was left out.
    pub fn succeeded(&self) -> bool {
        self.plan.not_found.is_empty()
            && self.stopped.is_none()
            && self.results.iter().all(|(_, o)| {
                !matches!(o, Outcome::Failed { .. } | Outcome::NotStarted | Outcome::Skipped { .. })
            })
    }
}

mod run;
mod tenant;

pub use run::{Started, Upgrader};

/// A progress callback that reports nothing (background runs).
pub fn no_progress(_: Progress) {}
