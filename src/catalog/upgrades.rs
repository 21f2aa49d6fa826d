//! Queries for tenant upgrades: claiming a READY tenant for an upgrade, recording the result,
//! and the `migration_runs` / `migration_results` history.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::events::EventKind;
use super::tenants::{TenantRecord, TenantStatus};
use super::{Catalog, CatalogError};

/// How often a process working on a run marks it alive.
pub const RUN_HEARTBEAT: Duration = Duration::from_secs(10);
/// A running run without a heartbeat for this long is considered interrupted.
pub const RUN_STALE_AFTER: Duration = Duration::from_secs(60);

/// State of an upgrade run (stored as text with a CHECK constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Its process is working on it.
    Running,
    /// Every planned tenant was attempted.
    Finished,
    /// Stopped early on purpose (canary failed, max failures reached).
    Stopped,
    /// Its process stopped (shutdown, or no heartbeat any more).
    Interrupted,
}

impl RunStatus {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Stopped => "stopped",
            Self::Interrupted => "interrupted",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "running" => Self::Running,
            "finished" => Self::Finished,
            "stopped" => Self::Stopped,
            _ => Self::Interrupted,
        }
    }
}

/// What became of one tenant in a run (stored as text with a CHECK constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResultKind {
    /// Pending migrations applied.
    Upgraded,
    /// Nothing was pending.
    Current,
    /// Its database is newer than the build that ran.
    Ahead,
    /// Failed; left at its old version.
    Failed,
    /// Not attempted: held by another process or not READY any more.
    Skipped,
    /// Not attempted because the run stopped.
    NotStarted,
    /// Named in the selection but no such READY tenant.
    NotFound,
}

impl ResultKind {
    /// Every kind.
    pub const ALL: [ResultKind; 7] = [
        Self::Upgraded,
        Self::Current,
        Self::Ahead,
        Self::Failed,
        Self::Skipped,
        Self::NotStarted,
        Self::NotFound,
    ];

    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upgraded => "upgraded",
            Self::Current => "current",
            Self::Ahead => "ahead",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::NotStarted => "not_started",
            Self::NotFound => "not_found",
        }
    }

    fn parse(text: &str) -> Self {
        Self::ALL.into_iter().find(|k| k.as_str() == text).unwrap_or(Self::Failed)
    }

    /// True when the tenant was attempted (any outcome but not started / not found / ahead).
    pub fn is_done(self) -> bool {
        matches!(self, Self::Upgraded | Self::Current | Self::Failed | Self::Skipped)
    }
}

/// A run as stored.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RunRecord {
    /// Id.
    pub id: Uuid,
    /// Who started it.
    pub actor: String,
    /// What was asked (selection and options).
    pub params: serde_json::Value,
    /// Version the run upgrades to.
    pub target_version: i32,
    /// `running`, `finished`, `stopped` (canary or max failures), `interrupted`.
    pub status: RunStatus,
    /// Why it stopped early.
    pub stop_reason: Option<String>,
    /// Tenants in the plan.
    pub total: i32,
    /// Start.
    pub created_at: DateTime<Utc>,
    /// End.
    pub finished_at: Option<DateTime<Utc>>,
}

/// One tenant's result in a run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ResultRecord {
    /// Tenant.
    pub slug: String,
    /// `upgraded`, `current`, `ahead`, `failed`, `skipped`, `not_found`, `not_started`.
    pub outcome: ResultKind,
    /// Version before.
    pub from_version: Option<i32>,
    /// Version after.
    pub to_version: Option<i32>,
    /// Error or reason.
    pub detail: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// One tenant's result in a run, as written to `tenantd.migration_results`.
#[derive(Debug, Clone, Copy)]
pub struct RunResult<'a> {
    /// The run.
    pub run: Uuid,
    /// The tenant.
    pub slug: &'a str,
    /// What became of it.
    pub kind: ResultKind,
    /// Version before.
    pub from: Option<i32>,
    /// Version after.
    pub to: Option<i32>,
    /// Error or reason.
    pub detail: Option<&'a str>,
}

/// The upsert of a result row as a CTE named `result`, its six values at the given
/// parameter positions (run, slug, outcome, from, to, detail). A later attempt in the same
/// run (a resumed tenant) replaces the row.
macro_rules! result_upsert {
    ($run:literal, $slug:literal, $outcome:literal, $from:literal, $to:literal, $detail:literal) => {
        concat!(
            "result AS (INSERT INTO tenantd.migration_results (run_id, slug, outcome, from_version, to_version, detail) \
             VALUES (", $run, ", ", $slug, ", ", $outcome, ", ", $from, ", ", $to, ", ", $detail, ") \
             ON CONFLICT (run_id, slug) DO UPDATE SET outcome = EXCLUDED.outcome, \
             from_version = EXCLUDED.from_version, to_version = EXCLUDED.to_version, detail = EXCLUDED.detail, \
             at = EXCLUDED.at)"
        )
    };
}

impl Catalog {
    /// Claims a READY tenant for an upgrade (the same lease as provisioning uses). `None`
    /// when it is not READY or another process holds it.
    pub async fn claim_for_upgrade(
        &self,
        slug: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<TenantRecord>, CatalogError> {
        self.claim_in_status(slug, owner, lease, &[TenantStatus::Ready]).await
    }

    /// Records an upgraded (or verified current) tenant: version, cleared error, event, lease
    /// released, and its result in the run — one statement, one commit. The result row is
    /// written even when the lease was lost (then [`CatalogError::LeaseLost`] is returned).
    ///
    /// Committed without waiting for the WAL flush: the run's next synchronous commit (the
    /// next chunk's claim, the run's end) flushes it. Only a crash of the catalog's server in
    /// that window could lose it (never a crash of the daemon: the commit is PostgreSQL's),
    /// and what it records is derived again from the tenant database itself: its history
    /// holds the migration, so the next run finds the tenant current and records it.
    pub async fn finish_upgrade(
        &self,
        id: Uuid,
        owner: &str,
        version: i32,
        kind: EventKind,
        detail: &serde_json::Value,
        result: &RunResult<'_>,
    ) -> Result<(), CatalogError> {
        self.leased_write(
            concat!("WITH quick AS (SELECT pg_catalog.set_config('synchronous_commit', 'off', true)), \
               done AS (UPDATE tenantd.tenants SET schema_version = $3, last_error = NULL, \
               lease_owner = NULL, lease_until = NULL WHERE ", held!(), " RETURNING id), ",
               result_upsert!("$6", "$7", "$8", "$9", "$10", "$11"),
             " INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) SELECT id, $4, $5, $2 FROM done, quick"),
            &[&id, &owner, &version, &kind.as_str(), detail, &result.run, &result.slug, &result.kind.as_str(),
              &result.from, &result.to, &result.detail],
        )
        .await
    }

    /// Records a failed upgrade: the tenant stays READY at its old version with the reason in
    /// `last_error` and an event; lease released; its result in the run — one statement.
    pub async fn fail_upgrade(
        &self,
        id: Uuid,
        owner: &str,
        error: &str,
        detail: &serde_json::Value,
        result: &RunResult<'_>,
    ) -> Result<(), CatalogError> {
        self.leased_write(
            concat!("WITH failed AS (UPDATE tenantd.tenants SET last_error = $3, lease_owner = NULL, lease_until = NULL \
               WHERE ", held!(), " RETURNING id), ",
               result_upsert!("$6", "$7", "$8", "$9", "$10", "$11"),
             " INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
             SELECT id, $5, $4, $2 FROM failed"),
            &[&id, &owner, &error, detail, &EventKind::UpgradeFailed.as_str(), &result.run, &result.slug,
              &result.kind.as_str(), &result.from, &result.to, &result.detail],
        )
        .await
    }

    /// Starts a run record.
    pub async fn insert_run(
        &self,
        actor: &str,
        params: &serde_json::Value,
        target: i32,
        total: i32,
    ) -> Result<Uuid, CatalogError> {
        let row = self
            .query_one(
                "INSERT INTO tenantd.migration_runs (actor, params, target_version, total) VALUES ($1, $2, $3, $4) RETURNING id",
                &[&actor, params, &target, &total],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Records one tenant's result in a run (one not attempted, or attempted without its
    /// lease; the others go with [`Catalog::finish_upgrade`] and [`Catalog::fail_upgrade`]).
    pub async fn insert_result(&self, result: &RunResult<'_>) -> Result<(), CatalogError> {
        self.execute(
            concat!("WITH ", result_upsert!("$1", "$2", "$3", "$4", "$5", "$6"), " SELECT 1"),
            &[&result.run, &result.slug, &result.kind.as_str(), &result.from, &result.to, &result.detail],
        )
        .await?;
        Ok(())
    }

    /// Closes a run.
    pub async fn finish_run(
        &self,
        run: Uuid,
        status: RunStatus,
        reason: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.execute(
            "UPDATE tenantd.migration_runs SET status = $2, stop_reason = $3, finished_at = now() WHERE id = $1",
            &[&run, &status.as_str(), &reason],
        )
        .await?;
        Ok(())
    }

    /// Marks a run alive (its process is still working on it).
    pub async fn run_heartbeat(&self, run: Uuid) -> Result<(), CatalogError> {
        self.execute("UPDATE tenantd.migration_runs SET heartbeat_at = now() WHERE id = $1", &[&run]).await?;
        Ok(())
    }

    /// The latest `limit` runs, newest first, each with how many of its tenants are done.
    pub async fn runs(&self, limit: i64) -> Result<Vec<(RunRecord, i64)>, CatalogError> {
        let done: Vec<&str> = ResultKind::ALL.iter().filter(|k| k.is_done()).map(|k| k.as_str()).collect();
        let rows = self
            .query(
                "SELECT r.id, r.actor, r.params, r.target_version, r.status, r.stop_reason, r.total, \
                 r.created_at, r.finished_at, (SELECT count(*) FROM tenantd.migration_results m \
                 WHERE m.run_id = r.id AND m.outcome = ANY($2)) \
                 FROM tenantd.migration_runs r ORDER BY r.created_at DESC LIMIT $1",
                &[&limit, &done],
            )
            .await?;
        Ok(rows.iter().map(|row| (run_from_row(row), row.get(9))).collect())
    }

    /// A run and its results so far. A `running` run whose heartbeat stopped more than
    /// [`RUN_STALE_AFTER`] ago is marked `interrupted` first (its process died).
    pub async fn run(&self, run: Uuid) -> Result<(RunRecord, Vec<ResultRecord>), CatalogError> {
        self.execute(
            "UPDATE tenantd.migration_runs SET status = 'interrupted', finished_at = now(), \
             stop_reason = 'no heartbeat since ' || heartbeat_at || ': the process running it stopped' \
             WHERE id = $1 AND status = 'running' AND heartbeat_at < now() - make_interval(secs => $2)",
            &[&run, &RUN_STALE_AFTER.as_secs_f64()],
        )
        .await?;
        let row = self
            .query_opt(
                "SELECT id, actor, params, target_version, status, stop_reason, total, created_at, finished_at \
                 FROM tenantd.migration_runs WHERE id = $1",
                &[&run],
            )
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("no migration run {run}")))?;
        let record = run_from_row(&row);
        let results = self
            .query(
                "SELECT slug, outcome, from_version, to_version, detail, at FROM tenantd.migration_results \
                 WHERE run_id = $1 ORDER BY at, slug",
                &[&run],
            )
            .await?
            .iter()
            .map(|r| ResultRecord {
                slug: r.get(0),
                outcome: ResultKind::parse(r.get(1)),
                from_version: r.get(2),
                to_version: r.get(3),
                detail: r.get(4),
                at: r.get(5),
            })
            .collect();
        Ok((record, results))
    }

    /// READY tenants (slug and schema version), by slug: every one (`slugs` of `None`, the
    /// `--all` selection) or those named; optionally only on one server. One query.
    pub async fn upgrade_candidates(
        &self,
        slugs: Option<&[String]>,
        server: Option<&str>,
    ) -> Result<Vec<(String, i32)>, CatalogError> {
        let rows = match slugs {
            None => {
                self.query(
                    "SELECT slug, schema_version FROM tenantd.tenants WHERE status = 'READY' \
                     AND ($1::text IS NULL OR server = $1) ORDER BY slug",
                    &[&server],
                )
                .await?
            }
            Some(slugs) => {
                self.query(
                    "SELECT slug, schema_version FROM tenantd.tenants WHERE slug = ANY($1) AND status = 'READY' \
                     AND ($2::text IS NULL OR server = $2) ORDER BY slug",
                    &[&slugs, &server],
                )
                .await?
            }
        };
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

fn run_from_row(row: &tokio_postgres::Row) -> RunRecord {
    RunRecord {
        id: row.get(0),
        actor: row.get(1),
        params: row.get(2),
        target_version: row.get(3),
        status: RunStatus::parse(row.get(4)),
        stop_reason: row.get(5),
        total: row.get(6),
        created_at: row.get(7),
        finished_at: row.get(8),
    }
}
