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

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::catalog::events::EventKind;
use crate::catalog::tenants::TenantRecord;
use crate::catalog::{Catalog, CatalogError};
/// Largest concurrency accepted (each in-flight tenant holds a connection).
pub use crate::config::MAX_UPGRADE_CONCURRENCY as MAX_CONCURRENCY;
use crate::core::Core;
use crate::target::TenantTarget;
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

impl Options {
    /// Checks the numbers; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "concurrency must be between 1 and {MAX_CONCURRENCY} (got {})",
                self.concurrency
            ));
        }
        if self.max_failures == Some(0) {
            return Err("max_failures must be at least 1".into());
        }
        Ok(())
    }
}

/// One tenant in a plan.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
    let slugs = if selection.all {
        catalog.ready_slugs(selection.server.as_deref()).await?
    } else {
        selection.slugs.clone()
    };
    let mut tenants = Vec::new();
    let mut not_found = Vec::new();
    for slug in slugs {
        match catalog.tenant(&slug).await {
            Ok(t)
                if t.status == crate::catalog::tenants::TenantStatus::Ready
                    && selection.server.as_deref().is_none_or(|s| t.server.as_deref() == Some(s)) =>
            {
                tenants.push(Planned {
                    pending: migrations.pending_after(t.schema_version),
                    ahead: t.schema_version > target,
                    from_version: t.schema_version,
                    slug,
                })
            }
            Ok(_) | Err(CatalogError::NotFound(_)) => not_found.push(slug),
            Err(e) => return Err(e),
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
    /// The outcome's name as stored in `migration_results`.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Upgraded { .. } => "upgraded",
            Outcome::Current { .. } => "current",
            Outcome::Ahead { .. } => "ahead",
            Outcome::Failed { .. } => "failed",
            Outcome::Skipped { .. } => "skipped",
            Outcome::NotStarted => "not_started",
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

/// Upgrade runs of one process, acting as `actor`.
pub struct Upgrader<'a> {
    core: &'a Core,
    actor: &'a str,
    migrations: &'a MigrationSet,
}

/// A run that has been planned and recorded, ready to execute.
#[derive(Debug, Clone)]
pub struct Started {
    /// Run id.
    pub run: Uuid,
    /// The plan.
    pub plan: Plan,
}

impl<'a> Upgrader<'a> {
    /// Upgrade runs acting as `actor` (run records, events, lease owners).
    pub fn new(core: &'a Core, actor: &'a str) -> Self {
        Self { core, actor, migrations: &core.migrations }
    }

    /// Applies these migrations instead of the core's (a benchmark's "newer build").
    #[must_use]
    pub fn with_migrations(mut self, migrations: &'a MigrationSet) -> Self {
        self.migrations = migrations;
        self
    }
}

impl Upgrader<'_> {
    /// Plans and (unless dry) runs; `progress` is called after every tenant.
    pub async fn run(
        &self,
        selection: &Selection,
        options: &Options,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Summary, CatalogError> {
        if options.dry_run {
            let plan = plan(&self.core.catalog, self.migrations, selection).await?;
            return Ok(Summary { run: None, plan, results: Vec::new(), stopped: None });
        }
        let started = self.start(selection, options).await?;
        self.execute(started, options, progress).await
    }

    /// Plans and records the run (and the tenants it will not touch).
    pub async fn start(&self, selection: &Selection, options: &Options) -> Result<Started, CatalogError> {
        let plan = plan(&self.core.catalog, self.migrations, selection).await?;
        let params = json!({ "selection": selection, "options": options });
        let total = plan.behind().count() as i32;
        let run = self.core.catalog.insert_run(self.actor, &params, plan.target_version, total).await?;
        for slug in &plan.not_found {
            self.core
                .catalog
                .insert_result(run, slug, "not_found", None, None, Some("no such READY tenant"))
                .await?;
        }
        for t in plan.tenants.iter().filter(|t| t.ahead) {
            let detail = format!(
                "database at version {}, newer than this build ({})",
                t.from_version, plan.target_version
            );
            self.core
                .catalog
                .insert_result(run, &t.slug, "ahead", Some(t.from_version), None, Some(&detail))
                .await?;
        }
        tracing::info!(%run, tenants = total, target = plan.target_version, "upgrade run started");
        Ok(Started { run, plan })
    }

    /// Upgrades the tenants of a started run.
    pub async fn execute(
        &self,
        started: Started,
        options: &Options,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Summary, CatalogError> {
        let run = started.run;
        tokio::select! {
            summary = self.execute_inner(started, options, progress) => summary,
            never = self.heartbeat(run) => match never {},
        }
    }

    /// Marks the run alive every [`crate::catalog::upgrades::RUN_HEARTBEAT`]; never returns.
    async fn heartbeat(&self, run: Uuid) -> std::convert::Infallible {
        loop {
            tokio::time::sleep(crate::catalog::upgrades::RUN_HEARTBEAT).await;
            if let Err(e) = self.core.catalog.run_heartbeat(run).await {
                tracing::warn!(%run, error = %e, "cannot mark the upgrade run alive");
            }
        }
    }

    async fn execute_inner(
        &self,
        started: Started,
        options: &Options,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Summary, CatalogError> {
        let Started { run, plan } = started;
        let work: Vec<Planned> = plan.behind().cloned().collect();
        let counters = Counters {
            total: work.len(),
            done: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            unrecorded: AtomicUsize::new(0),
        };
        let canary = options.canary.min(work.len());
        let (first, rest) = work.split_at(canary);
        let mut results = self.batch(run, first, options.concurrency, None, &counters, progress).await;
        let mut stopped = None;
        if counters.failed.load(Ordering::SeqCst) > 0 {
            stopped = Some(format!(
                "canary failed: {} of the first {canary} tenants failed",
                counters.failed.load(Ordering::SeqCst)
            ));
        } else {
            results.extend(
                self.batch(run, rest, options.concurrency, options.max_failures, &counters, progress).await,
            );
            if let Some(max) = options.max_failures.filter(|m| counters.failed.load(Ordering::SeqCst) >= *m) {
                stopped = Some(format!("stopped after {max} failures"));
            }
        }
        let done: std::collections::HashSet<&str> = results.iter().map(|(s, _)| s.as_str()).collect();
        let not_started: Vec<(String, Outcome)> = work
            .iter()
            .filter(|t| !done.contains(t.slug.as_str()))
            .map(|t| (t.slug.clone(), Outcome::NotStarted))
            .collect();
        for (slug, _) in &not_started {
            self.core.catalog.insert_result(run, slug, "not_started", None, None, stopped.as_deref()).await?;
        }
        results.extend(not_started);
        let status = if stopped.is_some() { "stopped" } else { "finished" };
        let unrecorded = counters.unrecorded.load(Ordering::SeqCst);
        let reason = match (&stopped, unrecorded) {
            (_, 0) => stopped.clone(),
            (Some(r), n) => Some(format!("{r}; {n} result(s) could not be recorded (see the log)")),
            (None, n) => Some(format!("{n} result(s) could not be recorded (see the log)")),
        };
        self.core.catalog.finish_run(run, status, reason.as_deref()).await?;
        tracing::info!(%run, status, failed = counters.failed.load(Ordering::SeqCst), "upgrade run ended");
        Ok(Summary { run: Some(run), plan, results, stopped })
    }

    async fn batch(
        &self,
        run: Uuid,
        tenants: &[Planned],
        concurrency: usize,
        max_failures: Option<usize>,
        counters: &Counters,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Vec<(String, Outcome)> {
        // Indices rather than references keep the stream's closures free of borrowed
        // arguments (which a spawned future cannot prove general enough).
        futures::stream::iter(0..tenants.len())
            .map(|i| async move {
                let t = &tenants[i];
                if max_failures.is_some_and(|max| counters.failed.load(Ordering::SeqCst) >= max) {
                    return None;
                }
                let outcome = self.one(t).await;
                if let Err(e) = self.record(run, t, &outcome).await {
                    counters.unrecorded.fetch_add(1, Ordering::SeqCst);
                    tracing::error!(tenant = %t.slug, error = %e, "cannot record an upgrade result");
                }
                counters.finished(matches!(outcome, Outcome::Failed { .. }), progress);
                Some((t.slug.clone(), outcome))
            })
            .buffer_unordered(concurrency)
            .filter_map(std::future::ready)
            .collect()
            .await
    }

    async fn record(&self, run: Uuid, t: &Planned, outcome: &Outcome) -> Result<(), CatalogError> {
        let (to, detail) = match outcome {
            Outcome::Upgraded { to, .. } => (Some(*to), None),
            Outcome::Current { version } => (Some(*version), None),
            Outcome::Ahead { version } => (Some(*version), Some("newer than this build".to_owned())),
            Outcome::Failed { error, .. } => (None, Some(error.clone())),
            Outcome::Skipped { reason } => (None, Some(reason.clone())),
            Outcome::NotStarted => (None, None),
        };
        self.core
            .catalog
            .insert_result(run, &t.slug, outcome.name(), Some(t.from_version), to, detail.as_deref())
            .await
    }

    /// Upgrades one tenant, holding its lease throughout.
    async fn one(&self, planned: &Planned) -> Outcome {
        let lease = self.core.settings.workers.lease;
        let owner = crate::leases::claim_owner(self.actor);
        let claimed_at = std::time::Instant::now();
        let tenant = match self.core.catalog.claim_for_upgrade(&planned.slug, &owner, lease).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                let reason = match self.core.catalog.tenant(&planned.slug).await {
                    Ok(t) if t.status != crate::catalog::tenants::TenantStatus::Ready => {
                        format!("tenant is {}", t.status)
                    }
                    Ok(t) => format!("held by {}", t.lease_owner.unwrap_or_else(|| "another process".into())),
                    Err(e) => e.to_string(),
                };
                return Outcome::Skipped { reason };
            }
            Err(e) => {
                return Outcome::Failed { version: planned.from_version, error: format!("catalog: {e}") };
            }
        };
        let span = tracing::info_span!("upgrade", tenant = %tenant.slug);
        let work = async {
            tokio::select! {
                outcome = self.apply(&tenant) => outcome,
                lost = crate::leases::keep_lease(&self.core.catalog, tenant.id, &owner, lease, claimed_at) => {
                    Err(format!("stopped: {lost}"))
                }
            }
        };
        let result = tracing::Instrument::instrument(work, span).await;
        self.conclude(&tenant, &owner, result).await
    }

    /// Connects as the tenant role and applies what is pending.
    async fn apply(&self, tenant: &TenantRecord) -> Result<Outcome, String> {
        let target = TenantTarget::resolve(&self.core.catalog, &self.core.keyring, tenant)
            .await
            .map_err(|e| e.to_string())?;
        let config = target.config(None, "tenantd-upgrade");
        let mut client =
            crate::pg::connect(&config, "tenant upgrade").await.map_err(|e| crate::pg::describe(&e))?;
        let recorded =
            crate::tenant_migrations::current_version(&mut client).await.map_err(|e| e.to_string())?;
        if recorded > self.migrations.latest_version() {
            return Ok(Outcome::Ahead { version: recorded });
        }
        let (version, applied) = self.migrations.apply(&mut client).await.map_err(|e| e.to_string())?;
        Ok(if applied.is_empty() {
            Outcome::Current { version }
        } else {
            Outcome::Upgraded { from: recorded, to: version, applied }
        })
    }

    /// Writes the outcome to the catalog (and releases the lease).
    async fn conclude(&self, tenant: &TenantRecord, owner: &str, result: Result<Outcome, String>) -> Outcome {
        let written = match &result {
            Ok(Outcome::Upgraded { from, to, applied }) => {
                tracing::info!(tenant = %tenant.slug, from, to, "tenant upgraded");
                metrics::counter!("tenantd_upgrades_total", "outcome" => "upgraded").increment(1);
                let detail = json!({ "from": from, "to": to, "applied": applied });
                self.core
                    .catalog
                    .finish_upgrade(tenant.id, owner, *to, EventKind::UpgradeApplied, &detail)
                    .await
            }
            Ok(Outcome::Current { version }) => {
                let detail = json!({ "version": version });
                self.core
                    .catalog
                    .finish_upgrade(tenant.id, owner, *version, EventKind::UpgradeCurrent, &detail)
                    .await
            }
            Ok(Outcome::Ahead { version }) => {
                tracing::warn!(tenant = %tenant.slug, version, "tenant database is newer than this build; left alone");
                let error = format!(
                    "database at version {version}, newer than this build ({})",
                    self.migrations.latest_version()
                );
                self.core.catalog.fail_upgrade(tenant.id, owner, &error, &json!({ "ahead": version })).await
            }
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::error!(tenant = %tenant.slug, %error, "tenant upgrade failed; it stays at its old version");
                metrics::counter!("tenantd_upgrades_total", "outcome" => "failed").increment(1);
                let detail = json!({ "error": error, "version": tenant.schema_version });
                self.core.catalog.fail_upgrade(tenant.id, owner, &format!("upgrade: {error}"), &detail).await
            }
        };
        if let Err(e) = written {
            tracing::error!(tenant = %tenant.slug, error = %e, "cannot record the upgrade outcome; the lease will expire");
        }
        match result {
            Ok(outcome) => outcome,
            Err(error) => Outcome::Failed { version: tenant.schema_version, error },
        }
    }
}

struct Counters {
    total: usize,
    done: AtomicUsize,
    failed: AtomicUsize,
    unrecorded: AtomicUsize,
}

impl Counters {
    fn finished(&self, failed: bool, progress: &(dyn Fn(Progress) + Sync)) {
        let done = self.done.fetch_add(1, Ordering::SeqCst) + 1;
        let failed = if failed {
            self.failed.fetch_add(1, Ordering::SeqCst) + 1
        } else {
            self.failed.load(Ordering::SeqCst)
        };
        progress(Progress { total: self.total, done, failed });
    }
}

/// A progress callback that reports nothing (background runs).
pub fn no_progress(_: Progress) {}
