//! Step 5, filling the database as the tenant role: the embedded migrations, or for
//! `tenant restore` the dump instead.

use serde_json::json;

use super::{Inside, Location, Phase, Provisioner, Step, StepError, Target, pg_retry};
use crate::catalog::events::EventKind;
use crate::names::PgIdent;
use crate::tenant_migrations::{self, Around, Known};
use tokio_postgres::Client;

impl Provisioner<'_> {
    /// Step 5 of a restore: the dump instead of the migrations, everything owned by the tenant
    /// role; the version is what the restored history says. A database that already holds
    /// relations was restored by an earlier attempt (pg_restore runs in one transaction).
    pub(super) async fn restore(
        &self,
        t: &Target,
        location: Location,
        file: &std::path::Path,
        connection: Option<Client>,
    ) -> Result<i32, StepError> {
        const STEP: Step = Step::Migrate;
        self.fault(&t.slug, STEP, Phase::Before).await?;
        let (mut client, db) = self.tenant_connection(t, location, connection).await?;
        let relations: i64 = client
            .query_one(
                "SELECT pg_catalog.count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = 'public'",
                &[],
            )
            .await
            .map_err(pg_retry(STEP))?
            .get(0);
        if relations == 0 {
            crate::dumps::restore(&t.admin, db, &t.role, t.password(), file)
                .await
                .map_err(|e| StepError::Retry(STEP, e.to_string()))?;
        }
        let has_history: bool = client
            .query_one(
                "SELECT pg_catalog.to_regclass($1::pg_catalog.text) IS NOT NULL",
                &[&tenant_migrations::HISTORY_TABLE],
            )
            .await
            .map_err(pg_retry(STEP))?
            .get(0);
        let version = if has_history {
            tenant_migrations::current_version(&mut client)
                .await
                .map_err(|e| StepError::Retry(STEP, e.to_string()))?
        } else {
            0
        };
        drop(client);
        self.fault(&t.slug, STEP, Phase::After).await?;
        let detail = json!({ "from": file.display().to_string(), "version": version, "already_restored": relations > 0 });
        self.event(t.id, EventKind::Restored, detail).await?;
        Ok(version)
    }

    pub(super) async fn connect_as_tenant(
        &self,
        t: &Target,
        db: &PgIdent,
        step: Step,
    ) -> Result<Client, StepError> {
        crate::pg::connect(
            &t.migration_config(Some(db), "tenantd-migrate"),
            &t.server.tls,
            "tenant migration",
        )
        .await
        .map_err(|e| {
            let message = format!("cannot connect as the tenant role: {e}");
            match e {
                crate::pg::ConnectError::TimedOut(_) => StepError::ServerDown(step, message),
                crate::pg::ConnectError::Postgres(e) if crate::pg::is_unavailable(&e) => {
                    StepError::ServerDown(step, message)
                }
                _ => StepError::Retry(step, message),
            }
        })
    }

    /// Step 5's connection as the tenant role to the database where it is (the one kept from
    /// step 4 when there is one).
    async fn tenant_connection<'t>(
        &self,
        t: &'t Target,
        location: Location,
        connection: Option<Client>,
    ) -> Result<(Client, &'t PgIdent), StepError> {
        let db = if location == Location::Staging { &t.staging } else { &t.database };
        let client = match connection {
            Some(client) => client,
            None => self.connect_as_tenant(t, db, Step::Migrate).await?,
        };
        Ok((client, db))
    }

    /// Step 5: the embedded migrations, as the tenant role (on the session step 4 opened, or
    /// on its own); they commit only once `gate` ends `true`. Returns the version and what was
    /// applied (the step's event is the caller's).
    pub(super) async fn migrate(
        &self,
        t: &Target,
        location: Location,
        inside: Option<Inside>,
        gate: impl Future<Output = bool>,
    ) -> Result<(i32, Vec<Known>), StepError> {
        const STEP: Step = Step::Migrate;
        self.fault(&t.slug, STEP, Phase::Before).await?;
        let (connection, around) = match inside {
            Some(Inside { client, around }) => (Some(client), around),
            None => (None, Around::default()),
        };
        let (mut client, _) = self.tenant_connection(t, location, connection).await?;
        let applied = self
            .core
            .migrations
            .apply_gated(&mut client, &around, gate)
            .await
            .map_err(|e| StepError::Retry(STEP, e.to_string()))?;
        drop(client);
        self.fault(&t.slug, STEP, Phase::After).await?;
        Ok(applied)
    }
}
