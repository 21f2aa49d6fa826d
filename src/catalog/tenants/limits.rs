//! Tenant limits in the catalog: overrides, and which tenants' roles do not match yet.

use uuid::Uuid;

use super::{COLUMNS, TenantRecord, from_row};
use crate::catalog::{Catalog, CatalogError};

impl Catalog {
    /// READY and SUSPENDED tenants whose applied limits differ from `defaults` merged with
    /// their overrides (or were never applied), oldest change first, at most `limit`.
    pub async fn tenants_with_stale_limits(
        &self,
        defaults: &serde_json::Value,
        limit: i64,
    ) -> Result<Vec<TenantRecord>, CatalogError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM tenantd.tenants WHERE status IN ('READY', 'SUSPENDED') \
                     AND server IS NOT NULL \
                     AND limits_applied IS DISTINCT FROM ($1::jsonb OPERATOR(pg_catalog.||) limits) \
                     AND (lease_until IS NULL OR lease_until < now()) \
                     ORDER BY updated_at LIMIT $2"
                ),
                &[defaults, &limit],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Replaces a live tenant's limit overrides; the role is brought in line by whoever
    /// applies limits next. `None` when there is no such tenant.
    pub async fn set_tenant_limits(
        &self,
        slug: &str,
        overrides: &serde_json::Value,
    ) -> Result<Option<TenantRecord>, CatalogError> {
        let row = self
            .query_opt(
                &format!(
                    "UPDATE tenantd.tenants SET limits = $2 WHERE slug = $1 AND status <> 'DELETED' \
                     RETURNING {COLUMNS}"
                ),
                &[&slug, overrides],
            )
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Records the limits now on the tenant's role, under the lease.
    pub async fn record_limits_applied(
        &self,
        id: Uuid,
        owner: &str,
        applied: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        self.leased_write(
            concat!("UPDATE tenantd.tenants SET limits_applied = $3 WHERE ", held!()),
            &[&id, &owner, applied],
        )
        .await
    }
}
