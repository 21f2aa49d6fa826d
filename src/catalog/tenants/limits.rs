//! Tenant limits and sizes in the catalog: overrides, which tenants' roles do not match yet,
//! measured sizes and the over-quota flag.

use uuid::Uuid;

use super::{COLUMNS, TenantRecord, from_row};
use crate::catalog::events::EventKind;
use crate::catalog::{Catalog, CatalogError};

/// Nobody holds the tenant now.
const FREE: &str = free!();

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
                     AND {FREE} \
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

    /// Records the limits now on the tenant's role and appends the step's event, in one
    /// statement under the lease (provisioning's role step: one catalog commit, not two).
    pub async fn record_role_step(
        &self,
        id: Uuid,
        owner: &str,
        applied: &serde_json::Value,
        kind: EventKind,
        detail: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        self.leased_write(
            concat!(
                "WITH applied AS (UPDATE tenantd.tenants SET limits_applied = $3 WHERE ",
                held!(),
                " RETURNING id) \
                 INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) SELECT id, $4, $5, $2 FROM applied"
            ),
            &[&id, &owner, applied, &kind.as_str(), detail],
        )
        .await
    }

    /// READY and SUSPENDED tenants that are placed: the ones whose size counts.
    pub async fn tenants_with_databases(&self) -> Result<Vec<TenantRecord>, CatalogError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM tenantd.tenants WHERE status IN ('READY', 'SUSPENDED') \
                     AND server IS NOT NULL ORDER BY server, slug"
                ),
                &[],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Records measured database sizes.
    pub async fn record_sizes(&self, sizes: &[(Uuid, i64)]) -> Result<(), CatalogError> {
        let (ids, bytes): (Vec<Uuid>, Vec<i64>) = sizes.iter().copied().unzip();
        self.execute(
            "UPDATE tenantd.tenants t SET database_bytes = s.bytes \
             FROM ROWS FROM (pg_catalog.unnest($1::uuid[]), pg_catalog.unnest($2::int8[])) AS s(id, bytes) \
             WHERE t.id = s.id",
            &[&ids, &bytes],
        )
        .await?;
        Ok(())
    }

    /// Flips a tenant's `over_quota` to `over` and appends `kind` in one statement; false when
    /// it already was (another daemon flipped it first).
    pub async fn flip_over_quota(
        &self,
        id: Uuid,
        over: bool,
        kind: EventKind,
        detail: &serde_json::Value,
        actor: &str,
    ) -> Result<bool, CatalogError> {
        let row = self
            .query_opt(
                "WITH flipped AS (UPDATE tenantd.tenants SET over_quota = $2 WHERE id = $1 AND over_quota <> $2 \
                   RETURNING id) \
                 INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
                 SELECT id, $3, $4, $5 FROM flipped RETURNING tenant_id",
                &[&id, &over, &kind.as_str(), detail, &actor],
            )
            .await?;
        Ok(row.is_some())
    }
}
