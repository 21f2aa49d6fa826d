//! Provisioning one claimed tenant: a resumable sequence of idempotent steps.
//!
//! 1. **place**: choose a server; persist server, database and role names and the sealed
//!    role password *before* any DDL (status CREATING).
//! 2. **role**: `CREATE ROLE` + `COMMENT ON ROLE 'tenantd:<id>'` in one transaction. An existing
//!    role is adopted only when it carries that marker.
//! 3. **database**: `CREATE DATABASE` under a staging name derived from the tenant id, from
//!    `template0`, closed, then the marker comment, PUBLIC's rights taken and connections
//!    allowed (to the owner, the admin). A final-name database counts only with our marker.
//! 4. **lockdown**: the tenant role gets CONNECT, TEMP and USAGE/CREATE on schema `public`
//!    (status MIGRATING).
//! 5. **migrate**: the embedded migrations, as the tenant role, all or nothing.
//! 6. **rename** staging → final name, then **ready**.
//!
//! A first run (role and database both made by this run, not a restore) migrates on the
//! admin's session acting as the role instead of opening the role's own (one backend start
//! less), and gives the role its database rights with the rename: see
//! `tenant_sql::as_fresh_tenant`. Every other run takes the steps as written.
//!
//! With `spares.per_server` set, a warm spare is taken instead when the chosen server has one
//! (`spare`: take, switch, ready); the steps above are the cold path.
//!
//! Nothing is remembered between steps but the catalog row: each step looks at the server to
//! see what is already done, so a crash anywhere resumes cleanly, and a retry never makes a
//! second role or database. Anything that exists under our names without our marker is never
//! adopted, altered or dropped: that is a fatal error with a reason that says so.

use std::time::Instant;

use secrecy::ExposeSecret;
use serde_json::json;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::admin::AdminTarget;
use crate::catalog::CatalogError;
use crate::catalog::events::EventKind;
use crate::catalog::tenants::{Placement, TenantRecord, TenantStatus};
use crate::core::Core;
use crate::crypto::{self, tenant_aad};
use crate::limits::TenantLimits;
use crate::markers::{self, Ownership};
use crate::names::{PgIdent, TenantSlug};
pub use crate::steps::Step;
use crate::steps::{Fault, Phase};
use crate::target::TenantTarget;
use crate::tenant_migrations::Around;
use crate::{placement, tenant_sql};

mod attempt;
mod deprovision;
mod error;
mod fill;
mod spare;
pub use attempt::{Outcome, run_claimed};
pub use error::StepError;
use error::{admin_retry, pg_retry};

/// The error for a role under our name that is not this tenant's (`Foreign`); `Ok` otherwise.
fn refuse_foreign_role(t: &Target, found: &Ownership) -> Result<(), StepError> {
    match found {
        Ownership::Foreign(comment) => Err(foreign_role(t, comment.as_deref())),
        _ => Ok(()),
    }
}

fn foreign_role(t: &Target, comment: Option<&str>) -> StepError {
    StepError::Fatal(
        Step::Role,
        format!(
            "role {:?} already exists and is not this tenant's (comment {:?}, expected {:?}); \
             tenantd never adopts or alters a role it did not create",
            t.role.as_str(),
            comment.unwrap_or_default(),
            tenant_sql::marker(t.id)
        ),
    )
}

/// Runs one step, recording its duration (`tenantd_provision_step_seconds{step}`).
async fn timed<T>(step: Step, work: impl Future<Output = Result<T, StepError>>) -> Result<T, StepError> {
    let started = Instant::now();
    let result = work.await;
    let seconds = started.elapsed().as_secs_f64();
    metrics::histogram!("tenantd_provision_step_seconds", "step" => step.as_str()).record(seconds);
    tracing::debug!(%step, ms = seconds * 1000.0, ok = result.is_ok(), "step finished");
    result
}

/// The session step 5 runs on, opened by step 4: the tenant role's own, or after a fresh
/// run's lockdown the admin's, with the migrations' transaction wrapped to act as the tenant.
pub(super) struct Inside {
    client: Client,
    around: Around,
}

/// Where the tenant's database is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Location {
    Staging,
    Final,
}

/// One provisioning (or deletion) run of a claimed tenant, in a daemon or a CLI process.
pub struct Provisioner<'a> {
    core: &'a Core,
    /// Lease owner and event actor (the claim's owner).
    actor: &'a str,
    /// Fill the database from this dump instead of applying migrations (`tenant restore`).
    restore_from: Option<&'a std::path::Path>,
}

/// The resolved facts of a placed tenant: its database and role, and its server's admin.
struct Target {
    tenant: TenantTarget,
    admin: AdminTarget,
    staging: PgIdent,
}

impl std::ops::Deref for Target {
    type Target = TenantTarget;

    fn deref(&self) -> &TenantTarget {
        &self.tenant
    }
}

impl<'a> Provisioner<'a> {
    /// A run acting as `actor`, the owner of the tenant's lease.
    pub fn new(core: &'a Core, actor: &'a str) -> Self {
        Self { core, actor, restore_from: None }
    }

    /// Fills the database from `file` instead of applying migrations (`tenant restore`).
    #[must_use]
    pub fn restoring_from(mut self, file: Option<&'a std::path::Path>) -> Self {
        self.restore_from = file;
        self
    }
}

impl Provisioner<'_> {
    pub(crate) async fn fault(&self, slug: &str, step: Step, phase: Phase) -> Result<(), StepError> {
        match self.core.faults.as_ref().and_then(|hook| hook(slug, step, phase)) {
            None => Ok(()),
            Some(Fault::Fail(message)) => Err(StepError::Retry(step, format!("injected failure: {message}"))),
            Some(Fault::Crash) => Err(StepError::Crashed),
            Some(Fault::Stall(pause)) => {
                tokio::time::sleep(pause).await;
                Ok(())
            }
        }
    }

    /// Records a step's event; fails with `LeaseLost` when another process holds the tenant.
    async fn event(&self, id: Uuid, kind: EventKind, detail: serde_json::Value) -> Result<(), StepError> {
        Ok(self.core.catalog.leased_event(id, self.actor, kind, &detail).await?)
    }

    /// Runs every remaining step of a claimed tenant; returns its schema version when READY.
    pub async fn provision(&self, tenant: &TenantRecord) -> Result<i32, StepError> {
        // A warm spare when one can be had (or an earlier attempt took one): see `spare`.
        if let Some(version) = self.by_spare(tenant).await? {
            return Ok(version);
        }
        let started = Instant::now();
        let placed = match tenant.server {
            None => timed(Step::Place, self.place(tenant)).await?,
            Some(_) => None,
        };
        let target = self.target(tenant, placed).await?;
        let admin = self.admin(&target, Step::Role).await?;
        let mut inside = None;
        let mut locked_down = false;
        // Whether the role and the database were both made by this run: the migrations then
        // run on the admin's session acting as the tenant role, and the role gets CONNECT only
        // at the rename (see `tenant_sql::as_fresh_tenant`).
        let mut fresh = false;
        let location = if tenant.status == TenantStatus::Migrating {
            // A run that stopped after the lockdown; a fresh one may have stopped before the
            // role had CONNECT, so the lockdown is made again (it is idempotent).
            let location = self.locate(&admin, &target, Step::Role).await?;
            if let Some(location) = location {
                inside = Some(timed(Step::Lockdown, self.lock_down(&admin, &target, location)).await?);
            }
            location
        } else {
            // The role and the database do not depend on each other: they are made at once,
            // on two admin connections (CREATE DATABASE is most of the wait). What is there
            // already is looked up first, in one round trip; a foreign database under our
            // final name, or a foreign role under our role name, stops everything before
            // anything is made.
            let (located, role, second) = tokio::join!(
                self.locate(&admin, &target, Step::Role),
                markers::role(&admin, target.id, &target.role),
                self.admin(&target, Step::Database),
            );
            let (location, role) = (located?, role.map_err(pg_retry(Step::Role))?);
            refuse_foreign_role(&target, &role.ownership)?;
            let self_grant = role.self_grant;
            let second = second?;
            let (role, made) = tokio::join!(
                timed(Step::Role, self.ensure_role(&admin, &target, tenant, role.ownership)),
                timed(Step::Database, self.make_database(&second, &target, location)),
            );
            drop(second);
            let role = role?;
            let made = made?;
            fresh = self.restore_from.is_none()
                && role == EventKind::RoleCreated
                && made.1 == EventKind::DatabaseCreated;
            // The database's event (after the role's, whichever finished first) is recorded
            // while the lockdown runs on the server; the lockdown's own event comes with its
            // state, below.
            let lock_down = async {
                if fresh {
                    self.enter_fresh(&target, tenant, &self_grant).await
                } else {
                    self.lock_down(&admin, &target, made.0).await
                }
            };
            let (created, locked) =
                tokio::join!(self.database_made(&target, made), timed(Step::Lockdown, lock_down));
            let created = created?;
            inside = Some(locked?);
            locked_down = true;
            Some(created)
        };
        let Some(location) = location else {
            // The database vanished (dropped by hand?): start the creation steps again.
            let detail = json!({ "reason": "tenant database is missing" });
            self.core
                .catalog
                .set_status(target.id, self.actor, TenantStatus::Creating, EventKind::Recreate, &detail)
                .await?;
            return Err(StepError::Retry(Step::Migrate, "tenant database is missing; recreating it".into()));
        };
        // Migrations may run long: give the pooled admin connection back meanwhile.
        drop(admin);
        // The lockdown's state (MIGRATING, and its event) is written while the migrate step
        // starts; the migrations commit only once it is (a lost lease stops them).
        let lockdown_recorded = async {
            if !locked_down {
                return Ok::<_, StepError>(());
            }
            let detail = json!({});
            let catalog = &self.core.catalog;
            Ok(catalog
                .set_status(target.id, self.actor, TenantStatus::Migrating, EventKind::Lockdown, &detail)
                .await?)
        };
        let (version, applied) = match self.restore_from {
            Some(file) => {
                lockdown_recorded.await?;
                let connection = inside.map(|inside| inside.client);
                (timed(Step::Migrate, self.restore(&target, location, file, connection)).await?, None)
            }
            None => {
                let (recorded, gate) = tokio::sync::oneshot::channel();
                let recorded = async {
                    let outcome = lockdown_recorded.await;
                    if recorded.send(outcome.is_ok()).is_err() {
                        tracing::trace!("the migrate step ended before the lockdown was recorded");
                    }
                    outcome
                };
                let gate = async { gate.await.unwrap_or(false) };
                let migrate = timed(Step::Migrate, self.migrate(&target, location, inside, gate));
                let (recorded, migrated) = tokio::join!(recorded, migrate);
                recorded?;
                let (version, applied) = migrated?;
                (version, Some(applied))
            }
        };
        // The migrate step's event is recorded while the rename starts (they are on the catalog
        // and on the server); the rename's comes after it.
        let migrated = async {
            match applied {
                Some(applied) => {
                    self.event(
                        target.id,
                        EventKind::Migrated,
                        json!({ "version": version, "applied": applied }),
                    )
                    .await
                }
                None => Ok(()),
            }
        };
        let staging = location == Location::Staging;
        let renamed = async {
            if staging {
                let admin = self.admin(&target, Step::Rename).await?;
                timed(Step::Rename, self.rename(&admin, &target, fresh)).await?;
            }
            Ok::<_, StepError>(())
        };
        let (migrated, renamed) = tokio::join!(migrated, renamed);
        migrated?;
        renamed?;
        if staging {
            self.event(
                target.id,
                EventKind::Renamed,
                json!({ "from": target.staging.as_str(), "to": target.database.as_str() }),
            )
            .await?;
        }
        self.fault(&target.slug, Step::Ready, Phase::Before).await?;
        let seconds = started.elapsed().as_secs_f64();
        let detail = json!({ "schema_version": version, "seconds": seconds });
        self.core.catalog.mark_ready(target.id, self.actor, version, &detail).await?;
        metrics::counter!("tenantd_tenants_ready_total").increment(1);
        metrics::histogram!("tenantd_provision_seconds").record(seconds);
        tracing::info!(tenant = %target.slug, server = %target.server.name, version, seconds, "tenant is READY");
        Ok(version)
    }

    /// Step 1: choose a server and persist everything before any DDL.
    async fn place(&self, t: &TenantRecord) -> Result<Option<Placement>, StepError> {
        self.fault(&t.slug, Step::Place, Phase::Before).await?;
        let slug = TenantSlug::parse(&t.slug).map_err(|e| StepError::Fatal(Step::Place, e.to_string()))?;
        let derived = PgIdent::for_tenant(&self.core.settings.names.prefix, &slug);
        let database = t.database_name.clone().unwrap_or_else(|| derived.to_string());
        let role = t.role_name.clone().unwrap_or_else(|| derived.to_string());
        let password = crypto::random_secret(24);
        let sealed = self.core.keyring.seal(password.expose_secret(), &tenant_aad(t.id));
        let (server, region) = (t.requested_server.as_deref(), t.requested_region.as_deref());
        let placed = self
            .core
            .catalog
            .place_tenant(t.id, self.actor, |servers| {
                placement::choose(servers, server, region).map(|server| Placement {
                    server,
                    database_name: database,
                    role_name: role,
                    role_password_sealed: sealed,
                })
            })
            .await;
        let placed = match placed {
            Ok(Ok(p)) => p,
            Ok(Err(reason)) => return Err(StepError::Wait(reason.to_string())),
            Err(CatalogError::Conflict(m)) => return Err(StepError::Fatal(Step::Place, m)),
            Err(e) => return Err(e.into()),
        };
        self.fault(&t.slug, Step::Place, Phase::After).await?;
        tracing::info!(tenant = %t.slug, server = %placed.server, "tenant placed");
        Ok(Some(placed))
    }

    async fn target(&self, t: &TenantRecord, placed: Option<Placement>) -> Result<Target, StepError> {
        let core = self.core;
        let tenant = match placed {
            Some(p) => {
                let server = core.catalog.server(&p.server).await?;
                TenantTarget::from_parts(
                    t.id,
                    &t.slug,
                    &server,
                    &p.database_name,
                    &p.role_name,
                    &p.role_password_sealed,
                    &core.keyring,
                )?
            }
            None => TenantTarget::resolve(&core.catalog, &core.keyring, t).await?,
        };
        let admin = AdminTarget::from_record(&tenant.server, &core.keyring)
            .map_err(|e| StepError::Fatal(Step::Role, e.to_string()))?;
        Ok(Target { tenant, admin, staging: PgIdent::staging(t.id) })
    }

    /// A pooled admin connection to the tenant's server.
    async fn admin(&self, t: &Target, step: Step) -> Result<deadpool_postgres::Client, StepError> {
        self.core.admin_pools.get(&t.server, &t.admin).await.map_err(admin_retry(step))
    }

    /// Step 2: the role, created with its marker in one transaction, or adopted by marker
    /// (`found`: what the marker lookup found under the role's name).
    async fn ensure_role(
        &self,
        admin: &Client,
        t: &Target,
        tenant: &TenantRecord,
        found: Ownership,
    ) -> Result<EventKind, StepError> {
        const STEP: Step = Step::Role;
        self.fault(&t.slug, STEP, Phase::Before).await?;
        let limits = TenantLimits::resolve(&self.core.settings.limits, &tenant.limits)
            .map_err(|e| StepError::Fatal(STEP, e.to_string()))?;
        let verifier = t.scram_verifier();
        let kind = match found {
            Ownership::Absent => {
                // One simple-query message = one implicit transaction: role and marker together.
                // Its limits too: no window in which the role could open connections unbounded.
                let ddl = format!(
                    "{}; {}; {}",
                    tenant_sql::create_role(&t.role, &verifier),
                    tenant_sql::comment_on_role(&t.role, t.id),
                    tenant_sql::role_limits(&t.role, &limits)
                );
                admin.batch_execute(&ddl).await.map_err(pg_retry(STEP))?;
                EventKind::RoleCreated
            }
            Ownership::Ours => {
                let ddl = format!(
                    "{}; {}",
                    tenant_sql::reset_role(&t.role, &verifier),
                    tenant_sql::role_limits(&t.role, &limits)
                );
                admin.batch_execute(&ddl).await.map_err(pg_retry(STEP))?;
                EventKind::RoleAdopted
            }
            Ownership::Foreign(comment) => return Err(foreign_role(t, comment.as_deref())),
        };
        self.fault(&t.slug, STEP, Phase::After).await?;
        let detail = json!({ "role": t.role.as_str(), "limits": limits });
        self.core.catalog.record_role_step(t.id, self.actor, &limits.to_json(), kind, &detail).await?;
        Ok(kind)
    }

    /// Where the database is: staging name, final name (with our marker), or nowhere.
    /// A final-name database without our marker is fatal.
    async fn locate(&self, admin: &Client, t: &Target, step: Step) -> Result<Option<Location>, StepError> {
        let found =
            markers::databases(admin, t.id, &[&t.database, &t.staging]).await.map_err(pg_retry(step))?;
        let mut location = None;
        for (name, ownership) in found {
            match ownership {
                Ownership::Absent => {}
                Ownership::Foreign(comment) if name == t.database => {
                    return Err(StepError::Fatal(
                        step,
                        format!(
                            "database {:?} already exists and is not this tenant's (comment {:?}, expected \
                             {:?}); tenantd never adopts, alters or drops a database it did not create",
                            name.as_str(),
                            comment.unwrap_or_default(),
                            tenant_sql::marker(t.id)
                        ),
                    ));
                }
                _ if name == t.database => location = Some(Location::Final),
                // The staging name is derived from our id and used by nobody else.
                _ => location = location.or(Some(Location::Staging)),
            }
        }
        Ok(location)
    }

    /// Step 3: the database under its staging name, with its marker. Its event is
    /// [`Provisioner::database_made`]'s, once the role step has recorded its own.
    async fn make_database(
        &self,
        admin: &Client,
        t: &Target,
        found: Option<Location>,
    ) -> Result<(Location, EventKind), StepError> {
        const STEP: Step = Step::Database;
        self.fault(&t.slug, STEP, Phase::Before).await?;
        let made = match found {
            Some(location) => (location, EventKind::DatabaseAdopted),
            None => (Location::Staging, EventKind::DatabaseCreated),
        };
        // The staging name is derived from our id and used by nobody else: it is ours even
        // when a crash came between CREATE DATABASE and its comment.
        let comment = tenant_sql::comment_on_database(&t.staging, t.id);
        match made {
            (_, EventKind::DatabaseCreated) => {
                // The comment, and PUBLIC's rights taken before connections are allowed, are
                // sent right behind CREATE DATABASE (one round trip): when the creation fails,
                // they only fail too, and the creation's error is told. `future::join` polls
                // the creation first, and each message goes out at its future's first poll, so
                // they are on the wire in this order.
                let create = tenant_sql::create_tenant_database(&t.staging);
                let then = format!("{comment}; {}", tenant_sql::open_to_owner(&t.staging));
                let (created, marked) =
                    futures::future::join(admin.batch_execute(&create), admin.batch_execute(&then)).await;
                created.map_err(pg_retry(STEP))?;
                marked.map_err(pg_retry(STEP))?;
            }
            (Location::Staging, _) => admin.batch_execute(&comment).await.map_err(pg_retry(STEP))?,
            (Location::Final, _) => {}
        }
        self.fault(&t.slug, STEP, Phase::After).await?;
        Ok(made)
    }

    /// Records step 3's event.
    async fn database_made(
        &self,
        t: &Target,
        (location, kind): (Location, EventKind),
    ) -> Result<Location, StepError> {
        self.event(
            t.id,
            kind,
            json!({ "database": t.staging.as_str(), "location": format!("{location:?}") }),
        )
        .await?;
        Ok(location)
    }

    /// Step 4 of a fresh run (role and database made by this run; the database is open to its
    /// owner only, see `make_database`): the admin's session inside it, on which step 5 acts
    /// as the tenant role. The tenant role gets its rights on the database at the rename.
    async fn enter_fresh(
        &self,
        t: &Target,
        tenant: &TenantRecord,
        self_grant: &str,
    ) -> Result<Inside, StepError> {
        const STEP: Step = Step::Lockdown;
        self.fault(&t.slug, STEP, Phase::Before).await?;
        let limits = TenantLimits::resolve(&self.core.settings.limits, &tenant.limits)
            .map_err(|e| StepError::Fatal(STEP, e.to_string()))?;
        let client = t.admin.connect(Some(t.staging.as_str())).await.map_err(admin_retry(STEP))?;
        let around =
            tenant_sql::as_fresh_tenant(&t.staging, &t.role, limits.statement_timeout_ms, self_grant);
        self.fault(&t.slug, STEP, Phase::After).await?;
        Ok(Inside { client, around })
    }

    /// Step 4: nobody but the tenant role (and the admin owner) may use the database. The
    /// tenant-role connection that step 5 needs is opened meanwhile and handed over.
    async fn lock_down(&self, admin: &Client, t: &Target, location: Location) -> Result<Inside, StepError> {
        const STEP: Step = Step::Lockdown;
        self.fault(&t.slug, STEP, Phase::Before).await?;
        let db = if location == Location::Staging { &t.staging } else { &t.database };
        admin.batch_execute(&tenant_sql::lock_down_database(db, &t.role)).await.map_err(pg_retry(STEP))?;
        let (inside, tenant) =
            tokio::join!(t.admin.connect(Some(db.as_str())), self.connect_as_tenant(t, db, STEP));
        let inside = inside.map_err(admin_retry(STEP))?;
        // A GRANT or REVOKE that the admin may not make is only a WARNING in PostgreSQL:
        // check the result instead of trusting it. The check is sent right behind the grants
        // (one round trip less; `future::join` polls the grants first, so their message goes
        // out first); the server runs it after they committed.
        let grant = tenant_sql::grant_schema(&t.role);
        let role = t.role.as_str();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&role];
        let (granted, row) = futures::future::join(
            inside.batch_execute(&grant),
            inside.query_one(
                "SELECT pg_catalog.has_schema_privilege($1::pg_catalog.text, 'public'::pg_catalog.text, \
                          'CREATE'::pg_catalog.text), \
                        pg_catalog.has_database_privilege('public'::pg_catalog.text, \
                          pg_catalog.current_database()::pg_catalog.text, 'CONNECT'::pg_catalog.text)",
                &params,
            ),
        )
        .await;
        granted.map_err(pg_retry(STEP))?;
        let row = row.map_err(pg_retry(STEP))?;
        drop(inside);
        let (tenant_may_create, public_may_connect): (bool, bool) = (row.get(0), row.get(1));
        if !tenant_may_create {
            return Err(StepError::Fatal(
                STEP,
                format!(
                    "role {:?} cannot create in schema public after the GRANT (does the admin own the database?)",
                    t.role.as_str()
                ),
            ));
        }
        if public_may_connect {
            return Err(StepError::Fatal(STEP, "PUBLIC can still connect after REVOKE".into()));
        }
        let client = tenant?;
        self.fault(&t.slug, STEP, Phase::After).await?;
        Ok(Inside { client, around: Around::default() })
    }

    /// Step 6: staging name → final name (its event is the caller's). Sessions on the staging
    /// database (ours, just closed) can linger for a moment, so "in use" is retried briefly.
    /// After a `fresh` run, the tenant role gets its rights on the database in the same
    /// transaction (the lockdown's grants; the database is the admin's, so none can fail).
    async fn rename(&self, admin: &Client, t: &Target, fresh: bool) -> Result<(), StepError> {
        const STEP: Step = Step::Rename;
        self.fault(&t.slug, STEP, Phase::Before).await?;
        let then = if fresh { tenant_sql::lock_down_database(&t.database, &t.role) } else { String::new() };
        tenant_sql::rename_database_when_free(admin, &t.staging, &t.database, &then)
            .await
            .map_err(pg_retry(STEP))?;
        self.fault(&t.slug, STEP, Phase::After).await?;
        Ok(())
    }
}
