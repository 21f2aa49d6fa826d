//! Warm spares: databases fully provisioned ahead of need, so that a new tenant is READY
//! after a catalog transaction and one DDL message (the take, in `provisioner::spare`).
//!
//! A spare is a role and a database named `tenantd_spare_<id>` (derived from its id, used by
//! nobody else), created closed, locked down, migrated to this build's tenant migrations as
//! its own role, both carrying the marker `tenantd:spare:<id>` (no tenant's marker matches
//! it). Its password lives only in the memory of the process making it: the take gives the
//! role the tenant's own password. Spares are rows of `tenantd.spares`, never tenants.
//!
//! The refill of one server is done by the holder of its refill lease (one process at a time,
//! any daemon), in this order:
//! 1. **discard** what must not be handed out: spares left `creating` by a process that died
//!    (the lease holder made none of them), ready spares at an older tenant migrations
//!    version (a new build: discarded, then refilled at the new version), spares beyond
//!    `spares.per_server` or the server's `max_tenants` (spares count against it), and every
//!    spare of a server that is not `active` (draining servers lose their spares).
//! 2. **fill**: make spares one at a time up to the target, yielding as soon as provisioning
//!    work is due (cold provisioning is never starved by the refill).
//!
//! Making one spare: row (`creating`) → role with marker and limits (one transaction) →
//! database (closed) with its marker, open to the admin only → migrations on the admin's
//! session acting as the spare's role → lockdown (the spare's role may connect) → row `ready`.
//! A crash anywhere leaves a `creating` row that the next holder discards: spares are
//! cheap to remake, so nothing is resumed.

use uuid::Uuid;

use crate::admin::{AdminError, AdminTarget};
use crate::catalog::CatalogError;
use crate::catalog::servers::{ServerHealth, ServerRecord, ServerStatus};
use crate::catalog::spares::{SpareRecord, SpareState};
use crate::core::Core;
use crate::limits::TenantLimits;
use crate::markers::{self, Ownership};
use crate::names::PgIdent;
use crate::tenant_sql;

/// Why a refill could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum SpareError {
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The server's admin connection could not be had.
    #[error("server {server}: {source}")]
    Admin {
        /// Server.
        server: String,
        /// Cause.
        source: AdminError,
    },
    /// DDL or a query on the server failed.
    #[error("server {server}: {message}")]
    Server {
        /// Server.
        server: String,
        /// What failed.
        message: String,
    },
    /// Something under a spare's name is not tenantd's spare: never dropped or altered.
    #[error(
        "server {server}: {what} {name:?} does not carry spare {spare}'s marker (comment {comment:?}); left alone"
    )]
    Foreign {
        /// Server.
        server: String,
        /// `database` or `role`.
        what: &'static str,
        /// Its name.
        name: String,
        /// Spare id.
        spare: Uuid,
        /// Its comment.
        comment: Option<String>,
    },
}

/// Why a spare was discarded (label of `tenantd_spares_discarded_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Discard {
    Abandoned,
    OldVersion,
    Excess,
    ServerClosed,
}

impl Discard {
    fn as_str(self) -> &'static str {
        match self {
            Discard::Abandoned => "abandoned",
            Discard::OldVersion => "old_version",
            Discard::Excess => "excess",
            Discard::ServerClosed => "server_not_active",
        }
    }
}

/// How many spares a server should hold: `spares.per_server` on an active server, within
/// its `max_tenants` (tenants count first).
pub fn target_for(core: &Core, server: &ServerRecord) -> usize {
    if server.status != ServerStatus::Active {
        return 0;
    }
    let wanted = core.settings.spares.per_server;
    match server.max_tenants {
        Some(max) => wanted.min(usize::try_from(i64::from(max) - server.tenants).unwrap_or(0)),
        None => wanted,
    }
}

/// One refill round over every server (the daemon's task; `bench` too). Each server's
/// failure is logged and counted, and does not stop the others; the first is returned.
pub async fn refill_all(core: &Core, owner: &str) -> Result<(), SpareError> {
    let version = core.migrations.latest_version();
    let counts = core.catalog.spare_counts(version).await?;
    if core.settings.spares.per_server == 0 && counts.is_empty() {
        // Off, and nothing left to drop: no further catalog reads.
        return Ok(());
    }
    let servers = core.catalog.servers().await?;
    let mut first = None;
    for server in &servers {
        let held = counts.iter().find(|c| c.server == server.name);
        metrics::gauge!("tenantd_spares", "server" => server.name.clone())
            .set(held.map_or(0, |c| c.usable) as f64);
        let target = target_for(core, server);
        if target == 0 && held.is_none() {
            continue;
        }
        if held.is_some_and(|c| c.usable == c.total && c.total == target as i64) {
            continue;
        }
        if let Err(e) = refill_server(core, server, owner, target).await {
            metrics::counter!("tenantd_spare_failures_total", "server" => server.name.clone()).increment(1);
            tracing::warn!(server = %server.name, error = %e, "spare refill failed; trying again next round");
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Refills one server to `target` spares, if this process gets its refill lease.
pub async fn refill_server(
    core: &Core,
    server: &ServerRecord,
    owner: &str,
    target: usize,
) -> Result<(), SpareError> {
    let lease = core.settings.workers.lease;
    if !core.catalog.claim_refill(&server.name, owner, lease).await? {
        return Ok(());
    }
    let result = refill_leased(core, server, owner, target).await;
    let released = core.catalog.release_refill(&server.name, owner).await;
    result?;
    Ok(released?)
}

async fn refill_leased(
    core: &Core,
    server: &ServerRecord,
    owner: &str,
    target: usize,
) -> Result<(), SpareError> {
    if server.health == ServerHealth::Unhealthy {
        return Ok(());
    }
    let version = core.migrations.latest_version();
    let admin = Admin::open(core, server).await?;
    let mut kept = 0;
    for spare in core.catalog.spares_of(&server.name).await? {
        let reason = match spare.state {
            // A take under way is its tenant's; one whose tenant's provisioning is over (it
            // was deleted or failed before finishing the take) is dropped, if anything is left.
            SpareState::Taken => Discard::Abandoned,
            _ if target == 0 => Discard::ServerClosed,
            SpareState::Creating => Discard::Abandoned,
            SpareState::Ready if spare.schema_version < version => Discard::OldVersion,
            SpareState::Ready if kept >= target => Discard::Excess,
            // Ours, or a newer build's (left to it).
            SpareState::Ready => {
                kept += 1;
                continue;
            }
        };
        // Out of circulation first, so that no take can claim what is being dropped.
        if spare.state != SpareState::Creating && !core.catalog.retire_spare(spare.id, spare.state).await? {
            continue;
        }
        admin.discard(core, &spare, reason).await?;
    }
    while kept < target {
        let due = core.catalog.due_work().await?;
        if due > 0 {
            tracing::debug!(server = %server.name, due, "spare refill yields to provisioning work");
            return Ok(());
        }
        if !core.catalog.claim_refill(&server.name, owner, core.settings.workers.lease).await? {
            return Ok(());
        }
        admin.make(core).await?;
        kept += 1;
    }
    Ok(())
}

/// Drops every spare of `server` that no tenant is taking (`server remove`). A server that
/// cannot be reached does not block its removal: its spares are forgotten, loudly (their
/// databases and roles keep the marker `tenantd:spare:<id>` for whoever cleans that server).
pub async fn drop_all(core: &Core, server: &str) -> Result<usize, SpareError> {
    let spares: Vec<SpareRecord> =
        core.catalog.spares_of(server).await?.into_iter().filter(|s| s.state != SpareState::Taken).collect();
    if spares.is_empty() {
        return Ok(0);
    }
    let record = core.catalog.server(server).await?;
    let admin = match Admin::open(core, &record).await {
        Ok(admin) => admin,
        Err(error @ SpareError::Admin { .. }) => {
            for spare in &spares {
                core.catalog.delete_spare(spare.id, false).await?;
                metrics::counter!("tenantd_spares_discarded_total", "reason" => "forgotten").increment(1);
                tracing::warn!(server, spare = %spare.id, database = %spare.database_name, %error,
                    "server unreachable: warm spare forgotten without being dropped (it keeps its marker)");
            }
            return Ok(spares.len());
        }
        Err(error) => return Err(error),
    };
    let mut dropped = 0;
    for spare in &spares {
        if spare.state == SpareState::Ready && !core.catalog.retire_spare(spare.id, spare.state).await? {
            continue;
        }
        admin.discard(core, spare, Discard::ServerClosed).await?;
        dropped += 1;
    }
    Ok(dropped)
}

/// A server's admin: pooled connection and target.
struct Admin {
    server: ServerRecord,
    target: AdminTarget,
    client: deadpool_postgres::Client,
}

impl Admin {
    async fn open(core: &Core, server: &ServerRecord) -> Result<Admin, SpareError> {
        let admin_err = |source| SpareError::Admin { server: server.name.clone(), source };
        let target = AdminTarget::from_record(server, &core.keyring).map_err(admin_err)?;
        let client = core.admin_pools.get(server, &target).await.map_err(admin_err)?;
        Ok(Admin { server: server.clone(), target, client })
    }

    fn failed(&self, what: &str) -> impl Fn(tokio_postgres::Error) -> SpareError + '_ {
        let what = what.to_owned();
        move |e| SpareError::Server {
            server: self.server.name.clone(),
            message: format!("{what}: {}", crate::pg::describe(&e)),
        }
    }

    /// Makes one spare at `version`.
    async fn make(&self, core: &Core) -> Result<(), SpareError> {
        let started = std::time::Instant::now();
        let id = Uuid::new_v4();
        let name = PgIdent::spare(id);
        core.catalog.insert_spare(id, &self.server.name, name.as_str()).await?;
        let password = crate::crypto::random_secret(24);
        let verifier =
            crate::crypto::tenant_scram_verifier(&password, id, crate::crypto::TENANT_SCRAM_ITERATIONS);
        let limits = TenantLimits::defaults(&core.settings.limits);
        let role = format!(
            "{}; {}; {}",
            tenant_sql::create_role(&name, &verifier),
            tenant_sql::comment_on_spare_role(&name, id),
            tenant_sql::role_limits(&name, &limits)
        );
        self.client.batch_execute(&role).await.map_err(self.failed("create the spare's role"))?;
        // Role and database are this run's own, so the migrations run as a fresh tenant's first
        // run does (`tenant_sql::as_fresh_tenant`): on the admin's session inside the database,
        // acting as the spare's role, before that role may connect at all.
        let (create, then) = (
            tenant_sql::create_tenant_database(&name),
            format!(
                "{}; {}",
                tenant_sql::comment_on_spare_database(&name, id),
                tenant_sql::open_to_owner(&name)
            ),
        );
        let (created, marked) =
            futures::future::join(self.client.batch_execute(&create), self.client.batch_execute(&then)).await;
        created.map_err(self.failed("create the spare's database"))?;
        marked.map_err(self.failed("mark the spare's database"))?;
        let self_grant: String = self
            .client
            .query_one(&format!("SELECT {}", tenant_sql::SELF_GRANT), &[])
            .await
            .map_err(self.failed("read createrole_self_grant"))?
            .get(0);
        let mut inside = self
            .target
            .connect(Some(name.as_str()))
            .await
            .map_err(|source| SpareError::Admin { server: self.server.name.clone(), source })?;
        let around = tenant_sql::as_fresh_tenant(&name, &name, limits.statement_timeout_ms, &self_grant);
        let (at, _) =
            core.migrations.apply_gated(&mut inside, &around, std::future::ready(true)).await.map_err(
                |e| SpareError::Server {
                    server: self.server.name.clone(),
                    message: format!("migrate the spare: {e}"),
                },
            )?;
        drop(inside);
        self.client
            .batch_execute(&tenant_sql::lock_down_database(&name, &name))
            .await
            .map_err(self.failed("lock the spare down"))?;
        if !core.catalog.spare_ready(id, at).await? {
            // Discarded meanwhile (this process's lease ran out): nobody else knows it now.
            let gone = SpareRecord {
                id,
                server: self.server.name.clone(),
                database_name: name.to_string(),
                role_name: name.to_string(),
                state: SpareState::Creating,
                schema_version: at,
                tenant_id: None,
            };
            return self.discard(core, &gone, Discard::Abandoned).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        metrics::counter!("tenantd_spares_created_total").increment(1);
        metrics::histogram!("tenantd_spare_create_seconds").record(seconds);
        tracing::info!(server = %self.server.name, spare = %id, version = at, seconds, "warm spare ready");
        Ok(())
    }

    /// Drops a spare's database and role (only with its marker, or without any comment: its
    /// name is derived from its id and a crash may come before the marker), then its row.
    async fn discard(&self, core: &Core, spare: &SpareRecord, why: Discard) -> Result<(), SpareError> {
        let name = |text: &str| {
            PgIdent::from_catalog(text).map_err(|e| SpareError::Server {
                server: self.server.name.clone(),
                message: format!("spare {}: {e}", spare.id),
            })
        };
        let (db, role) = (name(&spare.database_name)?, name(&spare.role_name)?);
        let (db_owner, role_owner) = markers::spare(&self.client, spare.id, &db, &role)
            .await
            .map_err(self.failed("look up a spare"))?;
        for (what, object, owner) in [("database", &db, &db_owner), ("role", &role, &role_owner)] {
            if let Ownership::Foreign(Some(comment)) = owner {
                return Err(SpareError::Foreign {
                    server: self.server.name.clone(),
                    what,
                    name: object.to_string(),
                    spare: spare.id,
                    comment: Some(comment.clone()),
                });
            }
        }
        if db_owner != Ownership::Absent {
            tenant_sql::drop_database_now(&self.client, &db)
                .await
                .map_err(self.failed("drop a spare's database"))?;
        }
        if role_owner != Ownership::Absent {
            self.client
                .batch_execute(&tenant_sql::drop_role(&role))
                .await
                .map_err(self.failed("drop a spare's role"))?;
        }
        core.catalog.delete_spare(spare.id, false).await?;
        metrics::counter!("tenantd_spares_discarded_total", "reason" => why.as_str()).increment(1);
        tracing::info!(server = %self.server.name, spare = %spare.id, reason = why.as_str(), "warm spare discarded");
        Ok(())
    }
}
