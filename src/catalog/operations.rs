//! Queries on `tenantd.operations`: moves and drains, their recorded step and outcome, and
//! the source databases moves keep for a while.
//!
//! A move's writes are guarded by the tenant's lease (`held!()`, `$1` the tenant, `$2` the
//! owner): the step, the switch to the target server, the outcome and its event are each one
//! statement, so a process that lost the tenant changes nothing ([`CatalogError::LeaseLost`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::Row;
use uuid::Uuid;

use super::events::EventKind;
use super::servers::ServerLoad;
use super::{Catalog, CatalogError};

/// A move or a drain.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Operation {
    /// Id (`GET /v1/operations/{id}`).
    pub id: Uuid,
    /// `move` or `drain`.
    pub kind: String,
    /// The tenant moved (moves only).
    pub tenant_id: Option<Uuid>,
    /// Its slug (moves only).
    pub slug: Option<String>,
    /// Move: the source server; drain: the server drained.
    pub server: String,
    /// Move: the target server.
    pub target: Option<String>,
    /// The last step done.
    pub step: String,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Figures and notes of the steps.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    /// Drop the source database at once instead of keeping it.
    pub drop_source: bool,
    /// The source database kept on `server` (with tenantd's marker), if any.
    pub kept_database: Option<String>,
    /// When the kept database is dropped.
    pub drop_after: Option<DateTime<Utc>>,
    /// When it was dropped.
    pub dropped_at: Option<DateTime<Utc>>,
    /// Who started it.
    pub actor: String,
    /// Start.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// End.
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "o.id, o.kind, o.tenant_id, (SELECT t.slug FROM tenantd.tenants t WHERE t.id = o.tenant_id), \
    o.server, o.target, o.step, o.state, o.error, o.detail, o.drop_source, o.kept_database, o.drop_after, \
    o.dropped_at, o.actor, o.created_at, o.updated_at, o.finished_at";

fn from_row(r: &Row) -> Operation {
    Operation {
        id: r.get(0),
        kind: r.get(1),
        tenant_id: r.get(2),
        slug: r.get(3),
        server: r.get(4),
        target: r.get(5),
        step: r.get(6),
        state: r.get(7),
        error: r.get(8),
        detail: r.get(9),
        drop_source: r.get(10),
        kept_database: r.get(11),
        drop_after: r.get(12),
        dropped_at: r.get(13),
        actor: r.get(14),
        created_at: r.get(15),
        updated_at: r.get(16),
        finished_at: r.get(17),
    }
}

/// The moves task's poll: MOVING tenants nobody holds (their daemon died mid-move).
pub(crate) const ABANDONED_MOVES: &str = concat!(
    "SELECT slug FROM tenantd.tenants WHERE status = 'MOVING' AND ",
    free!(),
    " ORDER BY updated_at LIMIT 50"
);

/// The tenant's row, held by `$2`, in one CTE named `held` (the lease guard of every move write).
const HELD: &str = concat!("held AS (SELECT id FROM tenantd.tenants WHERE ", held!(), ")");

impl Catalog {
    /// One operation.
    pub async fn operation(&self, id: Uuid) -> Result<Operation, CatalogError> {
        let sql = format!("SELECT {COLUMNS} FROM tenantd.operations o WHERE o.id = $1");
        let row = self.query_opt(&sql, &[&id]).await?;
        row.as_ref().map(from_row).ok_or_else(|| CatalogError::NotFound(format!("no operation {id}")))
    }

    /// The running move of a tenant, if any.
    pub async fn running_move(&self, tenant: Uuid) -> Result<Option<Operation>, CatalogError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM tenantd.operations o WHERE o.tenant_id = $1 AND o.kind = 'move' \
             AND o.state = 'running'"
        );
        Ok(self.query_opt(&sql, &[&tenant]).await?.as_ref().map(from_row))
    }

    /// Starts a move of a READY tenant whose lease `$2` holds: MOVING, the operation row and
    /// the `move.started` event in one statement.
    pub async fn start_move(
        &self,
        tenant: Uuid,
        owner: &str,
        source: &str,
        target: &str,
        drop_source: bool,
    ) -> Result<Operation, CatalogError> {
        let sql = format!(
            "WITH moving AS (UPDATE tenantd.tenants SET status = 'MOVING', last_error = NULL \
               WHERE {} AND status = 'READY' AND server = $3 RETURNING id), \
             op AS (INSERT INTO tenantd.operations (kind, tenant_id, server, target, drop_source, actor) \
               SELECT 'move', id, $3, $4, $5, $2 FROM moving RETURNING *), \
             logged AS (INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
               SELECT tenant_id, $6, jsonb_build_object('operation', id, 'from', server, 'to', target), $2 FROM op) \
             SELECT {} FROM op o",
            held!(),
            COLUMNS
                .replace("tenantd.tenants t WHERE t.id = o.tenant_id", "tenantd.tenants t WHERE t.id = $1")
        );
        let row = self
            .query_opt(
                &sql,
                &[&tenant, &owner, &source, &target, &drop_source, &EventKind::MoveStarted.as_str()],
            )
            .await;
        match row {
            Ok(Some(row)) => Ok(from_row(&row)),
            Ok(None) => Err(CatalogError::LeaseLost),
            Err(CatalogError::Query(e)) if CatalogError::is_unique_violation(&e) => {
                Err(CatalogError::Conflict("the tenant is being moved already".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Records a step of a move (its detail merged into the operation's) with a `move.step`
    /// event, under the tenant's lease.
    pub async fn move_step(
        &self,
        tenant: Uuid,
        owner: &str,
        op: Uuid,
        step: &str,
        detail: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        let sql = format!(
            "WITH {HELD}, \
             o AS (UPDATE tenantd.operations SET step = $4, detail = detail || $5 FROM held \
               WHERE operations.id = $3 AND state = 'running' RETURNING operations.id) \
             INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
             SELECT $1, $6, $5 || jsonb_build_object('step', $4::text, 'operation', $3::uuid), $2 FROM o"
        );
        let n =
            self.execute(&sql, &[&tenant, &owner, &op, &step, detail, &EventKind::MoveStep.as_str()]).await?;
        if n == 1 { Ok(()) } else { Err(CatalogError::LeaseLost) }
    }

    /// The switch: the catalog names the target server, the operation is `switched` and the
    /// event written, in one statement (one transaction).
    pub async fn switch_move(
        &self,
        tenant: Uuid,
        owner: &str,
        op: Uuid,
        source: &str,
        target: &str,
    ) -> Result<(), CatalogError> {
        let sql = concat!(
            "WITH sw AS (UPDATE tenantd.tenants SET server = $5 WHERE ",
            held!(),
            " AND status = 'MOVING' AND server = $4 RETURNING id), \
             o AS (UPDATE tenantd.operations SET step = 'switched' FROM sw \
               WHERE operations.id = $3 AND state = 'running' RETURNING operations.id) \
             INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
             SELECT $1, $6, jsonb_build_object('operation', $3::uuid, 'from', $4::text, 'to', $5::text), $2 FROM o"
        );
        let n = self
            .execute(sql, &[&tenant, &owner, &op, &source, &target, &EventKind::MoveSwitched.as_str()])
            .await?;
        if n == 1 { Ok(()) } else { Err(CatalogError::LeaseLost) }
    }

    /// The end of a move after the switch: READY (lease released), the operation succeeded
    /// with its kept source database, and the event — one statement.
    pub async fn finish_move(
        &self,
        tenant: Uuid,
        owner: &str,
        op: Uuid,
        kept: Option<&str>,
        drop_after: Option<DateTime<Utc>>,
        detail: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        let sql = concat!(
            "WITH ready AS (UPDATE tenantd.tenants SET status = 'READY', last_error = NULL, attempts = 0, \
               lease_owner = NULL, lease_until = NULL WHERE ",
            held!(),
            " AND status = 'MOVING' RETURNING id), \
             o AS (UPDATE tenantd.operations SET step = 'done', state = 'succeeded', finished_at = now(), \
               kept_database = $4, drop_after = $5, detail = detail || $6 FROM ready \
               WHERE operations.id = $3 RETURNING operations.id) \
             INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
             SELECT $1, $7, $6 || jsonb_build_object('operation', $3::uuid), $2 FROM o"
        );
        let n = self
            .execute(
                sql,
                &[&tenant, &owner, &op, &kept, &drop_after, detail, &EventKind::MoveFinished.as_str()],
            )
            .await?;
        if n == 1 { Ok(()) } else { Err(CatalogError::LeaseLost) }
    }

    /// A move that failed before the switch: READY on the source with the reason in
    /// `last_error` (lease released), the operation failed, the event — one statement.
    pub async fn fail_move(
        &self,
        tenant: Uuid,
        owner: &str,
        op: Uuid,
        error: &str,
        detail: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        let sql = concat!(
            "WITH back AS (UPDATE tenantd.tenants SET status = 'READY', last_error = $4, \
               lease_owner = NULL, lease_until = NULL WHERE ",
            held!(),
            " AND status = 'MOVING' \
               AND server = (SELECT server FROM tenantd.operations WHERE id = $3) RETURNING id), \
             o AS (UPDATE tenantd.operations SET state = 'failed', error = $4, finished_at = now(), \
               detail = detail || $5 FROM back WHERE operations.id = $3 RETURNING operations.id) \
             INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
             SELECT $1, $6, $5 || jsonb_build_object('operation', $3::uuid, 'error', $4::text), $2 FROM o"
        );
        let n = self
            .execute(sql, &[&tenant, &owner, &op, &error, detail, &EventKind::MoveFailed.as_str()])
            .await?;
        if n == 1 { Ok(()) } else { Err(CatalogError::LeaseLost) }
    }

    /// Slugs of MOVING tenants nobody holds (their mover died or was stopped): to resume.
    pub async fn abandoned_moves(&self) -> Result<Vec<String>, CatalogError> {
        let rows = self.query(ABANDONED_MOVES, &[]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Takes one kept source database whose time is up, for ten minutes (a lease of its own:
    /// another daemon takes it if this one dies before recording the drop).
    pub async fn claim_kept_source(&self) -> Result<Option<Operation>, CatalogError> {
        let sql = format!(
            "WITH next AS (SELECT id FROM tenantd.operations WHERE kept_database IS NOT NULL \
               AND dropped_at IS NULL AND drop_after <= now() \
               AND EXISTS (SELECT 1 FROM tenantd.servers s WHERE s.name = operations.server) ORDER BY drop_after \
               FOR UPDATE SKIP LOCKED LIMIT 1), \
             taken AS (UPDATE tenantd.operations o SET drop_after = now() + interval '10 minutes' \
               FROM next WHERE o.id = next.id RETURNING o.*) \
             SELECT {COLUMNS} FROM taken o"
        );
        Ok(self.query_opt(&sql, &[]).await?.as_ref().map(from_row))
    }

    /// A kept source database was dropped (event included).
    pub async fn kept_source_dropped(&self, op: &Operation, actor: &str) -> Result<(), CatalogError> {
        self.execute(
            "WITH d AS (UPDATE tenantd.operations SET dropped_at = now() WHERE id = $1 RETURNING tenant_id, server, \
               kept_database) \
             INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
             SELECT tenant_id, $2, jsonb_build_object('operation', $1::uuid, 'server', server, 'database', \
               kept_database), $3 FROM d",
            &[&op.id, &EventKind::MoveSourceDropped.as_str(), &actor],
        )
        .await?;
        Ok(())
    }

    /// Notes why a kept source database could not be dropped (tried again later).
    pub async fn kept_source_failed(&self, op: Uuid, error: &str) -> Result<(), CatalogError> {
        self.execute(
            "UPDATE tenantd.operations SET detail = detail || jsonb_build_object('drop_error', $2::text) \
             WHERE id = $1",
            &[&op, &error],
        )
        .await?;
        Ok(())
    }

    /// Starts a drain operation of `server`.
    pub async fn start_drain(&self, server: &str, actor: &str) -> Result<Operation, CatalogError> {
        let sql = format!(
            "WITH op AS (INSERT INTO tenantd.operations (kind, server, step, actor) \
               VALUES ('drain', $1, 'moving', $2) RETURNING *) SELECT {COLUMNS} FROM op o"
        );
        Ok(from_row(&self.query_one(&sql, &[&server, &actor]).await?))
    }

    /// Ends a drain with its summary.
    pub async fn finish_drain(
        &self,
        op: Uuid,
        succeeded: bool,
        error: Option<&str>,
        detail: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        let state = if succeeded { "succeeded" } else { "failed" };
        self.execute(
            "UPDATE tenantd.operations SET state = $2, step = 'done', error = $3, detail = detail || $4, \
             finished_at = now() WHERE id = $1",
            &[&op, &state, &error, detail],
        )
        .await?;
        Ok(())
    }

    /// The load of every server (placement's view), for choosing move targets.
    pub async fn server_loads(&self) -> Result<Vec<ServerLoad>, CatalogError> {
        let rows = self.query(super::servers::LOADS, &[]).await?;
        Ok(rows.iter().map(super::servers::load_from_row).collect())
    }
}
