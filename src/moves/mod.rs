//! Moving a tenant to another server: an offline copy built for a short pause, resumable
//! from the step recorded in its operation row (`tenantd.operations`).
//!
//! 1. **start**: the tenant's lease, status `MOVING` (lending answers 503 `tenant_moving`;
//!    every daemon closes its pools and handles), the operation row and its event — one
//!    statement (step `started`).
//! 2. **close**: on the source the role loses LOGIN and its sessions are ended (`closed`).
//! 3. **copy** ([`copy`]): the role on the target with the same name, password and SCRAM
//!    verifier (our marker), a staging database locked down like provisioning's, `pg_dump -Fd
//!    -j N` of the source, `pg_restore -j N` as the tenant role, then **verify**: per-table
//!    row counts and checksums, sequences and the schema version compared (`copied`).
//! 4. **promote**: the staging database takes the tenant's database name on the target
//!    (`promoted`).
//! 5. **switch**: the catalog names the target server, in one transaction (`switched`).
//! 6. **source**: the source database is renamed to its kept name (dropped by a daemon after
//!    `moves.keep_source`, or at once with `drop_source`), then `READY` (`done`).
//!
//! A failure before the switch rolls back ([`cleanup`], step `rolling_back`, itself
//! resumable): LOGIN again on the source, everything made on the target dropped (by marker),
//! `READY` on the source with the reason in `last_error` and a `move.failed` event. After the
//! switch the move only goes forward. A process that dies mid-move leaves the lease to
//! expire; a daemon's `moves` task then resumes from the recorded step (the copy starts over:
//! nothing can have written to the source, whose role has no LOGIN).

mod cleanup;
mod copy;
mod drain;
mod error;
mod online;
mod rebalance;
mod verify;

use std::time::Instant;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use self::cleanup::drop_kept_source;
pub use self::drain::{drain, start_drain};
pub use self::error::MoveError;
pub use self::online::check as check_online;
pub use self::rebalance::plan_now as plan_rebalance;
use crate::admin::AdminTarget;
use crate::catalog::CatalogError;
use crate::catalog::operations::Operation;
use crate::catalog::servers::{ServerHealth, ServerRecord, ServerStatus};
use crate::catalog::tenants::{TenantRecord, TenantStatus};
use crate::core::Core;
use crate::leases::keep_lease;
use crate::names::PgIdent;
use crate::steps::{Fault, Phase, Step};
use crate::target::TenantTarget;
use crate::tenant_sql;

/// A move whose tenant lease this process holds.
pub struct MoveJob {
    tenant: TenantRecord,
    owner: String,
    claimed_at: Instant,
    /// The operation.
    pub op: Operation,
}

/// Moves of one process, acting as `actor`.
pub struct Mover<'a> {
    core: &'a Core,
    actor: &'a str,
}

/// Both ends of a move, resolved.
struct Ends {
    source: TenantTarget,
    source_admin: AdminTarget,
    target: TenantTarget,
    target_admin: AdminTarget,
    staging: PgIdent,
}

impl<'a> Mover<'a> {
    /// Moves acting as `actor` (events, lease owners).
    pub fn new(core: &'a Core, actor: &'a str) -> Self {
        Self { core, actor }
    }
}

impl Mover<'_> {
    /// Step 1: claims a READY tenant, checks the target and records the move (MOVING).
    pub async fn start(&self, slug: &str, to: &str, drop_source: bool) -> Result<MoveJob, MoveError> {
        let target = match self.core.catalog.server(to).await {
            Ok(s) => s,
            Err(CatalogError::NotFound(_)) => return Err(MoveError::UnknownServer(to.to_owned())),
            Err(e) => return Err(e.into()),
        };
        check_target(&target)?;
        let claimed_at = Instant::now();
        let owner = crate::leases::claim_owner(self.actor);
        let claimed = self
            .core
            .catalog
            .claim_in_status(slug, &owner, self.core.settings.workers.lease, &[TenantStatus::Ready])
            .await?;
        let Some(tenant) = claimed else {
            let t = self.core.catalog.tenant(slug).await?;
            return Err(MoveError::WrongState(match t.lease_until {
                Some(until) if until > chrono::Utc::now() && t.status == TenantStatus::Ready => {
                    format!("tenant {slug:?} is being worked on; try again shortly")
                }
                _ => format!("tenant {slug:?} is {}; only READY tenants can be moved", t.status),
            }));
        };
        let source = tenant.server.clone().unwrap_or_default();
        let started = async {
            if source == to {
                return Err(MoveError::Invalid(format!("tenant {slug:?} is on server {to} already")));
            }
            Ok(self.core.catalog.start_move(tenant.id, &owner, &source, to, drop_source).await?)
        }
        .await;
        match started {
            Ok(op) => {
                tracing::info!(tenant = %slug, from = %source, to, operation = %op.id, "move started");
                metrics::counter!("tenantd_moves_started_total").increment(1);
                Ok(MoveJob { tenant, owner, claimed_at, op })
            }
            Err(e) => {
                self.release(&tenant, &owner).await;
                Err(e)
            }
        }
    }

    /// Claims a MOVING tenant nobody holds and gives its running move back, to resume.
    pub async fn claim_abandoned(&self, slug: &str) -> Result<Option<MoveJob>, MoveError> {
        let claimed_at = Instant::now();
        let owner = crate::leases::claim_owner(self.actor);
        let lease = self.core.settings.workers.lease;
        let Some(tenant) =
            self.core.catalog.claim_in_status(slug, &owner, lease, &[TenantStatus::Moving]).await?
        else {
            return Ok(None);
        };
        match self.core.catalog.running_move(tenant.id).await? {
            Some(op) => Ok(Some(MoveJob { tenant, owner, claimed_at, op })),
            None => {
                self.release(&tenant, &owner).await;
                Err(MoveError::Invalid(format!("tenant {slug:?} is MOVING without a running move")))
            }
        }
    }

    /// Runs a claimed move to its end under its kept lease; returns the operation as it
    /// ended. A shutdown (`cancel`) gives the tenant back, still MOVING, for any daemon to
    /// resume.
    pub async fn run(&self, job: MoveJob, cancel: &CancellationToken) -> Result<Operation, MoveError> {
        let span = tracing::info_span!("move", tenant = %job.tenant.slug, operation = %job.op.id);
        let lease = self.core.settings.workers.lease;
        async {
            let result = tokio::select! {
                result = self.steps(&job) => result,
                lost = keep_lease(&self.core.catalog, job.tenant.id, &job.owner, lease, job.claimed_at) => Err(lost.into()),
                () = cancel.cancelled() => Err(MoveError::Interrupted),
            };
            match result {
                Ok(()) => {
                    metrics::counter!("tenantd_moves_total", "result" => "moved").increment(1);
                    Ok(self.core.catalog.operation(job.op.id).await?)
                }
                Err(e) => self.failed(&job, e).await,
            }
        }
        .instrument(span)
        .await
    }

    /// What becomes of a move that stopped with `error`.
    async fn failed(&self, job: &MoveJob, error: MoveError) -> Result<Operation, MoveError> {
        match error {
            MoveError::Crashed => Err(MoveError::Crashed),
            MoveError::LeaseLost => {
                metrics::counter!("tenantd_leases_lost_total").increment(1);
                tracing::warn!("lease lost while moving; another process resumes the move");
                Err(MoveError::LeaseLost)
            }
            MoveError::Interrupted => {
                self.release(&job.tenant, &job.owner).await;
                Err(MoveError::Interrupted)
            }
            error => {
                // After the switch there is no way back: the error is recorded, and the move
                // is resumed (forward) once the lease lapses.
                let switched = match self.core.catalog.operation(job.op.id).await {
                    Ok(op) => op.step == "switched",
                    Err(e) => {
                        tracing::error!(%error, catalog = %e, "move failed and the catalog cannot tell where; it will be resumed");
                        self.release(&job.tenant, &job.owner).await;
                        return Err(error);
                    }
                };
                if switched {
                    metrics::counter!("tenantd_moves_total", "result" => "retrying").increment(1);
                    tracing::error!(%error, "move failed after the switch; it will be resumed");
                    self.record_stall(job, &error).await;
                    return Err(error);
                }
                metrics::counter!("tenantd_moves_total", "result" => "failed").increment(1);
                tracing::error!(%error, "move failed before the switch; rolling back to the source");
                if let Err(e) = self.roll_back(job, &error.to_string()).await {
                    tracing::error!(error = %e, "rollback of a move failed; it will be tried again");
                    self.release(&job.tenant, &job.owner).await;
                    return Err(e);
                }
                Ok(self.core.catalog.operation(job.op.id).await?)
            }
        }
    }

    /// Records a failure after the switch on the tenant (event, `last_error`), lease released.
    async fn record_stall(&self, job: &MoveJob, error: &MoveError) {
        let message = format!("move to {}: {error}", job.op.target.as_deref().unwrap_or("?"));
        let detail = json!({ "operation": job.op.id, "error": message });
        let written = self
            .core
            .catalog
            .record_failure(
                job.tenant.id,
                &job.owner,
                &message,
                Some(std::time::Duration::ZERO),
                (crate::catalog::events::EventKind::AttemptFailed, &detail),
            )
            .await;
        if let Err(e) = written {
            tracing::error!(error = %e, "cannot record the failure of a move; its lease will expire");
        }
    }

    pub(crate) async fn release(&self, t: &TenantRecord, owner: &str) {
        match self.core.catalog.release_lease(t.id, owner).await {
            Ok(()) | Err(CatalogError::LeaseLost) => {}
            Err(e) => tracing::warn!(tenant = %t.slug, error = %e, "cannot release a lease; it will expire"),
        }
    }

    pub(crate) fn fault(
        &self,
        slug: &str,
        step: Step,
        phase: Phase,
    ) -> impl Future<Output = Result<(), MoveError>> {
        let fault = self.core.faults.as_ref().and_then(|hook| hook(slug, step, phase));
        async move {
            match fault {
                None => Ok(()),
                Some(Fault::Fail(message)) => {
                    Err(MoveError::Step(step, format!("injected failure: {message}")))
                }
                Some(Fault::Crash) => Err(MoveError::Crashed),
                Some(Fault::Stall(pause)) => {
                    tokio::time::sleep(pause).await;
                    Ok(())
                }
            }
        }
    }

    async fn ends(&self, job: &MoveJob) -> Result<Ends, MoveError> {
        let catalog = &self.core.catalog;
        let keyring = &self.core.keyring;
        let source = catalog.server(&job.op.server).await?;
        let target_name =
            job.op.target.as_deref().ok_or_else(|| MoveError::Invalid("move without a target".into()))?;
        let target = catalog.server(target_name).await?;
        let admin = |s: &ServerRecord| {
            AdminTarget::from_record(s, keyring).map_err(|e| MoveError::Server(e.to_string()))
        };
        Ok(Ends {
            source_admin: admin(&source)?,
            target_admin: admin(&target)?,
            source: TenantTarget::new(&job.tenant, &source, keyring)?,
            target: TenantTarget::new(&job.tenant, &target, keyring)?,
            staging: PgIdent::staging(job.tenant.id),
        })
    }

    /// Every remaining step, from the one recorded.
    async fn steps(&self, job: &MoveJob) -> Result<(), MoveError> {
        let ends = self.ends(job).await?;
        let started = Instant::now();
        let mut step = job.op.step.clone();
        if step == "rolling_back" {
            let error = job.op.error.clone().or_else(|| job.op.detail["error"].as_str().map(str::to_owned));
            return Err(MoveError::Resumed(error.unwrap_or_else(|| "interrupted rollback".into())));
        }
        if step == "started" || step == "closed" {
            let closing = Instant::now();
            self.close(job, &ends).await?;
            self.record(job, "closed", json!({ "close_seconds": closing.elapsed().as_secs_f64() })).await?;
            let figures = copy::copy(self, job, &ends).await?;
            self.record(job, "copied", figures).await?;
            step = "copied".into();
        }
        if step == "copied" {
            let promoting = Instant::now();
            copy::promote(self, job, &ends).await?;
            let seconds = promoting.elapsed().as_secs_f64();
            self.record(job, "promoted", json!({ "promote_seconds": seconds })).await?;
            step = "promoted".into();
        }
        if step == "promoted" {
            self.fault(&job.tenant.slug, Step::MoveSwitch, Phase::Before).await?;
            self.core
                .catalog
                .switch_move(
                    job.tenant.id,
                    &job.owner,
                    job.op.id,
                    &ends.source.server.name,
                    &ends.target.server.name,
                )
                .await?;
            tracing::info!(from = %ends.source.server.name, to = %ends.target.server.name, "catalog switched to the target");
            self.fault(&job.tenant.slug, Step::MoveSwitch, Phase::After).await?;
        }
        cleanup::finish(self, job, &ends, started).await
    }

    /// Step 2: no LOGIN and no session on the source.
    async fn close(&self, job: &MoveJob, ends: &Ends) -> Result<(), MoveError> {
        self.fault(&job.tenant.slug, Step::MoveClose, Phase::Before).await?;
        let admin = self.admin(&ends.source.server, &ends.source_admin).await?;
        let ended = tenant_sql::close_role(&admin, &ends.source.role, &ends.source_admin)
            .await
            .map_err(|e| MoveError::Server(crate::pg::describe(&e)))?;
        tracing::info!(sessions_ended = ended, "logins stopped on the source");
        self.fault(&job.tenant.slug, Step::MoveClose, Phase::After).await
    }

    async fn record(&self, job: &MoveJob, step: &str, detail: serde_json::Value) -> Result<(), MoveError> {
        Ok(self.core.catalog.move_step(job.tenant.id, &job.owner, job.op.id, step, &detail).await?)
    }

    async fn admin(
        &self,
        server: &ServerRecord,
        admin: &AdminTarget,
    ) -> Result<deadpool_postgres::Client, MoveError> {
        self.core.admin_pools.get(server, admin).await.map_err(|e| MoveError::Server(e.to_string()))
    }

    /// Rolls a move back before its switch (resumable: step `rolling_back`), then records
    /// the failure: READY on the source.
    async fn roll_back(&self, job: &MoveJob, error: &str) -> Result<(), MoveError> {
        let detail = json!({ "error": error });
        self.core.catalog.move_step(job.tenant.id, &job.owner, job.op.id, "rolling_back", &detail).await?;
        let ends = self.ends(job).await?;
        let leftovers = cleanup::undo(self, job, &ends).await?;
        let detail = json!({ "leftovers_on_target": leftovers });
        let message = format!("move to {} failed: {error}", ends.target.server.name);
        self.core.catalog.fail_move(job.tenant.id, &job.owner, job.op.id, &message, &detail).await?;
        tracing::warn!(error = %message, "move rolled back: READY on the source");
        Ok(())
    }
}

/// True for a database on the target that this move may drop: one with the tenant's marker,
/// or the staging database with no comment at all (an attempt cut between its CREATE DATABASE
/// and its COMMENT; the staging name is derived from the tenant's id and used by nobody else,
/// as in provisioning).
fn ours_on_target(name: &PgIdent, ownership: &crate::markers::Ownership, staging: &PgIdent) -> bool {
    match ownership {
        crate::markers::Ownership::Ours => true,
        crate::markers::Ownership::Foreign(None) => name == staging,
        _ => false,
    }
}

/// A move's target must be active and healthy.
fn check_target(target: &ServerRecord) -> Result<(), MoveError> {
    if target.status != ServerStatus::Active {
        return Err(MoveError::Invalid(format!(
            "server {} is {}; moves go to active servers",
            target.name, target.status
        )));
    }
    if target.health == ServerHealth::Unhealthy {
        return Err(MoveError::TargetDown(format!(
            "server {} is unhealthy: {}",
            target.name,
            target.health_error.as_deref().unwrap_or("no detail")
        )));
    }
    Ok(())
}
