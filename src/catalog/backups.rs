//! Daily backup runs: which daemon backs up which day, and which tenants are still due.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};

use super::tenants::{COLUMNS, TenantRecord, from_row};
use super::{Catalog, CatalogError};

impl Catalog {
    /// Takes the backups of `day` for `owner`: true when no daemon has it, or its holder's
    /// lease lapsed before it finished (a crash); false when it is done or held.
    pub async fn claim_backup_day(
        &self,
        day: NaiveDate,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, CatalogError> {
        Ok(self
            .query_opt(
                "INSERT INTO tenantd.backup_runs (day, owner, lease_until) \
                 VALUES ($1, $2, now() + make_interval(secs => $3)) \
                 ON CONFLICT (day) DO UPDATE SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until \
                 WHERE backup_runs.finished_at IS NULL AND backup_runs.lease_until < now() \
                 RETURNING day",
                &[&day, &owner, &lease.as_secs_f64()],
            )
            .await?
            .is_some())
    }

    /// Extends our hold on `day`; [`CatalogError::LeaseLost`] when another daemon took it.
    pub async fn renew_backup_day(
        &self,
        day: NaiveDate,
        owner: &str,
        lease: Duration,
    ) -> Result<(), CatalogError> {
        let n = self
            .execute(
                "UPDATE tenantd.backup_runs SET lease_until = now() + make_interval(secs => $3) \
                 WHERE day = $1 AND owner = $2 AND finished_at IS NULL",
                &[&day, &owner, &lease.as_secs_f64()],
            )
            .await?;
        if n == 1 { Ok(()) } else { Err(CatalogError::LeaseLost) }
    }

    /// Marks `day` done with its counts (added to those of an earlier, interrupted holder);
    /// [`CatalogError::LeaseLost`] when another daemon took the day over meanwhile.
    pub async fn finish_backup_day(
        &self,
        day: NaiveDate,
        owner: &str,
        succeeded: i32,
        failed: i32,
    ) -> Result<(), CatalogError> {
        let n = self
            .execute(
                "UPDATE tenantd.backup_runs SET finished_at = now(), succeeded = succeeded + $3, \
                 failed = failed + $4 WHERE day = $1 AND owner = $2 AND finished_at IS NULL",
                &[&day, &owner, &succeeded, &failed],
            )
            .await?;
        if n == 1 { Ok(()) } else { Err(CatalogError::LeaseLost) }
    }

    /// READY and SUSPENDED tenants with no successful backup since `since`, by slug.
    pub async fn tenants_due_for_backup(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<TenantRecord>, CatalogError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM tenantd.tenants t WHERE status IN ('READY', 'SUSPENDED') \
                     AND NOT EXISTS (SELECT 1 FROM tenantd.tenant_events e WHERE e.tenant_id = t.id \
                       AND e.kind = $2 AND e.at >= $1) \
                     ORDER BY slug"
                ),
                &[&since, &super::events::EventKind::BackupCreated.as_str()],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }
}
