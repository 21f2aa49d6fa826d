//! Queries of reconcile (`tenantd reconcile`, the daemons' periodic check): the one-row
//! lease that lets one process at a time run it, the stored reports, what the catalog knows
//! of databases kept by moves, and the lease-guarded writes of its repairs.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::events::EventKind;
use super::tenants::secs;
use super::{Catalog, CatalogError};

/// A stored reconcile report.
#[derive(Debug, Clone)]
pub struct StoredReport {
    /// Run number (increasing).
    pub id: i64,
    /// Who ran it: a daemon instance or `cli:<user>@<host>:<pid>`.
    pub actor: String,
    /// Whether safe repairs were made.
    pub repair: bool,
    /// Start.
    pub started_at: DateTime<Utc>,
    /// End.
    pub finished_at: DateTime<Utc>,
    /// The report (see `Report`): findings, errors, counts per kind.
    pub report: serde_json::Value,
}

/// A source database a move kept on a server, not dropped yet.
#[derive(Debug, Clone)]
pub struct KeptDatabase {
    /// The move.
    pub operation: Uuid,
    /// The tenant moved.
    pub tenant_id: Uuid,
    /// The server it is kept on.
    pub server: String,
    /// Its name there.
    pub database: String,
    /// When a daemon drops it.
    pub drop_after: Option<DateTime<Utc>>,
    /// Why the last drop failed, if it did.
    pub drop_error: Option<String>,
}

/// Runs kept in the catalog.
const KEEP_RUNS: i64 = 50;

impl Catalog {
    /// Takes the reconcile lease for `owner` when nobody holds it and, with `every`, when the
    /// last run (of any process) started at least that long ago. True when taken.
    pub async fn claim_reconcile(
        &self,
        owner: &str,
        lease: Duration,
        every: Option<Duration>,
    ) -> Result<bool, CatalogError> {
        let every = every.map(secs);
        let row = self
            .query_opt(
                concat!(
                    "UPDATE tenantd.reconcile_lease SET lease_owner = $1, \
                       lease_until = now() + make_interval(secs => $2), last_started_at = now() \
                     WHERE ",
                    free!(),
                    " AND ($3::float8 IS NULL OR last_started_at IS NULL \
                       OR last_started_at <= now() - make_interval(secs => $3)) RETURNING id"
                ),
                &[&owner, &secs(lease), &every],
            )
            .await?;
        Ok(row.is_some())
    }

    /// Who holds the reconcile lease now, and until when.
    pub async fn reconcile_holder(&self) -> Result<Option<(String, DateTime<Utc>)>, CatalogError> {
        let row = self
            .query_opt(
                "SELECT lease_owner, lease_until FROM tenantd.reconcile_lease \
                 WHERE lease_owner IS NOT NULL AND lease_until > now()",
                &[],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Extends our reconcile lease; [`CatalogError::LeaseLost`] when it is no longer ours.
    pub async fn renew_reconcile(&self, owner: &str, lease: Duration) -> Result<(), CatalogError> {
        let n = self
            .execute(
                "UPDATE tenantd.reconcile_lease SET lease_until = now() + make_interval(secs => $2) \
                 WHERE lease_owner = $1 AND lease_until > now()",
                &[&owner, &secs(lease)],
            )
            .await?;
        if n == 1 { Ok(()) } else { Err(CatalogError::LeaseLost) }
    }

    /// Stores a finished run's report and gives the lease back, in one statement; the oldest
    /// runs beyond the newest 50 are removed.
    pub async fn record_reconcile(
        &self,
        owner: &str,
        actor: &str,
        repair: bool,
        started_at: DateTime<Utc>,
        report: &serde_json::Value,
    ) -> Result<i64, CatalogError> {
        let row = self
            .query_one(
                "WITH run AS (INSERT INTO tenantd.reconcile_runs (actor, repair, started_at, report) \
                   VALUES ($2, $3, $4, $5) RETURNING id), \
                 released AS (UPDATE tenantd.reconcile_lease SET lease_owner = NULL, lease_until = NULL \
                   WHERE lease_owner = $1 RETURNING id), \
                 trimmed AS (DELETE FROM tenantd.reconcile_runs WHERE id <= (SELECT id FROM run) - $6) \
                 SELECT id FROM run",
                &[&owner, &actor, &repair, &started_at, report, &KEEP_RUNS],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Gives the reconcile lease back without a report (the run failed).
    pub async fn release_reconcile(&self, owner: &str) -> Result<(), CatalogError> {
        self.execute(
            "UPDATE tenantd.reconcile_lease SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
            &[&owner],
        )
        .await?;
        Ok(())
    }

    /// The last finished run, if any.
    pub async fn last_reconcile(&self) -> Result<Option<StoredReport>, CatalogError> {
        let row = self
            .query_opt(
                "SELECT id, actor, repair, started_at, finished_at, report FROM tenantd.reconcile_runs \
                 ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await?;
        Ok(row.map(|r| StoredReport {
            id: r.get(0),
            actor: r.get(1),
            repair: r.get(2),
            started_at: r.get(3),
            finished_at: r.get(4),
            report: r.get(5),
        }))
    }

    /// Source databases kept by moves and not dropped yet.
    pub async fn kept_databases(&self) -> Result<Vec<KeptDatabase>, CatalogError> {
        let rows = self
            .query(
                "SELECT id, tenant_id, server, kept_database, drop_after, detail ->> 'drop_error' \
                 FROM tenantd.operations WHERE kept_database IS NOT NULL AND dropped_at IS NULL \
                   AND tenant_id IS NOT NULL",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| KeptDatabase {
                operation: r.get(0),
                tenant_id: r.get(1),
                server: r.get(2),
                database: r.get(3),
                drop_after: r.get(4),
                drop_error: r.get(5),
            })
            .collect())
    }

    /// The target server of every running move, by tenant.
    pub async fn move_targets(&self) -> Result<Vec<(Uuid, String)>, CatalogError> {
        let rows = self
            .query(
                "SELECT tenant_id, target FROM tenantd.operations \
                 WHERE kind = 'move' AND state = 'running' AND tenant_id IS NOT NULL AND target IS NOT NULL",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The tenants among `ids` that the catalog has (any status, DELETED included), as (id,
    /// slug, status): the owners named by markers found on servers.
    pub async fn tenants_by_id(&self, ids: &[Uuid]) -> Result<Vec<(Uuid, String, String)>, CatalogError> {
        let rows =
            self.query("SELECT id, slug, status FROM tenantd.tenants WHERE id = ANY($1)", &[&ids]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// A `reconcile.drift` event of a tenant (no lease needed: it reports, it changes nothing).
    pub async fn drift_event(
        &self,
        tenant: Uuid,
        detail: &serde_json::Value,
        actor: &str,
    ) -> Result<(), CatalogError> {
        self.record_event(tenant, EventKind::ReconcileDrift, detail.clone(), actor).await
    }

    /// A READY or SUSPENDED tenant whose database or role is gone: ERROR with the reason,
    /// its event, the lease released — one statement, under the lease.
    pub async fn reconcile_error(&self, tenant: Uuid, owner: &str, reason: &str) -> Result<(), CatalogError> {
        let sql = concat!(
            "WITH failed AS (UPDATE tenantd.tenants SET status = 'ERROR', last_error = $3, \
               lease_owner = NULL, lease_until = NULL WHERE ",
            held!(),
            " AND status IN ('READY', 'SUSPENDED') RETURNING id) \
             INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
             SELECT id, $4, jsonb_build_object('error', $3::text, 'by', 'reconcile'), $2 FROM failed"
        );
        let n = self.execute(sql, &[&tenant, &owner, &reason, &EventKind::Error.as_str()]).await?;
        if n == 1 { Ok(()) } else { Err(CatalogError::LeaseLost) }
    }

    /// The catalog's schema version of a tenant set to what its database's history says,
    /// with a `reconcile.repaired` event — one statement, under the lease.
    pub async fn reconcile_schema_version(
        &self,
        tenant: Uuid,
        owner: &str,
        version: i32,
    ) -> Result<(), CatalogError> {
        let sql = concat!(
            "WITH old AS (SELECT schema_version FROM tenantd.tenants WHERE id = $1), \
             fixed AS (UPDATE tenantd.tenants SET schema_version = $3 WHERE ",
            held!(),
            " RETURNING id) \
             INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
             SELECT id, $4, jsonb_build_object('schema_version', $3::int4, 'was', (SELECT schema_version FROM old)), $2 \
             FROM fixed"
        );
        let n =
            self.execute(sql, &[&tenant, &owner, &version, &EventKind::ReconcileRepaired.as_str()]).await?;
        if n == 1 { Ok(()) } else { Err(CatalogError::LeaseLost) }
    }
}
