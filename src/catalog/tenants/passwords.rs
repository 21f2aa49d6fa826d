//! Tenant role passwords in the catalog: reading them for key rotation, re-sealing them, and
//! recording a new one.

use uuid::Uuid;

use crate::catalog::events::EventKind;
use crate::catalog::{Catalog, CatalogError};

impl Catalog {
    /// Every live tenant's sealed role password, for key rotation: (id, slug, sealed).
    pub async fn tenant_passwords(&self) -> Result<Vec<(Uuid, String, String)>, CatalogError> {
        let rows = self
            .query(
                "SELECT id, slug, role_password_sealed FROM tenantd.tenants \
                 WHERE status <> 'DELETED' AND role_password_sealed IS NOT NULL ORDER BY slug",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Replaces a tenant's sealed role password if it is still `old` (compare and swap);
    /// true when replaced.
    pub async fn reseal_tenant_password(&self, id: Uuid, old: &str, new: &str) -> Result<bool, CatalogError> {
        let n = self
            .execute(
                "UPDATE tenantd.tenants SET role_password_sealed = $3 WHERE id = $1 AND role_password_sealed = $2",
                &[&id, &old, &new],
            )
            .await?;
        Ok(n == 1)
    }

    /// Records a tenant role's new sealed password and its event, under the lease.
    pub async fn record_new_password(&self, id: Uuid, owner: &str, sealed: &str) -> Result<(), CatalogError> {
        self.leased_write(
            concat!(
                "WITH changed AS (UPDATE tenantd.tenants SET role_password_sealed = $3, scram_iterations = $5 WHERE ",
                held!(),
                " RETURNING id) INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
                 SELECT id, $4, '{}', $2 FROM changed"
            ),
            &[&id, &owner, &sealed, &EventKind::PasswordRotated.as_str(), &crate::crypto::TENANT_SCRAM_ITERATIONS],
        )
        .await
    }
}
