//! Reconcile: the catalog compared with every server, drift reported, the safe part repaired.
//!
//! A run (`tenantd reconcile`, or one daemon every `reconcile.interval`) holds the one-row
//! reconcile lease of the catalog, so one process at a time runs it. It:
//!
//! 1. reads every server (as its admin, read-only, schema-qualified): the databases and roles
//!    that carry a marker or that the catalog names, their grants and LOGIN ([`scan`]);
//! 2. reads the catalog afterwards (tenants, kept move sources, running moves), so an object
//!    made meanwhile by a tenant created meanwhile is known, and classifies what it found
//!    into [`Finding`]s, one [`DriftKind`] each ([`classify`]); a tenant's own database is read
//!    for its migration history (as the tenant role, in a read-only transaction);
//! 3. with `--repair`, makes the safe repairs, each under the tenant's lease and after checking
//!    again that the drift is still there; `--drop-orphans --yes` drops orphans ([`repair`]);
//! 4. records a `reconcile.drift` event per finding on its tenant (findings without a tenant
//!    are in the stored report and the log), sets `tenantd_drift{kind}`, stores the report
//!    (`GET /v1/reconcile`) and gives the lease back.
//!
//! Only what tenantd made is ever changed: a database or role counts as ours by its marker
//! ([`crate::markers`]). A database that may hold data is never dropped without
//! `--drop-orphans --yes`, and a READY tenant whose database is gone goes to ERROR with the
//! reason; it is never created again empty.

mod classify;
mod marked;
mod repair;
mod scan;
mod world;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::catalog::CatalogError;
use crate::core::Core;

/// How long a run holds the reconcile lease before renewing it (after each server, each repair).
const RUN_LEASE: Duration = Duration::from_secs(600);

/// What kind of drift a finding is (stable `snake_case` names: metrics label, JSON, events).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// A READY or SUSPENDED tenant's database is not on its server.
    DatabaseMissing,
    /// A READY or SUSPENDED tenant's role is not on its server.
    RoleMissing,
    /// The tenant's database or role exists under its name without its marker.
    Unmarked,
    /// A database with our marker that no live tenant owns.
    OrphanDatabase,
    /// A role with our marker that no live tenant owns on that server.
    OrphanRole,
    /// PUBLIC or another role has privileges on a tenant database, the tenant role lacks
    /// its own, or connections are not allowed.
    LockdownChanged,
    /// The tenant role may log in while the tenant is SUSPENDED, or may not while READY.
    LoginMismatch,
    /// The catalog's `schema_version` is not the database's own migration history.
    SchemaVersionMismatch,
    /// A tenant's database found on another server than the catalog says.
    MisplacedDatabase,
    /// A staging database of ours whose tenant is not being provisioned.
    StaleStaging,
    /// A source database kept by a move, past its `drop_after`.
    StaleMovedDatabase,
}

impl DriftKind {
    /// Every kind.
    pub const ALL: [DriftKind; 11] = [
        Self::DatabaseMissing,
        Self::RoleMissing,
        Self::Unmarked,
        Self::OrphanDatabase,
        Self::OrphanRole,
        Self::LockdownChanged,
        Self::LoginMismatch,
        Self::SchemaVersionMismatch,
        Self::MisplacedDatabase,
        Self::StaleStaging,
        Self::StaleMovedDatabase,
    ];

    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DatabaseMissing => "database_missing",
            Self::RoleMissing => "role_missing",
            Self::Unmarked => "unmarked",
            Self::OrphanDatabase => "orphan_database",
            Self::OrphanRole => "orphan_role",
            Self::LockdownChanged => "lockdown_changed",
            Self::LoginMismatch => "login_mismatch",
            Self::SchemaVersionMismatch => "schema_version_mismatch",
            Self::MisplacedDatabase => "misplaced_database",
            Self::StaleStaging => "stale_staging",
            Self::StaleMovedDatabase => "stale_moved_database",
        }
    }
}

impl std::fmt::Display for DriftKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a repair of a finding does (kept out of the report; `repair` says it in words).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing: reported only.
    #[default]
    None,
    /// READY/SUSPENDED → ERROR with the problem as the reason.
    MarkError,
    /// Provisioning's lockdown again; privileges of these other roles revoked.
    Relock(Vec<String>),
    /// LOGIN as the status says.
    SyncLogin,
    /// The catalog's schema version from the database's history.
    SchemaVersion(i32),
    /// Drop our stale staging database.
    DropStaging,
    /// Drop an orphan database (`--drop-orphans --yes` only).
    DropOrphanDatabase,
    /// Drop an orphan role (`--drop-orphans --yes` only).
    DropOrphanRole,
}

/// One difference between the catalog and a server.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finding {
    /// What kind of drift.
    pub kind: DriftKind,
    /// The tenant concerned (its slug), if any.
    pub tenant: Option<String>,
    /// The server it was found on.
    pub server: String,
    /// The database or role concerned.
    pub object: String,
    /// What is wrong.
    pub problem: String,
    /// What `--repair` (or `--drop-orphans --yes`) does about it, or that nothing will.
    pub repair: String,
    /// What this run did: `repaired`, `not repaired: ...`, `skipped: ...`, `failed: ...`.
    pub outcome: String,
    #[serde(skip)]
    pub(crate) tenant_id: Option<Uuid>,
    #[serde(skip)]
    pub(crate) action: Action,
}

/// Which repairs a run makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// The safe repairs (lockdown, LOGIN, schema version, stale staging, ERROR for a missing
    /// database or role).
    pub repair: bool,
    /// Drop orphan databases and roles (the CLI asks for `--yes` with it).
    pub drop_orphans: bool,
}

/// The outcome of one run.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Report {
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub finished_at: DateTime<Utc>,
    /// Safe repairs were made.
    pub repair: bool,
    /// Orphans were dropped.
    pub drop_orphans: bool,
    /// Servers read.
    pub servers_checked: usize,
    /// READY and SUSPENDED tenants compared.
    pub tenants_checked: usize,
    /// Findings per kind (every kind, zeros included).
    pub counts: BTreeMap<String, usize>,
    /// Findings still there after this run (not repaired), per kind: the `tenantd_drift` gauge.
    pub unrepaired: BTreeMap<String, usize>,
    /// What differs.
    pub findings: Vec<Finding>,
    /// What could not be checked or repaired (a server unreachable, a repair that failed).
    pub errors: Vec<String>,
}

impl Report {
    /// True when nothing differs.
    pub fn is_clean(&self) -> bool {
        self.findings.is_empty() && self.errors.is_empty()
    }
}

/// Why a run did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Another process is running it.
    #[error("a reconcile is running in {0} (lease until {1}); try again when it ends")]
    Busy(String, DateTime<Utc>),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Runs a reconcile now, as `actor` (the CLI): fails with [`ReconcileError::Busy`] when another
/// process holds the lease.
pub async fn run(core: &Core, actor: &str, options: Options) -> Result<Report, ReconcileError> {
    let owner = crate::leases::claim_owner(actor);
    if !core.catalog.claim_reconcile(&owner, RUN_LEASE, None).await? {
        let (holder, until) =
            core.catalog.reconcile_holder().await?.unwrap_or_else(|| ("?".into(), Utc::now()));
        return Err(ReconcileError::Busy(holder, until));
    }
    run_held(core, actor, &owner, options).await
}

/// Runs a reconcile if it is due: nobody holds the lease and the last run of any process
/// started `every` ago or more (the daemons' periodic check). `None` when it was not due.
pub async fn run_if_due(
    core: &Core,
    actor: &str,
    every: Duration,
    options: Options,
) -> Result<Option<Report>, ReconcileError> {
    let owner = crate::leases::claim_owner(actor);
    if !core.catalog.claim_reconcile(&owner, RUN_LEASE, Some(every)).await? {
        return Ok(None);
    }
    run_held(core, actor, &owner, options).await.map(Some)
}

async fn run_held(core: &Core, actor: &str, owner: &str, options: Options) -> Result<Report, ReconcileError> {
    let result = compare_and_repair(core, owner, options).await;
    let mut report = match result {
        Ok(report) => report,
        Err(e) => {
            if let Err(release) = core.catalog.release_reconcile(owner).await {
                tracing::warn!(error = %release, "cannot give the reconcile lease back; it expires");
            }
            return Err(e);
        }
    };
    report.finished_at = Utc::now();
    record(core, actor, &report).await;
    let value = serde_json::to_value(&report).unwrap_or_else(|e| json!({ "error": e.to_string() }));
    core.catalog.record_reconcile(owner, actor, options.repair, report.started_at, &value).await?;
    set_gauges(&report.unrepaired);
    Ok(report)
}

async fn compare_and_repair(core: &Core, owner: &str, options: Options) -> Result<Report, ReconcileError> {
    let started_at = Utc::now();
    let servers = core.catalog.servers().await?;
    let mut errors = Vec::new();
    let mut scans = Vec::new();
    for server in &servers {
        match scan::server(core, server).await {
            Ok(found) => scans.push(found),
            Err(e) => {
                metrics::counter!("tenantd_reconcile_errors_total").increment(1);
                tracing::warn!(server = %server.name, error = %e, "reconcile cannot read a server");
                errors.push(format!("server {}: {e}", server.name));
            }
        }
        core.catalog.renew_reconcile(owner, RUN_LEASE).await?;
    }
    let world = world::World::load(core, &scans).await?;
    let mut findings = Vec::new();
    let mut tenants_checked = 0;
    for found in &scans {
        let (mut server_findings, checked) = classify::server(core, &world, found, &mut errors).await;
        tenants_checked += checked;
        findings.append(&mut server_findings);
    }
    for f in &mut findings {
        f.outcome = repair::default_outcome(f, options);
    }
    if options.repair || options.drop_orphans {
        for f in &mut findings {
            if repair::wanted(f, options) {
                f.outcome = repair::repair(core, &world, f).await;
                if f.outcome.starts_with("failed") {
                    metrics::counter!("tenantd_reconcile_errors_total").increment(1);
                    errors.push(format!("{} {} on {}: {}", f.kind, f.object, f.server, f.outcome));
                }
                core.catalog.renew_reconcile(owner, RUN_LEASE).await?;
            }
        }
    }
    let mut counts: BTreeMap<String, usize> =
        DriftKind::ALL.iter().map(|k| (k.as_str().to_owned(), 0)).collect();
    let mut unrepaired = counts.clone();
    for f in &findings {
        *counts.entry(f.kind.as_str().to_owned()).or_default() += 1;
        if f.outcome != repair::REPAIRED {
            *unrepaired.entry(f.kind.as_str().to_owned()).or_default() += 1;
        }
    }
    Ok(Report {
        started_at,
        finished_at: Utc::now(),
        repair: options.repair,
        drop_orphans: options.drop_orphans,
        servers_checked: scans.len(),
        tenants_checked,
        counts,
        unrepaired,
        findings,
        errors,
    })
}

/// Findings logged one line each; beyond them, one line with the counts (a catalog that
/// drifted wholesale must not flood the log: the stored report has every finding).
const LOGGED_FINDINGS: usize = 50;

/// One `reconcile.drift` event per finding with a tenant row (an orphan of a deleted tenant
/// included), one log line per finding up to [`LOGGED_FINDINGS`]; a failed write is logged and
/// counted, never fatal (the report itself is stored next).
async fn record(core: &Core, actor: &str, report: &Report) {
    if report.findings.len() > LOGGED_FINDINGS {
        tracing::warn!(
            findings = report.findings.len(),
            counts = ?report.counts,
            "drift: {} findings, the first {LOGGED_FINDINGS} logged below; every one is in the report \
             (tenantd reconcile --json, GET /v1/reconcile)",
            report.findings.len()
        );
    }
    for (i, f) in report.findings.iter().enumerate() {
        if i < LOGGED_FINDINGS {
            tracing::warn!(kind = %f.kind, tenant = ?f.tenant, server = %f.server, object = %f.object, outcome = %f.outcome, "drift: {}", f.problem);
        }
        let Some(tenant) = f.tenant_id else { continue };
        let detail = json!({
            "kind": f.kind, "server": f.server, "object": f.object, "problem": f.problem,
            "repair": f.repair, "outcome": f.outcome,
        });
        if let Err(e) = core.catalog.drift_event(tenant, &detail, actor).await {
            metrics::counter!("tenantd_reconcile_errors_total").increment(1);
            tracing::warn!(error = %e, tenant = ?f.tenant, "cannot record a reconcile.drift event");
        }
    }
}

/// Sets `tenantd_drift{kind}` from a report's unrepaired counts.
pub(crate) fn set_gauges(unrepaired: &BTreeMap<String, usize>) {
    for kind in DriftKind::ALL {
        let n = unrepaired.get(kind.as_str()).copied().unwrap_or(0);
        metrics::gauge!("tenantd_drift", "kind" => kind.as_str()).set(n as f64);
    }
}

/// Sets `tenantd_drift{kind}` from the last stored report (a daemon whose turn it was not
/// shows the fleet's last run, whoever made it).
pub async fn refresh_gauges(core: &Core) -> Result<(), CatalogError> {
    if let Some(last) = core.catalog.last_reconcile().await? {
        match serde_json::from_value::<BTreeMap<String, usize>>(last.report["unrepaired"].clone()) {
            Ok(unrepaired) => set_gauges(&unrepaired),
            Err(error) => {
                // Not zero drift: the gauge keeps what it had, and the reason is said.
                metrics::counter!("tenantd_reconcile_errors_total").increment(1);
                tracing::warn!(%error, "the last reconcile report has no readable counts; tenantd_drift left as it was");
            }
        }
    }
    Ok(())
}
