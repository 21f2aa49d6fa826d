//! Claiming tenants: taking a tenant's lease with `FOR UPDATE SKIP LOCKED` (workers) or by
//! slug and status (upgrades, lifecycle operations, limits, quotas), always with the one
//! "nobody holds it" predicate.

use std::time::Duration;

use uuid::Uuid;

use super::{COLUMNS, TenantRecord, TenantStatus, from_row, secs};
use crate::catalog::{Catalog, CatalogError};

/// Nobody holds the tenant now.
const FREE: &str = free!();

/// What a claim attempt found.
#[derive(Debug)]
pub enum Claim {
    /// A tenant, now leased to us.
    Claimed {
        /// The tenant.
        tenant: Box<TenantRecord>,
        /// There is another workable tenant (due or not): an idle worker should look.
        more: bool,
    },
    /// Nothing to do now; the earliest scheduled attempt is in this long (if any).
    Idle(Option<Duration>),
}

/// The tenants a worker may take (`$3`: only this one). A restore is driven only by the
/// command that has the dump file, so daemons leave it alone — unless it is being deleted.
const WORKABLE: &str = "status IN ('PENDING', 'CREATING', 'MIGRATING', 'DELETING') \
    AND ($3::uuid IS NULL OR id = $3) \
    AND (restore_source IS NULL OR status = 'DELETING' OR $3::uuid IS NOT NULL)";

/// A worker's poll: the next workable tenant, leased to `$1` for `$2` seconds (`$3`: only
/// this one), and whether there is any other workable tenant, due or not, held or not (the
/// last column): then an idle worker should look, claim it or set its timer for it. It may
/// say yes for nothing, never no for a tenant that was there.
pub(crate) fn claim_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH next AS (SELECT id FROM tenantd.tenants WHERE {WORKABLE} \
                 AND next_attempt_at <= now() AND {FREE} \
               ORDER BY next_attempt_at FOR UPDATE SKIP LOCKED LIMIT 1) \
             UPDATE tenantd.tenants t SET lease_owner = $1, \
               lease_until = now() + make_interval(secs => $2) \
             FROM next WHERE t.id = next.id RETURNING {}, \
               EXISTS (SELECT 1 FROM tenantd.tenants WHERE {WORKABLE} AND id <> next.id)",
            COLUMNS.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ")
        )
    })
}

/// An idle worker's question: seconds until the next workable tenant is due (`$1`: only this
/// one).
pub(crate) fn next_due_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "SELECT extract(epoch FROM min(greatest(next_attempt_at, coalesce(lease_until, next_attempt_at))) \
             - now())::float8 FROM tenantd.tenants WHERE {}",
            WORKABLE.replace("$3", "$1")
        )
    })
}

/// Takes every READY tenant among the slugs `$1` that nobody holds, for `$2`, `$3` seconds;
/// a row locked by another transaction at that moment is skipped, never waited for.
pub(crate) fn claim_ready_many_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH free AS (SELECT id FROM tenantd.tenants WHERE slug = ANY($1) AND status = 'READY' AND {FREE} \
               ORDER BY id FOR UPDATE SKIP LOCKED) \
             UPDATE tenantd.tenants t SET lease_owner = $2, lease_until = now() + make_interval(secs => $3) \
             FROM free WHERE t.id = free.id RETURNING {}",
            COLUMNS.split(", ").map(|c| format!("t.{c}")).collect::<Vec<_>>().join(", ")
        )
    })
}

/// Takes a live tenant by slug (`$1`) in one of the statuses `$4`, for `$2`, `$3` seconds.
pub(crate) fn claim_in_status_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "UPDATE tenantd.tenants SET lease_owner = $2, lease_until = now() + make_interval(secs => $3) \
             WHERE slug = $1 AND status = ANY($4) AND status <> 'DELETED' AND {FREE} RETURNING {COLUMNS}"
        )
    })
}

impl Catalog {
    /// Claims the next tenant that needs provisioning work (optionally only `only`), with
    /// `FOR UPDATE SKIP LOCKED` and a lease of `lease` for `owner`.
    pub async fn claim_tenant(
        &self,
        owner: &str,
        lease: Duration,
        only: Option<Uuid>,
    ) -> Result<Claim, CatalogError> {
        if let Some(row) = self.query_opt(claim_sql(), &[&owner, &secs(lease), &only]).await? {
            let more = row.get(row.len() - 1);
            return Ok(Claim::Claimed { tenant: Box::new(from_row(&row)), more });
        }
        let next: Option<f64> = self.query_one(next_due_sql(), &[&only]).await?.get(0);
        Ok(Claim::Idle(next.map(|s| Duration::from_secs_f64(s.max(0.0)))))
    }

    /// Claims, in one statement, every READY tenant among `slugs` that nobody holds (upgrade
    /// runs claim a few tenants ahead of their work; see [`Catalog::release_leases`]).
    pub async fn claim_ready_many(
        &self,
        slugs: &[&str],
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<TenantRecord>, CatalogError> {
        let rows = self.query(claim_ready_many_sql(), &[&slugs, &owner, &secs(lease)]).await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Gives back leases of `owner` that were claimed and not worked on.
    pub async fn release_leases(&self, ids: &[Uuid], owner: &str) -> Result<u64, CatalogError> {
        self.execute(
            "UPDATE tenantd.tenants SET lease_owner = NULL, lease_until = NULL WHERE id = ANY($1) AND lease_owner = $2",
            &[&ids, &owner],
        )
        .await
    }

    /// Claims a live tenant that is in one of `statuses` and not held by anyone.
    pub async fn claim_in_status(
        &self,
        slug: &str,
        owner: &str,
        lease: Duration,
        statuses: &[TenantStatus],
    ) -> Result<Option<TenantRecord>, CatalogError> {
        let statuses: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
        let row =
            self.query_opt(claim_in_status_sql(), &[&slug, &owner, &lease.as_secs_f64(), &statuses]).await?;
        Ok(row.as_ref().map(from_row))
    }
}
