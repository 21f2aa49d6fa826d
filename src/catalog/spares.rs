//! Queries on `tenantd.spares` (warm spares) and `tenantd.spare_refills` (one refiller per
//! server): the refill's bookkeeping, and the take — one transaction that places a tenant and
//! claims a ready spare at this build's version with `FOR UPDATE SKIP LOCKED`, so that no
//! spare is ever handed out twice, whatever the number of daemons.

use std::time::Duration;

use tokio_postgres::Row;
use uuid::Uuid;

use super::events::EventKind;
use super::servers::ServerLoad;
use super::tenants::{Placement, Placing, secs};
use super::{Catalog, CatalogError};

/// State of a spare (stored as text with a CHECK constraint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpareState {
    /// Being made by the holder of its server's refill lease.
    Creating,
    /// Fully provisioned; may be taken.
    Ready,
    /// Claimed by a tenant whose provisioning finishes the take.
    Taken,
}

impl SpareState {
    /// The catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Ready => "ready",
            Self::Taken => "taken",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "ready" => Self::Ready,
            "taken" => Self::Taken,
            _ => Self::Creating,
        }
    }
}

/// A spare row.
#[derive(Debug, Clone)]
pub struct SpareRecord {
    /// Id (its names and marker derive from it).
    pub id: Uuid,
    /// Server it lives on.
    pub server: String,
    /// Its database's name.
    pub database_name: String,
    /// Its role's name.
    pub role_name: String,
    /// State.
    pub state: SpareState,
    /// Tenant migrations version it is at.
    pub schema_version: i32,
    /// The tenant taking it.
    pub tenant_id: Option<Uuid>,
}

const COLUMNS: &str = "id, server, database_name, role_name, state, schema_version, tenant_id";

fn from_row(r: &Row) -> SpareRecord {
    SpareRecord {
        id: r.get(0),
        server: r.get(1),
        database_name: r.get(2),
        role_name: r.get(3),
        state: SpareState::parse(r.get(4)),
        schema_version: r.get(5),
        tenant_id: r.get(6),
    }
}

/// Spares of one server, by state (for refill decisions, `server list` and the gauge).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpareCounts {
    /// Server.
    pub server: String,
    /// Ready at exactly `version` (may be handed out by this build).
    pub usable: i64,
    /// Every spare row of the server.
    pub total: i64,
}

impl Catalog {
    /// Takes (or renews) the refill lease of `server` for `owner`; false when another
    /// process holds it.
    pub async fn claim_refill(
        &self,
        server: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, CatalogError> {
        let n = self
            .execute(
                "INSERT INTO tenantd.spare_refills AS r (server, lease_owner, lease_until) \
                 VALUES ($1, $2, now() + make_interval(secs => $3)) \
                 ON CONFLICT (server) DO UPDATE SET lease_owner = $2, lease_until = excluded.lease_until \
                 WHERE r.lease_owner = $2 OR r.lease_until < now()",
                &[&server, &owner, &secs(lease)],
            )
            .await;
        match n {
            Ok(n) => Ok(n == 1),
            // The server was removed meanwhile.
            Err(CatalogError::Query(e))
                if e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Gives a refill lease back.
    pub async fn release_refill(&self, server: &str, owner: &str) -> Result<(), CatalogError> {
        self.execute(
            "DELETE FROM tenantd.spare_refills WHERE server = $1 AND lease_owner = $2",
            &[&server, &owner],
        )
        .await?;
        Ok(())
    }

    /// Counts of spares per server that has any; `usable` counts ready spares at `version`.
    pub async fn spare_counts(&self, version: i32) -> Result<Vec<SpareCounts>, CatalogError> {
        let rows = self
            .query(
                "SELECT server, count(*) FILTER (WHERE state = 'ready' AND schema_version = $1), count(*) \
                 FROM tenantd.spares GROUP BY server ORDER BY server",
                &[&version],
            )
            .await?;
        Ok(rows.iter().map(|r| SpareCounts { server: r.get(0), usable: r.get(1), total: r.get(2) }).collect())
    }

    /// Every spare of a server.
    pub async fn spares_of(&self, server: &str) -> Result<Vec<SpareRecord>, CatalogError> {
        let rows = self
            .query(
                &format!("SELECT {COLUMNS} FROM tenantd.spares WHERE server = $1 ORDER BY created_at"),
                &[&server],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// Records a spare about to be made (state `creating`), before any DDL.
    pub async fn insert_spare(&self, id: Uuid, server: &str, name: &str) -> Result<(), CatalogError> {
        self.execute(
            "INSERT INTO tenantd.spares (id, server, database_name, role_name) VALUES ($1, $2, $3, $3)",
            &[&id, &server, &name],
        )
        .await?;
        Ok(())
    }

    /// A spare is fully made at `version`; false when its row is gone (discarded meanwhile).
    pub async fn spare_ready(&self, id: Uuid, version: i32) -> Result<bool, CatalogError> {
        let n = self
            .execute(
                "UPDATE tenantd.spares SET state = 'ready', schema_version = $2, ready_at = now() \
                 WHERE id = $1 AND state = 'creating'",
                &[&id, &version],
            )
            .await?;
        Ok(n == 1)
    }

    /// Takes a spare out of circulation before it is dropped (state `creating` again, no
    /// tenant): a `ready` one only if no take claimed it meanwhile, a `taken` one only if its
    /// tenant's provisioning is over (deleted, failed, or made another way). False when it is
    /// no longer the refill's to drop.
    pub async fn retire_spare(&self, id: Uuid, from: SpareState) -> Result<bool, CatalogError> {
        let n = self
            .execute(
                "UPDATE tenantd.spares s SET state = 'creating', tenant_id = NULL, taken_at = NULL \
                 WHERE s.id = $1 AND s.state = $2 AND NOT EXISTS (SELECT FROM tenantd.tenants t \
                   WHERE t.id = s.tenant_id AND t.status IN ('PENDING', 'CREATING'))",
                &[&id, &from.as_str()],
            )
            .await?;
        Ok(n == 1)
    }

    /// Forgets a spare whose database and role are dropped. A taken spare is left to its
    /// tenant unless `taken_too`.
    pub async fn delete_spare(&self, id: Uuid, taken_too: bool) -> Result<bool, CatalogError> {
        let n = self
            .execute(
                "DELETE FROM tenantd.spares WHERE id = $1 AND ($2 OR state <> 'taken')",
                &[&id, &taken_too],
            )
            .await?;
        Ok(n == 1)
    }

    /// The spare a tenant's take claimed, if its take is not finished.
    pub async fn spare_taken_by(&self, tenant: Uuid) -> Result<Option<SpareRecord>, CatalogError> {
        let row = self
            .query_opt(&format!("SELECT {COLUMNS} FROM tenantd.spares WHERE tenant_id = $1"), &[&tenant])
            .await?;
        Ok(row.as_ref().map(from_row))
    }

    /// Due provisioning work waiting for a worker (the refill yields to it).
    pub async fn due_work(&self) -> Result<i64, CatalogError> {
        Ok(self
            .query_one(
                "SELECT count(*) FROM tenantd.tenants WHERE status IN ('PENDING', 'CREATING', 'MIGRATING') \
                 AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())",
                &[],
            )
            .await?
            .get(0))
    }

    /// The take, in one transaction under the placement lock: reads every server's load, lets
    /// `choose` decide the server (placement decides, not the spares), claims the oldest ready
    /// spare there at exactly `version` with `FOR UPDATE SKIP LOCKED`, and persists the
    /// placement (status CREATING, the tenant's own names) with the spare marked `taken` by
    /// this tenant and a `spare.taken` event. `None` (nothing written) when `choose` finds no
    /// server or the chosen server has no usable spare: the cold path follows.
    pub async fn take_spare<F>(
        &self,
        id: Uuid,
        owner: &str,
        version: i32,
        choose: F,
    ) -> Result<Option<(Placement, SpareRecord)>, CatalogError>
    where
        F: FnOnce(&[ServerLoad]) -> Option<Placement>,
    {
        static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = SQL.get_or_init(|| {
            let returned = COLUMNS.split(", ").map(|c| format!("spare.{c}")).collect::<Vec<_>>().join(", ");
            format!(
                "WITH spare AS (UPDATE tenantd.spares SET state = 'taken', tenant_id = $1, taken_at = now() WHERE id = \
                   (SELECT id FROM tenantd.spares WHERE server = $3 AND state = 'ready' AND schema_version = $7 \
                    ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING {COLUMNS}), \
                 placed AS (UPDATE tenantd.tenants SET server = $3, database_name = $4, role_name = $5, \
                   role_password_sealed = $6, scram_iterations = $9, status = 'CREATING', last_error = NULL \
                   WHERE {} AND EXISTS (SELECT FROM spare) RETURNING id), \
                 logged AS (INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
                   SELECT placed.id, $8, jsonb_build_object('server', $3::text, 'database', $4::text, \
                     'role', $5::text, 'spare', spare.id, 'spare_database', spare.database_name), $2 \
                   FROM placed, spare) \
                 SELECT {returned}, (SELECT count(*) FROM placed) FROM spare",
                held!()
            )
        });
        let mut client = self.client().await?;
        let (placing, take) = Placing::prepare(&client, sql).await?;
        let tx = client.transaction().await?;
        let servers = placing.loads(&tx).await?;
        let Some(placement) = choose(&servers) else { return Ok(None) };
        let row = tx
            .query_opt(
                &take,
                &[
                    &id,
                    &owner,
                    &placement.server,
                    &placement.database_name,
                    &placement.role_name,
                    &placement.role_password_sealed,
                    &version,
                    &EventKind::SpareTaken.as_str(),
                    &crate::crypto::TENANT_SCRAM_ITERATIONS,
                ],
            )
            .await;
        let spare = match row {
            // No usable spare there: nothing written, the cold path follows.
            Ok(None) => return Ok(None),
            Ok(Some(row)) if row.get::<_, i64>(7) == 0 => return Err(CatalogError::LeaseLost),
            Ok(Some(row)) => from_row(&row),
            // The names are taken by another tenant: the cold path reports it.
            Err(e) if CatalogError::is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        tx.commit().await?;
        Ok(Some((placement, spare)))
    }

    /// READY from a spare: the tenant's READY (as [`Catalog::mark_ready`]) with the limits
    /// applied to its role, and the spare's row gone, in one statement.
    pub async fn mark_ready_from_spare(
        &self,
        id: Uuid,
        owner: &str,
        schema_version: i32,
        limits_applied: &serde_json::Value,
        detail: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        self.leased_write(
            concat!(
                "WITH ready AS (UPDATE tenantd.tenants SET status = 'READY', schema_version = $3, ready_at = now(), \
                   last_error = NULL, attempts = 0, lease_owner = NULL, lease_until = NULL, limits_applied = $6 \
                   WHERE ",
                held!(),
                " RETURNING id), \
                 gone AS (DELETE FROM tenantd.spares s USING ready WHERE s.tenant_id = ready.id) \
                 INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) SELECT id, $5, $4, $2 FROM ready"
            ),
            &[&id, &owner, &schema_version, detail, &EventKind::Ready.as_str(), limits_applied],
        )
        .await
    }
}

impl Catalog {
    /// Gives a taken spare back without its tenant: `ready` again when it is intact (the
    /// tenant's names were blocked), else `creating`, so that the refill discards whatever is
    /// left of it. The tenant goes on by the cold path.
    pub async fn return_spare(&self, tenant: Uuid, intact: bool) -> Result<(), CatalogError> {
        let state = if intact { SpareState::Ready } else { SpareState::Creating };
        self.execute(
            "UPDATE tenantd.spares SET state = $2, tenant_id = NULL, taken_at = NULL WHERE tenant_id = $1",
            &[&tenant, &state.as_str()],
        )
        .await?;
        Ok(())
    }
}
