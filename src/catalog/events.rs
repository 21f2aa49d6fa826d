//! The append-only audit log `tenantd.tenant_events`.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Catalog, CatalogError};

/// One event of a tenant's history.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Sequence number (increasing).
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// What happened, e.g. `step.database.created`, `attempt.failed`, `ready`.
    pub kind: String,
    /// Details.
    pub detail: serde_json::Value,
    /// Who did it: a daemon instance, `cli:<user>`, `api`.
    pub actor: String,
}

impl Catalog {
    /// Appends an event.
    pub async fn record_event(
        &self,
        tenant: Uuid,
        kind: &str,
        detail: serde_json::Value,
        actor: &str,
    ) -> Result<(), CatalogError> {
        self.execute(
            "INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) VALUES ($1, $2, $3, $4)",
            &[&tenant, &kind, &detail, &actor],
        )
        .await?;
        Ok(())
    }

    /// True when an event `kind` was recorded after the latest `since_kind` event.
    pub async fn has_event_since(
        &self,
        tenant: Uuid,
        kind: &str,
        since_kind: &str,
    ) -> Result<bool, CatalogError> {
        Ok(self
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM tenantd.tenant_events WHERE tenant_id = $1 AND kind = $2 AND id > \
                 coalesce((SELECT max(id) FROM tenantd.tenant_events WHERE tenant_id = $1 AND kind = $3), 0))",
                &[&tenant, &kind, &since_kind],
            )
            .await?
            .get(0))
    }

    /// A tenant's events, oldest first, after event `after` (for paging), at most `limit`.
    pub async fn events(&self, tenant: Uuid, after: i64, limit: i64) -> Result<Vec<Event>, CatalogError> {
        let rows = self
            .query(
                "SELECT id, at, kind, detail, actor FROM tenantd.tenant_events \
                 WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
                &[&tenant, &after, &limit],
            )
            .await?;
        Ok(rows.iter().map(event).collect())
    }

    /// A tenant's latest event of one of `kinds`.
    pub async fn latest_event(&self, tenant: Uuid, kinds: &[&str]) -> Result<Option<Event>, CatalogError> {
        let row = self
            .query_opt(
                "SELECT id, at, kind, detail, actor FROM tenantd.tenant_events \
                 WHERE tenant_id = $1 AND kind = ANY($2) ORDER BY id DESC LIMIT 1",
                &[&tenant, &kinds],
            )
            .await?;
        Ok(row.as_ref().map(event))
    }
}

fn event(r: &tokio_postgres::Row) -> Event {
    Event { id: r.get(0), at: r.get(1), kind: r.get(2), detail: r.get(3), actor: r.get(4) }
}
