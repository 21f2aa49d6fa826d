//! The tenant schema: SQL migrations from `migrations/`, embedded in the binary at build time.
//!
//! They run as the tenant's own role (so every object belongs to it), in one transaction per
//! run (all or nothing), under an advisory lock inside the tenant database (two runs on one
//! tenant never interleave). The history lives in the tenant database itself, in table
//! `tenantd_schema_history`, so the database alone says which version it is at — after a
//! restore too.
//!
//! A [`MigrationSet`] is normally [`MigrationSet::embedded`]; benchmarks and tests extend it
//! with [`MigrationSet::with`] to play "a new build with a new migration".

use std::sync::Arc;

use refinery::{Migration, Runner};
use refinery_core::traits::r#async::{AsyncMigrate, AsyncQuery, AsyncTransaction};
use tokio_postgres::{Client, SimpleQueryMessage};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// History table inside every tenant database.
pub const HISTORY_TABLE: &str = "tenantd_schema_history";
/// Advisory lock key (inside the tenant database) held while migrating.
const LOCK: i64 = 0x7465_6e61_6e74_6403;

/// A migration known to this binary (or recorded in a tenant database).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Known {
    /// Version (the `V<n>` of the file name).
    pub version: i32,
    /// Name after the `__`.
    pub name: String,
}

/// Statements that a migration run's transaction begins with (right after `BEGIN`) and ends
/// with (right before its `COMMIT`, and only when it commits). Empty for a run on the tenant
/// role's own session; the provisioner's first run acting as the role is the other kind.
#[derive(Debug, Default, Clone)]
pub struct Around {
    /// Sent after `BEGIN`, before the advisory lock; must end in `;`.
    pub first: String,
    /// Sent after the migrations, before `COMMIT`; must end in `;`.
    pub last: String,
    /// Sent with the `COMMIT`, after it, running only when it succeeded (its own transaction).
    pub after: String,
}

/// A failed migration run, described with the PostgreSQL error (message, SQLSTATE) that
/// refinery wraps.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// Locking or querying the tenant database failed.
    #[error("{}", crate::pg::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// Ending the migration run's transaction failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A migration failed or the history does not match the migrations of this binary.
    #[error("{}", describe_refinery(.0))]
    Refinery(#[from] refinery::Error),
    /// The caller's gate said no before the commit ([`MigrationSet::apply_gated`]): nothing
    /// was committed.
    #[error("stopped before the commit")]
    Gated,
}

fn describe_refinery(e: &refinery::Error) -> String {
    match e.kind() {
        refinery::error::Kind::Connection(message, source) => {
            match source.downcast_ref::<tokio_postgres::Error>() {
                Some(pg) => format!("{message}: {}", crate::pg::describe(pg)),
                // `SessionError` describes PostgreSQL errors itself.
                None => format!("{message}: {source}"),
            }
        }
        other => other.to_string(),
    }
}

/// An ordered set of tenant migrations.
#[derive(Clone)]
pub struct MigrationSet {
    migrations: Arc<Vec<Migration>>,
}

impl std::fmt::Debug for MigrationSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationSet").field("latest", &self.latest_version()).finish()
    }
}

impl Default for MigrationSet {
    fn default() -> Self {
        Self::embedded()
    }
}

impl MigrationSet {
    /// The migrations embedded from `migrations/`.
    pub fn embedded() -> Self {
        let mut all = embedded::migrations::runner().get_migrations().clone();
        all.sort_by_key(Migration::version);
        Self { migrations: Arc::new(all) }
    }

    /// This set plus one migration named like a file, e.g. `V3__add_invoices`.
    pub fn with(&self, name: &str, sql: &str) -> Result<Self, MigrationError> {
        let mut all = self.migrations.as_ref().clone();
        all.push(Migration::unapplied(name, sql)?);
        all.sort_by_key(Migration::version);
        Ok(Self { migrations: Arc::new(all) })
    }

    fn runner(&self) -> Runner {
        let mut runner = Runner::new(&self.migrations);
        runner.set_migration_table_name(HISTORY_TABLE);
        runner.set_grouped(true)
    }

    /// Every migration, in order.
    pub fn known(&self) -> Vec<Known> {
        self.migrations.iter().map(|m| Known { version: m.version(), name: m.name().to_owned() }).collect()
    }

    /// Migrations newer than `version`.
    pub fn pending_after(&self, version: i32) -> Vec<Known> {
        self.known().into_iter().filter(|m| m.version > version).collect()
    }

    /// Version of the newest migration (0 when there are none).
    pub fn latest_version(&self) -> i32 {
        self.migrations.last().map_or(0, Migration::version)
    }

    /// The SQL of every migration, in order (for the benchmark's plain-SQL floor).
    pub fn sql(&self) -> Vec<String> {
        self.migrations.iter().map(|m| m.sql().unwrap_or_default().to_owned()).collect()
    }

    /// Applies every pending migration in one transaction, under the tenant's advisory lock.
    /// Returns the resulting version and the migrations applied now.
    ///
    /// Everything refinery does — create the history table if missing, read it, check it
    /// against this set, apply what is pending and record it — runs in that one transaction
    /// (see [`Session`]): all or nothing, in at most three round trips and one commit.
    pub async fn apply(&self, client: &mut Client) -> Result<(i32, Vec<Known>), MigrationError> {
        self.apply_gated(client, &Around::default(), std::future::ready(true)).await
    }

    /// [`MigrationSet::apply`], with `gate` run meanwhile: the run commits only when `gate`
    /// ends `true` ([`MigrationError::Gated`] otherwise, and the run rolls back). The
    /// provisioner records the previous step's state in the catalog this way, while the first
    /// migration round trip is on the wire. `around` wraps the run's transaction.
    pub async fn apply_gated(
        &self,
        client: &mut Client,
        around: &Around,
        gate: impl Future<Output = bool>,
    ) -> Result<(i32, Vec<Known>), MigrationError> {
        match self.run(client, around, false, gate).await? {
            Upgrade::Done { to, applied, .. } => Ok((to, applied)),
            Upgrade::Ahead(version) => Ok((version, Vec::new())),
        }
    }

    /// Upgrades a READY tenant's database: as [`MigrationSet::apply`], but a database whose
    /// history is newer than this set is left untouched ([`Upgrade::Ahead`]) — checked
    /// inside the same transaction, under the same lock, before anything is applied.
    pub async fn upgrade(&self, client: &mut Client) -> Result<Upgrade, MigrationError> {
        self.run(client, &Around::default(), true, std::future::ready(true)).await
    }

    async fn run(
        &self,
        client: &mut Client,
        around: &Around,
        refuse_ahead: bool,
        gate: impl Future<Output = bool>,
    ) -> Result<Upgrade, MigrationError> {
        let ceiling = refuse_ahead.then(|| self.latest_version());
        let mut session = Session {
            client,
            around,
            migrating: true,
            open: false,
            deferred: String::new(),
            recorded: 0,
            ceiling,
            ahead: false,
        };
        let runner = self.runner();
        let (report, open) = tokio::join!(runner.run_async(&mut session), gate);
        let ended = session.end(report.is_ok() && open).await;
        if !open {
            return Err(MigrationError::Gated);
        }
        if session.ahead {
            return Ok(Upgrade::Ahead(session.recorded));
        }
        let report = report?;
        ended?;
        let applied: Vec<Known> = report
            .applied_migrations()
            .iter()
            .map(|m| Known { version: m.version(), name: m.name().to_owned() })
            .collect();
        let to = applied.iter().map(|m| m.version).fold(session.recorded, i32::max);
        Ok(Upgrade::Done { from: session.recorded, to, applied })
    }
}

/// What [`MigrationSet::upgrade`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// The database is now at `to` (was at `from`); `applied` is empty when it was current.
    Done {
        /// Version recorded before.
        from: i32,
        /// Version now.
        to: i32,
        /// Migrations applied now.
        applied: Vec<Known>,
    },
    /// The database's history is newer than this set: nothing was done.
    Ahead(i32),
}

/// The newest version recorded in a tenant database (0 when none).
pub async fn current_version(client: &mut Client) -> Result<i32, MigrationError> {
    let mut session = Session {
        client,
        around: &Around::default(),
        migrating: false,
        open: false,
        deferred: String::new(),
        recorded: 0,
        ceiling: None,
        ahead: false,
    };
    Ok(MigrationSet::embedded()
        .runner()
        .get_last_applied_migration_async(&mut session)
        .await?
        .map_or(0, |m| m.version()))
}

/// What went wrong talking to a tenant database on refinery's behalf.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The statement failed.
    #[error("{}", crate::pg::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A history row that this build cannot read (the tenant role owns the table).
    #[error("table {HISTORY_TABLE} holds a row that is not a migration record: {0}")]
    History(String),
    /// Applying the migrations, or committing them, failed (nothing was committed).
    #[error("error applying migrations: {}", crate::pg::describe(.0))]
    Applying(tokio_postgres::Error),
    /// The history is newer than the migrations of this build (nothing is applied).
    #[error("the database is at version {0}, newer than this build")]
    Ahead(i32),
}

/// refinery's view of a tenant connection, in fewer round trips than its own driver (which
/// sends each statement, `BEGIN` and `COMMIT` on its own):
/// - **migrating**: one transaction that takes the tenant's advisory lock
///   (`pg_advisory_xact_lock`: two runs never interleave) holds everything refinery does;
///   what refinery executes is sent with the next message of that transaction. So a run is
///   three messages: `BEGIN`, the lock, the history table's `CREATE TABLE IF NOT EXISTS` and
///   the history query; the pending migrations with their history rows; `COMMIT` on its own
///   ([`Session::end`], which rolls back instead when anything failed).
/// - **reading**: each query is one message in autocommit.
///
/// History rows are parsed without trusting them: the tenant role owns the history table and
/// may have written anything into it; a bad row is an error, never a panic.
struct Session<'c> {
    client: &'c Client,
    /// What the transaction begins and ends with (migrating).
    around: &'c Around,
    migrating: bool,
    /// A transaction is open (migrating).
    open: bool,
    /// Statements refinery asked to execute, not sent yet (migrating): they go with the next
    /// message, which is in the same transaction — the history query, or the `COMMIT`.
    deferred: String,
    /// Newest version read from the history.
    recorded: i32,
    /// Stop when the history holds a version above this (a newer build ran).
    ceiling: Option<i32>,
    /// Stopped for that reason.
    ahead: bool,
}

impl Session<'_> {
    /// What must precede the next statement: the transaction and its lock, when migrating and
    /// not yet open.
    fn opening(&mut self) -> String {
        if self.migrating && !self.open {
            self.open = true;
            format!("BEGIN; {}\nSELECT pg_catalog.pg_advisory_xact_lock({LOCK});\n", self.around.first)
        } else {
            String::new()
        }
    }

    /// Commits (`ok`) or rolls back the transaction, if one is open.
    async fn end(&mut self, ok: bool) -> Result<(), SessionError> {
        if !std::mem::take(&mut self.open) {
            return Ok(());
        }
        let deferred = std::mem::take(&mut self.deferred) + &self.around.last;
        if ok {
            // The migrations (and what ends the transaction), then `COMMIT` on its own: a
            // process that stops or loses the tenant's lease while they run never sends it,
            // and they roll back.
            let applied = match deferred.is_empty() {
                true => Ok(()),
                false => self.client.batch_execute(&deferred).await.map_err(SessionError::Applying),
            };
            if applied.is_ok() {
                // What follows the commit goes in the same message: it runs only if the
                // commit succeeded.
                let commit = match self.around.after.is_empty() {
                    true => "COMMIT".to_owned(),
                    false => format!("COMMIT; {}", self.around.after),
                };
                return Ok(self.client.batch_execute(&commit).await?);
            }
            if let Err(rollback) = self.client.batch_execute("ROLLBACK").await {
                tracing::debug!(error = %crate::pg::describe(&rollback), "ROLLBACK after a failed migration run failed");
            }
            return applied;
        }
        // The run failed already: that error is the one to report; the connection is dropped.
        if let Err(e) = self.client.batch_execute("ROLLBACK").await {
            tracing::warn!(error = %crate::pg::describe(&e), "ROLLBACK after a failed migration run failed");
        }
        Ok(())
    }
}

impl AsyncTransaction for Session<'_> {
    type Error = SessionError;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &mut self,
        queries: T,
    ) -> Result<usize, SessionError> {
        let mut sql = self.opening();
        let mut count = 0;
        for query in queries {
            // A migration's last statement may lack its `;` or end in a `--` comment.
            sql.push_str(query);
            sql.push_str("\n;\n");
            count += 1;
        }
        if sql.is_empty() {
            return Ok(0);
        }
        if self.migrating {
            self.deferred.push_str(&sql);
            return Ok(count);
        }
        // Reading: the statements of one message are one implicit transaction, as refinery's
        // driver makes one per call.
        self.client.batch_execute(&sql).await?;
        Ok(count)
    }
}

impl AsyncQuery<Vec<Migration>> for Session<'_> {
    async fn query(&mut self, query: &str) -> Result<Vec<Migration>, SessionError> {
        let sql = self.opening() + &std::mem::take(&mut self.deferred) + query;
        let mut last = Vec::new();
        for message in self.client.simple_query(&sql).await? {
            match message {
                // Only the last statement's rows (the lock answers a row too).
                SimpleQueryMessage::RowDescription(_) => last.clear(),
                SimpleQueryMessage::Row(row) => last.push(row),
                _ => {}
            }
        }
        let rows = last.iter().map(history_row).collect::<Result<Vec<_>, _>>()?;
        self.recorded = rows.iter().map(Migration::version).fold(self.recorded, i32::max);
        if self.ceiling.is_some_and(|c| self.recorded > c) {
            self.ahead = true;
            return Err(SessionError::Ahead(self.recorded));
        }
        Ok(rows)
    }
}

impl AsyncMigrate for Session<'_> {}

/// One row of refinery's history query: version, name, applied_on (RFC 3339), checksum.
fn history_row(row: &tokio_postgres::SimpleQueryRow) -> Result<Migration, SessionError> {
    let field = |i: usize| -> Result<&str, SessionError> {
        row.try_get(i)
            .map_err(|e| SessionError::History(e.to_string()))?
            .ok_or_else(|| SessionError::History(format!("column {} is NULL", i + 1)))
    };
    let bad = |what: &str, value: &str| SessionError::History(format!("{what} {value:?}"));
    let version = field(0)?.parse().map_err(|_| bad("version", field(0).unwrap_or_default()))?;
    let applied_on = time::OffsetDateTime::parse(field(2)?, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad("applied_on", field(2).unwrap_or_default()))?;
    let checksum = field(3)?.parse().map_err(|_| bad("checksum", field(3).unwrap_or_default()))?;
    Ok(Migration::applied(version, field(1)?.to_owned(), applied_on, checksum))
}

/// Every embedded migration, in order.
pub fn known() -> Vec<Known> {
    MigrationSet::embedded().known()
}

/// Version of the newest embedded migration (0 when there are none).
pub fn latest_version() -> i32 {
    MigrationSet::embedded().latest_version()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_schema_is_embedded_in_order() {
        let known = known();
        assert!(known.len() >= 2, "{known:?}");
        assert!(known.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(latest_version(), known.last().unwrap().version);
    }

    #[test]
    fn a_set_can_grow_by_one_migration() {
        let set = MigrationSet::embedded();
        let next = set.latest_version() + 1;
        let grown = set.with(&format!("V{next}__invoices"), "CREATE TABLE invoices (id int)").unwrap();
        assert_eq!(grown.latest_version(), next);
        assert_eq!(grown.pending_after(next - 1), vec![Known { version: next, name: "invoices".into() }]);
        assert!(set.with("not a migration name", "SELECT 1").is_err());
    }
}
