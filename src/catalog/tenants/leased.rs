//! The lease-guarded writes on `tenantd.tenants`: what a process holding a tenant's lease
//! may change, each in one statement with its event, each guarded by the one lease
//! predicate (`held!()`), so a process that lost its lease changes nothing
//! ([`CatalogError::LeaseLost`]).

use std::time::Duration;

use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{Placement, TenantStatus, secs};
use crate::catalog::events::EventKind;
use crate::catalog::servers::ServerLoad;
use crate::catalog::{Catalog, CatalogError};

impl Catalog {
    /// Runs a lease-guarded write; zero rows is [`CatalogError::LeaseLost`].
    pub(crate) async fn leased_write(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(), CatalogError> {
        self.leased(sql, params).await
    }

    /// Runs a lease-guarded update; zero rows is [`CatalogError::LeaseLost`].
    async fn leased(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<(), CatalogError> {
        let n = self.execute(sql, params).await?;
        if n == 0 { Err(CatalogError::LeaseLost) } else { Ok(()) }
    }

    /// Extends our lease.
    pub async fn renew_lease(&self, id: Uuid, owner: &str, lease: Duration) -> Result<(), CatalogError> {
        self.leased(
            concat!(
                "UPDATE tenantd.tenants SET lease_until = now() + make_interval(secs => $3) \
             WHERE ",
                held!()
            ),
            &[&id, &owner, &secs(lease)],
        )
        .await
    }

    /// Gives the tenant back (shutdown): another process may claim it at once.
    pub async fn release_lease(&self, id: Uuid, owner: &str) -> Result<(), CatalogError> {
        self.leased(
            concat!("UPDATE tenantd.tenants SET lease_owner = NULL, lease_until = NULL WHERE ", held!()),
            &[&id, &owner],
        )
        .await
    }

    /// Appends a step event, only while we hold the lease (zero rows: lease lost).
    pub async fn leased_event(
        &self,
        id: Uuid,
        owner: &str,
        kind: EventKind,
        detail: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        // Committed without waiting for the WAL flush: a step event is followed by a state
        // write (status, READY, failure) of the same tenant, whose synchronous commit flushes
        // the WAL up to and including this one. Only a crash of the catalog's server inside
        // that window could lose the event (never of the daemon: the commit is PostgreSQL's),
        // and the state it describes is found again by the next attempt's checks.
        self.leased(
            concat!(
                "WITH quick AS (SELECT pg_catalog.set_config('synchronous_commit', 'off', true)) \
             INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) \
             SELECT id, $3, $4, $2 FROM tenantd.tenants, quick WHERE ",
                held!()
            ),
            &[&id, &owner, &kind.as_str(), detail],
        )
        .await
    }

    /// Sets the status and appends its event in one statement, under the lease.
    pub async fn set_status(
        &self,
        id: Uuid,
        owner: &str,
        status: TenantStatus,
        kind: EventKind,
        detail: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        self.leased(
            concat!("WITH moved AS (UPDATE tenantd.tenants SET status = $3 WHERE ", held!(), " RETURNING id) \
             INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) SELECT id, $4, $5, $2 FROM moved"),
            &[&id, &owner, &status.as_str(), &kind.as_str(), detail],
        )
        .await
    }

    /// READY: records the schema version, clears errors and attempts, releases the lease, and
    /// appends the `ready` event, in one statement.
    pub async fn mark_ready(
        &self,
        id: Uuid,
        owner: &str,
        schema_version: i32,
        detail: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        self.leased(
            concat!("WITH ready AS (UPDATE tenantd.tenants SET status = 'READY', schema_version = $3, ready_at = now(), \
               last_error = NULL, attempts = 0, lease_owner = NULL, lease_until = NULL \
               WHERE ", held!(), " RETURNING id) \
             INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) SELECT id, $5, $4, $2 FROM ready"),
            &[&id, &owner, &schema_version, detail, &EventKind::Ready.as_str()],
        )
        .await
    }

    /// A failed attempt: counts it, schedules the next one (or ERROR), releases the lease and
    /// appends its event — one statement, so the failure and its record cannot part.
    pub async fn record_failure(
        &self,
        id: Uuid,
        owner: &str,
        error: &str,
        retry_in: Option<Duration>,
        event: (EventKind, &serde_json::Value),
    ) -> Result<(), CatalogError> {
        let delay = retry_in.map(secs);
        self.leased(
            concat!("WITH failed AS (UPDATE tenantd.tenants SET attempts = attempts + 1, last_error = $3, \
               status = CASE WHEN $4::float8 IS NULL THEN 'ERROR' ELSE status END, \
               next_attempt_at = now() + make_interval(secs => coalesce($4, 0)), \
               lease_owner = NULL, lease_until = NULL \
               WHERE ", held!(), " RETURNING id) \
             INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) SELECT id, $5, $6, $2 FROM failed"),
            &[&id, &owner, &error, &delay, &event.0.as_str(), event.1],
        )
        .await
    }

    /// Waiting without failing (no eligible server): the reason is visible, attempts are not
    /// counted, the lease is released.
    pub async fn record_wait(
        &self,
        id: Uuid,
        owner: &str,
        reason: &str,
        retry_in: Duration,
    ) -> Result<(), CatalogError> {
        self.leased(
            concat!("UPDATE tenantd.tenants SET last_error = $3, next_attempt_at = now() + make_interval(secs => $4), \
             lease_owner = NULL, lease_until = NULL WHERE ", held!()),
            &[&id, &owner, &reason, &secs(retry_in)],
        )
        .await
    }

    /// DELETED: the token stops working, the slug and names are free again, lease released,
    /// event appended — one statement.
    pub async fn mark_deleted(
        &self,
        id: Uuid,
        owner: &str,
        detail: &serde_json::Value,
    ) -> Result<(), CatalogError> {
        self.leased(
            concat!("WITH gone AS (UPDATE tenantd.tenants SET status = 'DELETED', deleted_at = now(), token_hash = NULL, \
               last_error = NULL, lease_owner = NULL, lease_until = NULL \
               WHERE ", held!(), " RETURNING id) \
             INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) SELECT id, $4, $3, $2 FROM gone"),
            &[&id, &owner, detail, &EventKind::Deleted.as_str()],
        )
        .await
    }
}

/// Advisory lock key serialising placement decisions across processes ("tenantd" + 2).
pub(crate) const PLACEMENT_LOCK: i64 = 0x7465_6e61_6e74_6402;

/// The start of a placement's transaction, shared by the cold path and the spare take: the
/// placement lock, then every server's load.
pub(crate) struct Placing {
    lock: tokio_postgres::Statement,
    loads: tokio_postgres::Statement,
}

impl Placing {
    /// Prepares the lock, the loads and the caller's `statement` through the connection's
    /// statement cache (a round trip the first time only).
    pub(crate) async fn prepare(
        client: &deadpool_postgres::Client,
        statement: &str,
    ) -> Result<(Placing, tokio_postgres::Statement), tokio_postgres::Error> {
        let (lock, loads, statement) = tokio::try_join!(
            client.prepare_cached("SELECT pg_catalog.pg_advisory_xact_lock($1)"),
            client.prepare_cached(crate::catalog::servers::LOADS),
            client.prepare_cached(statement),
        )?;
        Ok((Placing { lock, loads }, statement))
    }

    /// Takes the lock, then reads the loads, in one round trip: each prepared statement's
    /// message goes out at its future's first poll, and `future::join` polls the lock first,
    /// so the server reads the loads only once it holds the lock. (`tokio::join!` would not do:
    /// it polls from a rotating branch, and a statement not yet prepared would send its Bind
    /// only once its prepare is answered; two placements could then count the same tenants.)
    pub(crate) async fn loads(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<Vec<ServerLoad>, tokio_postgres::Error> {
        let (locked, rows) =
            futures::future::join(tx.execute(&self.lock, &[&PLACEMENT_LOCK]), tx.query(&self.loads, &[]))
                .await;
        locked?;
        Ok(rows?.iter().map(crate::catalog::servers::load_from_row).collect())
    }
}

/// Persists a placement (status CREATING) and its event, in one statement; no row when the
/// lease is not this owner's.
const PLACE: &str = concat!(
    "WITH placed AS (UPDATE tenantd.tenants SET server = $3, database_name = $4, role_name = $5, \
       role_password_sealed = $6, scram_iterations = $7, status = 'CREATING', last_error = NULL \
       WHERE ",
    held!(),
    " RETURNING id) \
     INSERT INTO tenantd.tenant_events (tenant_id, kind, detail, actor) SELECT id, $9, $8, $2 FROM placed"
);

impl Catalog {
    /// Places a tenant: in one transaction under a catalog-wide advisory lock, reads the load of
    /// every server, lets `choose` decide, and persists the placement (status CREATING).
    /// Two processes placing at once therefore never overfill a server.
    /// Returns `Ok(Err(reason))` when `choose` finds nothing eligible.
    pub async fn place_tenant<F, E>(
        &self,
        id: Uuid,
        owner: &str,
        choose: F,
    ) -> Result<Result<Placement, E>, CatalogError>
    where
        F: FnOnce(&[ServerLoad]) -> Result<Placement, E>,
    {
        let mut client = self.client().await?;
        let (placing, place) = Placing::prepare(&client, PLACE).await?;
        let tx = client.transaction().await?;
        let servers = placing.loads(&tx).await?;
        let placement = match choose(&servers) {
            Ok(p) => p,
            Err(reason) => return Ok(Err(reason)),
        };
        let detail = serde_json::json!({
            "server": placement.server, "database": placement.database_name, "role": placement.role_name,
        });
        let n = tx
            .execute(
                &place,
                &[
                    &id,
                    &owner,
                    &placement.server,
                    &placement.database_name,
                    &placement.role_name,
                    &placement.role_password_sealed,
                    &crate::crypto::TENANT_SCRAM_ITERATIONS,
                    &detail,
                    &EventKind::StepPlaced.as_str(),
                ],
            )
            .await;
        match n {
            Ok(0) => return Err(CatalogError::LeaseLost),
            Ok(_) => {}
            Err(e) if CatalogError::is_unique_violation(&e) => {
                return Err(CatalogError::Conflict(format!(
                    "database or role name {:?} is already used by another tenant",
                    placement.database_name
                )));
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok(Ok(placement))
    }
}
